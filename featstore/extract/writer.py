"""The writer thread: every store write of a run, fed through a bounded queue."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from featstore.encoders import Encoder
from featstore.errors import AlreadyCommittedError
from featstore.extract.config import ExtractConfig, ExtractReport, SlideSpec
from featstore.extract.events import _EventLog, _StopRun
from featstore.extract.plan import SlidePlan
from featstore.provenance import library_versions
from featstore.store import Store, now_iso


class _Writer:
    """Owns every store write of a run, in a background thread fed through a bounded queue."""

    def __init__(self, store: Store, name: str, specs: list[SlideSpec], fingerprints: list[dict], cfg: ExtractConfig,
                 encoder: Encoder, precision: str, runtime: dict, log: _EventLog, report: ExtractReport, strict: bool):
        self.store, self.name, self.specs, self.fps = store, name, specs, fingerprints
        self.cfg, self.encoder, self.precision, self.runtime = cfg, encoder, precision, runtime
        self.log, self.report, self.strict = log, report, strict
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="featstore-writer", daemon=True)
        self.state: dict[int, dict] = {}
        self.versions = library_versions()
        self.thread.start()

    def put(self, msg: tuple) -> None:
        while True:
            self.raise_if_stopped()
            try:
                self.queue.put(msg, timeout=0.5)
                return
            except queue.Full:
                continue

    def raise_if_stopped(self) -> None:
        if self.error is not None:
            raise self.error
        if self.stop.is_set():
            raise _StopRun()

    def close(self, discard: bool = False) -> None:
        if discard:
            self.stop.set()
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        for st in self.state.values():
            if st.get("writer") is not None:
                st["writer"].abort()
        if self.error is not None and not discard:
            raise self.error

    def _loop(self) -> None:
        try:
            while (msg := self.queue.get()) is not None:
                if self.stop.is_set():
                    continue
                getattr(self, f"_{msg[0]}")(*msg[1:])
        except BaseException as exc:  # surfaced in the main thread
            self.error = exc
            self.stop.set()
            while self.queue.get() is not None:
                pass

    def _begin(self, idx: int, plan: SlidePlan) -> None:
        spec = self.specs[idx]
        self.state[idx] = {"plan": plan, "written": 0, "t0": time.perf_counter(),
                           "writer": self.store.begin_slide(self.name, spec.slide_id, len(plan.coords),
                                                            self.encoder.dim, self.cfg.dtype)}

    def _rows(self, idx: int, start: int, feats: np.ndarray) -> None:
        st = self.state.get(idx)
        if st is None or st["writer"] is None:
            return  # the slide failed after these rows were read
        plan = st["plan"]
        end = start + len(feats)
        st["writer"].write(feats, plan.coords[start:end], plan.tissue_fraction[start:end], start=start)
        st["written"] += len(feats)
        self.report.patches += len(feats)
        self.log.progress(slide_id=self.specs[idx].slide_id, patches=len(feats))
        if st["written"] == len(plan.coords):
            self._commit(idx)

    def _commit(self, idx: int) -> None:
        st, spec = self.state[idx], self.specs[idx]
        plan: SlidePlan = st["plan"]
        g = plan.geometry
        seconds = time.perf_counter() - st["t0"]
        writer, st["writer"] = st["writer"], None
        try:
            writer.commit({
                "patient_id": spec.patient_id,
                "slide_path": spec.path,
                "provenance": {
                    "file": self.fps[idx], "slide_path": spec.path, "slide_mpp": g.slide_mpp,
                    "mpp_source": plan.mpp_source, "target_mpp": g.target_mpp, "patch_size": g.patch_size,
                    "patch_size_level0": g.patch_size_level0, "level": g.level, "read_size": g.read_size,
                    "decode_scale": g.scale,
                    "min_tissue": self.cfg.min_tissue, **self.encoder.provenance(), "precision": self.precision,
                    **self.runtime, "dtype": self.cfg.dtype, "coords": "level-0 pixels, top-left corner (x, y)",
                    "libraries": self.versions, "extracted": now_iso(), "seconds": round(seconds, 3), **plan.info,
                },
            })
        except AlreadyCommittedError:  # a concurrent run committed this slide first: keep theirs, go on
            self.report.skipped.append(spec.slide_id)
            self.log("slide_skipped", slide_id=spec.slide_id, reason="already committed by another run")
            return
        except OSError as exc:  # this slide's commit failed (a full disk, a path the system refuses): the others go on
            self._fail(idx, f"could not be committed ({type(exc).__name__}: {exc})")
            return
        self.report.done.append(spec.slide_id)
        self.log("slide_done", slide_id=spec.slide_id, patches=int(len(plan.coords)), seconds=round(seconds, 3))

    def _settle(self) -> None:
        """At the end of a run every slide is done or failed: one the readers left unfinished (a worker
        that stopped early) is recorded as failed, never dropped without a word."""
        settled = set(self.report.done) | set(self.report.failed) | set(self.report.skipped)
        for idx, spec in enumerate(self.specs):
            if spec.slide_id not in settled:
                self._fail(idx, "the readers stopped before this slide was read to the end; run again to redo it")

    def _fail(self, idx: int, reason: str) -> None:
        spec = self.specs[idx]
        st = self.state.get(idx)
        if st is not None and st["writer"] is not None:
            st["writer"].abort()
            st["writer"] = None
        self.store.record_failure(self.name, spec.slide_id, reason, slide_path=spec.path, time=now_iso())
        self.report.failed[spec.slide_id] = reason
        self.log("slide_failed", slide_id=spec.slide_id, reason=reason)
        if self.strict:
            self.stop.set()
