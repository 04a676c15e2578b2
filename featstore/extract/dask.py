"""Scale-out on Dask distributed: one task per slide, each worker writing its slides into a shared Zarr store.

Zarr stores take concurrent writers because every slide is staged under its own name and renamed
into place; the feature set itself is created by the driver before any task runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from featstore.extract.config import ExtractConfig, ExtractReport, RunConfig, SlideSpec
from featstore.extract.events import _EventLog
from featstore.store import now_iso
from featstore.store import open as open_store


def _extract_one(spec: SlideSpec, store_path: str, name: str, config: ExtractConfig, run: RunConfig,
                 mpp_default: float | None, redo: bool) -> dict:
    from featstore.extract.run import extract_slide

    return dataclasses.asdict(extract_slide(spec, store_path, name, config, run, mpp_default, redo))


def gpu_cluster(devices: list[str]):
    """One Dask worker process per GPU, each seeing only its own (CUDA_VISIBLE_DEVICES), one slide at a time."""
    from dask.distributed import Nanny, Scheduler, SpecCluster

    workers = {f"gpu-{d}": {"cls": Nanny, "options": {"nthreads": 1, "env": {"CUDA_VISIBLE_DEVICES": d}}}
               for d in devices}
    return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})


def run_on_dask(todo: list[tuple[SlideSpec, dict]], store_path: Path, name: str, config: ExtractConfig,
                run: RunConfig, mpp_default: float | None, log: _EventLog, devices: list[str] | None = None,
                redo: bool = False) -> ExtractReport:
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if devices:
        cluster = gpu_cluster(devices)
        client = Client(cluster)
    elif run.scheduler is None:
        cluster = LocalCluster(n_workers=run.dask_workers or 1, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(run.scheduler)
    report = ExtractReport(name)
    try:
        resources = {"GPU": 1} if run.device.startswith("cuda") and not devices else None
        futures = {
            client.submit(_extract_one, spec, str(store_path), name, config, run, mpp_default, redo,
                          key=f"featstore-extract-{name}-{spec.slide_id}", pure=False, resources=resources): spec
            for spec, _ in todo
        }
        for fut in as_completed(futures):
            spec = futures[fut]
            try:
                part = fut.result()
            except Exception as exc:  # a task that died (worker lost, OOM) fails only its slide
                reason = f"dask task failed: {type(exc).__name__}: {exc}"
                report.failed[spec.slide_id] = reason
                # The task never reached its own failure record: the driver writes it, for `featstore ls`.
                with open_store(store_path, "a") as store:
                    store.record_failure(name, spec.slide_id, reason, slide_path=spec.path, time=now_iso())
                log("slide_failed", slide_id=spec.slide_id, reason=reason)
                continue
            report.merge(ExtractReport(**part))
            log("dask_task_done", slide_id=spec.slide_id, done=part["done"], failed=part["failed"])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return report
