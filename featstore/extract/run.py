"""The run: pending slides, the reader pool feeding batched inference, events, and the writer."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from featstore.encoders import ENCODERS, Encoder, build_encoder
from featstore.errors import DeviceError
from featstore.extract.allocator import freed_memory_kept
from featstore.extract.config import EventHandler, ExtractConfig, ExtractReport, RunConfig, SlideSpec, feature_set_config
from featstore.extract.device_decode import DeviceSlides
from featstore.extract.embed import PatchEmbedder, resolve_device, resolve_precision
from featstore.extract.events import _EventLog, _StopRun
from featstore.extract.messages import Coords, Failed, Pixels, Planned, Split
from featstore.extract.pool import PatchReader
from featstore.extract.writer import _Writer
from featstore.provenance import config_hash, file_fingerprint
from featstore.store import Store, StoreError, check_name, writing
from featstore.store import open as open_store


def _pending(store: Store, name: str, specs: list[SlideSpec], log: _EventLog, report: ExtractReport,
             redo: bool = False) -> list[tuple[SlideSpec, dict]]:
    """Slides still to do, each with its file fingerprint; committed unchanged slides are skipped unless
    ``redo`` (``--overwrite``: each is replaced in one step when its new features are complete)."""
    committed = set(store.slides(name))
    todo = []
    for spec in specs:
        try:
            fp = file_fingerprint(spec.path)
        except OSError as exc:
            fp = {"error": str(exc)}
        if spec.slide_id in committed:
            attrs = store.slide_attrs(name, spec.slide_id)
            if redo:
                log("slide_redo", slide_id=spec.slide_id, reason="--overwrite: redone, replaced once complete")
            elif attrs.get("provenance", {}).get("file") == fp and attrs.get("slide_path") == spec.path:
                report.skipped.append(spec.slide_id)
                log("slide_skipped", slide_id=spec.slide_id, reason="already committed with the same config")
                continue
            log("slide_changed", slide_id=spec.slide_id, reason="slide file changed since it was extracted; redoing")
        todo.append((spec, fp))
    return todo


def extract(
    slides: list[SlideSpec],
    store_path: str | os.PathLike,
    config: ExtractConfig = ExtractConfig(),
    run: RunConfig = RunConfig(),
    name: str | None = None,
    mpp_default: float | None = None,
    overwrite: bool = False,
    strict: bool = False,
    on_event: EventHandler | None = None,
) -> ExtractReport:
    """Extract ``slides`` into the feature set ``name`` (default: the encoder's name) of a store: ``config`` says
    what the features are, ``run`` how the run goes (device, reader workers, decoder, Dask).

    Resumable: slides already committed with the same config and an unchanged file are skipped.
    ``run.scheduler``/``run.dask_workers`` run one Dask task per slide instead (Zarr stores only);
    ``run.devices`` ("all" or "0,1,...") runs one Dask worker per GPU, each pinned to its own, sharing the slides.
    """
    gpus = resolve_devices(run.devices)
    store_path = Path(store_path)
    name = check_name(name or config.encoder, "feature set name")
    dev = resolve_device(run.device)
    run = run.resolved(str(dev))
    problem = config.encoder in ENCODERS and ENCODERS[config.encoder].input_problem(config.patch_size)
    if problem:  # before the model is built: a ViT-g takes seconds and gigabytes
        raise ValueError(problem)
    encoder = build_encoder(config.encoder, config.weights, config.seed)
    log = _EventLog(store_path, on_event)
    report = ExtractReport(name)
    t0 = time.perf_counter()
    with freed_memory_kept(dev.type == "cpu") as allocator:
        with writing(store_path) as store:
            existing = (store.feature_set_info(name).get("config", {}).get("precision")
                        if name in store.feature_sets() else None)
            precision, why = resolve_precision(config.precision, dev, encoder, config.patch_size, existing)
            fs_config = feature_set_config(config, encoder, precision)
            runtime = _runtime(run, why, allocator)
            todo = _prepare(store, name, fs_config, slides, overwrite, log, report)
            if run.distributed and store.single_writer:
                raise StoreError(f"{store_path} is an {store.backend_name.upper()} store, which takes one writer at a "
                                 "time; distributed extraction needs a .zarr store")
            log("run_start", feature_set=name, slides=len(slides), todo=len(todo), skipped=len(report.skipped),
                precision=precision, config_hash=config_hash(fs_config), **runtime)
            if not run.distributed:
                _run_local(RunContext(store, name, config, run, encoder, dev, precision, mpp_default, strict, log,
                                      report, runtime), todo)
    if run.distributed and todo:
        from featstore.extract.dask import run_on_dask

        task_run = dataclasses.replace(run, device="cuda" if gpus else run.device)
        report.merge(run_on_dask(todo, store_path, name, config, task_run, mpp_default, log, gpus, overwrite))
    report.seconds = time.perf_counter() - t0
    log("run_end", feature_set=name, done=len(report.done), skipped=len(report.skipped),
        failed=len(report.failed), patches=report.patches, seconds=round(report.seconds, 3))
    return report


def extract_slide(spec: SlideSpec, store_path: str | os.PathLike, name: str, config: ExtractConfig, run: RunConfig,
                  mpp_default: float | None, redo: bool = False) -> ExtractReport:
    """One slide into a feature set the driver has made (a Dask task): the same config or an error, the
    driver's precision, in-process reading (Dask already runs one slide per worker slot); ``redo``: the
    driver's --overwrite."""
    store_path = Path(store_path)
    dev = resolve_device(run.device)
    run = dataclasses.replace(run, device=str(dev), num_workers=0, scheduler=None, dask_workers=None, devices=None)
    encoder = build_encoder(config.encoder, config.weights, config.seed)
    log, report = _EventLog(store_path, None), ExtractReport(name)
    with freed_memory_kept(dev.type == "cpu") as allocator, open_store(store_path, "a") as store:
        precision = store.feature_set_info(name).get("config", {}).get("precision", "fp32")
        fs_config = feature_set_config(config, encoder, precision)
        store.create_feature_set(name, fs_config, config_hash(fs_config))  # another config: an error
        todo = _pending(store, name, [spec], log, report, redo)
        _run_local(RunContext(store, name, config, run, encoder, dev, precision, mpp_default, False, log, report,
                              _runtime(run, "the driver's", allocator)), todo)
    return report


def _runtime(run: RunConfig, precision_choice: str, allocator: str) -> dict:
    """How a slide was made, beside what it is (its provenance; not part of the feature set's identity)."""
    return {"device": run.device, "precision_choice": precision_choice, "allocator": allocator,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "run": dataclasses.asdict(run)}


def _prepare(store: Store, name: str, fs_config: dict, slides: list[SlideSpec], overwrite: bool, log: _EventLog,
             report: ExtractReport) -> list[tuple[SlideSpec, dict]]:
    """Create the feature set, or check the existing one; the slides still to do. ``overwrite`` redoes the
    slides named and keeps every other one; with another config it replaces the feature set, but only
    when every slide in it is named (else those would be lost, or kept beside features of another kind)."""
    if overwrite and name in store.feature_sets() and store.feature_set_info(name).get("config_hash") != config_hash(fs_config):
        left = sorted((set(store.slides(name)) | set(store.failures(name))) - {s.slide_id for s in slides})
        if left:
            raise StoreError(f"feature set {name!r} was made with another config and holds {len(left)} slide(s) not named "
                             f"here ({', '.join(left[:3])}{', ...' if len(left) > 3 else ''}); --overwrite with a new "
                             "config replaces the whole feature set, so name every slide, or extract into another --name")
        store.delete_feature_set(name)
    store.create_feature_set(name, fs_config, config_hash(fs_config))
    return _pending(store, name, slides, log, report, redo=overwrite)


def resolve_devices(devices: str | None) -> list[str]:
    """``all`` or ``0,1,...`` as CUDA device indices (one worker process each); ``[]`` for one device."""
    if not devices:
        return []
    count = torch.cuda.device_count()
    if not count:
        raise DeviceError(f"--devices {devices} asks for GPUs, but torch sees no CUDA device on this machine")
    wanted = [str(i) for i in range(count)] if devices == "all" else [d.strip() for d in devices.split(",")]
    bad = [d for d in wanted if not d.isdigit() or int(d) >= count]
    if bad:
        raise DeviceError(f"--devices {devices}: no GPU {', '.join(bad)} here (torch sees {count}: 0..{count - 1})")
    return wanted


@dataclasses.dataclass
class RunContext:
    """What one run (or one Dask task) reads through: its settings, the open store, and where it reports."""

    store: Store
    name: str
    cfg: ExtractConfig
    run: RunConfig  # resolved
    encoder: Encoder
    dev: torch.device
    precision: str
    mpp_default: float | None
    strict: bool
    log: _EventLog
    report: ExtractReport
    runtime: dict


def _run_local(ctx: RunContext, todo: list[tuple[SlideSpec, dict]]) -> None:
    if not todo:
        return
    store, name, cfg, encoder, dev, precision = ctx.store, ctx.name, ctx.cfg, ctx.encoder, ctx.dev, ctx.precision
    batch_size, mpp_default, log = ctx.run.batch_size, ctx.mpp_default, ctx.log
    specs = [s for s, _ in todo]
    fingerprints = [fp for _, fp in todo]
    embed = PatchEmbedder(encoder, dev, precision)
    cuda = dev.type == "cuda"
    chunk = max(1, min(batch_size, 32))
    # Largest files first: the last slides claimed are then small ones, so no worker is left reading a
    # big slide alone while the device waits (longest-processing-time-first scheduling).
    largest_first = sorted(range(len(specs)), key=lambda i: (-fingerprints[i].get("size", 0), i))
    decoders = DeviceSlides({i: s.path for i, s in enumerate(specs)}, dev)
    reading = PatchReader([(i, specs[i]) for i in largest_first], cfg, mpp_default, chunk, ctx.run.num_workers,
                          pin_memory=cuda, on_device=decoders, run=ctx.run)
    writer = _Writer(store, name, specs, fingerprints, cfg, encoder, precision, ctx.runtime, log, ctx.report,
                     ctx.strict)
    buffered: list[tuple[int, int, torch.Tensor]] = []
    n_buffered = 0
    in_flight: tuple | None = None

    def launch(parts: list[tuple[int, int, torch.Tensor]]) -> None:
        nonlocal in_flight
        # Pinned chunks go to the device asynchronously and are joined there, not in pageable host memory.
        batch = torch.cat([p.to(dev, non_blocking=True) for _, _, p in parts])
        feats = embed(batch).to(torch.float16 if cfg.dtype == "float16" else torch.float32)
        if cuda:
            host = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
            host.copy_(feats, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = feats, None
        previous, in_flight = in_flight, (parts, host, event)
        if previous is not None:  # hand over the batch before this one: the device keeps working meanwhile
            emit(*previous)

    def emit(parts, host, event) -> None:
        if event is not None:
            event.synchronize()
        arr = host.numpy()
        offset = 0
        for idx, start, p in parts:
            writer.put(("rows", idx, start, arr[offset:offset + len(p)].copy()))
            offset += len(p)

    try:
        for item in reading:
            idx = item.slide
            match item:
                case Planned(plan=plan):
                    writer.put(("begin", idx, plan))
                    log("slide_started", slide_id=specs[idx].slide_id, patches=int(len(plan.coords)))
                case Failed(reason=reason):
                    writer.put(("fail", idx, reason))
                case Split(first=first, end=end, size=size):
                    log("slide_shared", slide_id=specs[idx].slide_id, patches=[int(first), int(end)],
                        range_size=int(size), reason="reader workers were idle: they read these patches")
                case Pixels(start=start, patches=patches) | Coords(start=start, coords=patches):
                    if isinstance(item, Coords):
                        patches = decoders[idx].patches(patches)
                        decoders[idx].rows_left -= len(patches)
                        if not decoders[idx].rows_left:
                            decoders.pop(idx).close()
                    buffered.append((idx, start, patches))
                    n_buffered += len(patches)
                    while n_buffered >= batch_size:
                        take, rest, got = [], [], 0
                        for b_idx, b_start, b in buffered:
                            need = batch_size - got
                            if need <= 0:
                                rest.append((b_idx, b_start, b))
                            elif len(b) <= need:
                                take.append((b_idx, b_start, b))
                                got += len(b)
                            else:
                                take.append((b_idx, b_start, b[:need]))
                                rest.append((b_idx, b_start + need, b[need:]))
                                got += need
                        buffered, n_buffered = rest, n_buffered - batch_size
                        launch(take)
            writer.raise_if_stopped()
        if buffered:
            launch(buffered)
        if in_flight is not None:
            emit(*in_flight)
        writer.put(("settle",))
        writer.close()
    except _StopRun:
        writer.close(discard=True)
    except BaseException:
        writer.close(discard=True)
        raise
    finally:
        for decoder in decoders.values():
            decoder.close()
