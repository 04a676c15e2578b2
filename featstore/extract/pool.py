"""The reader pool: DataLoader workers that claim slides, largest first, and share a big slide's row ranges."""

from __future__ import annotations

import multiprocessing
import os
import queue
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from featstore.extract.allocator import keep_freed_memory
from featstore.extract.config import ExtractConfig, RunConfig, SlideSpec
from featstore.extract.messages import Coords, Failed, Pixels, Planned, Range, Split
from featstore.extract.plan import SlidePlan, plan_slide, read_patch
from featstore.slides import SlideError, open_slide
from featstore.tifftiles import JPEG
from featstore.tiling import Geometry

Message = Planned | Pixels | Coords | Failed | Split

# A slide shared between reader workers goes out in ranges of 4 to 32 chunks (128 to 1,024 patches at
# the default chunk of 32): at most about a second of one worker's reading, so the last range ends the
# run soon, and at least enough to repay the slide's opening by another worker.
MIN_RANGE_CHUNKS, MAX_RANGE_CHUNKS = 4, 32
UNDECIDED, ON_DEVICE, ON_WORKERS = 0, 1, 2  # a slide's device-decoder verdict, shared with the workers


class _ReaderCache:
    """The slide a worker last opened, kept open: a worker reading ranges of a shared slide opens it once.
    One slot, so a worker holds at most one slide's tile cache."""

    def __init__(self):
        self.idx, self.reader = None, None

    def get(self, idx: int, open_reader: Callable[[], Any]) -> Any:
        if idx != self.idx:
            self.close()
            self.reader, self.idx = open_reader(), idx
        return self.reader

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        self.idx, self.reader = None, None


class _PatchStream(IterableDataset):
    """Runs in each reader worker. Yields Planned, Pixels (or Coords), Failed and Split messages
    (featstore.extract.messages), for :class:`PatchReader` to hand on.

    A worker reads a shared row range if one is waiting, else claims the next unclaimed slide from a
    shared counter, plans it and reads it. When it finds nothing to claim it waits for shared ranges,
    and counts itself idle: a worker reading a slide that sees idle ones keeps its share of the rows
    left and hands the rest back (a 'split', given out as ranges), so a cohort's last big slide, or a
    single big slide, is read by every worker instead of one. With fewer than two workers nothing is
    shared. One pass per instance.
    """

    def __init__(self, specs: list[tuple[int, SlideSpec]], cfg: ExtractConfig, mpp_default: float | None,
                 chunk: int, share: bool, run: RunConfig):
        self.specs, self.cfg, self.mpp_default, self.chunk, self.run = specs, cfg, mpp_default, chunk, run
        self.min_range, self.max_range = MIN_RANGE_CHUNKS * chunk, MAX_RANGE_CHUNKS * chunk
        ctx = multiprocessing.get_context()  # all shared with the worker processes
        self._next = ctx.Value("i", 0)
        self._idle = ctx.Value("i", 0)  # workers waiting for a range
        self._pending = ctx.Value("i", 0)  # ranges split off and not yet taken
        self.failed = ctx.Array("b", max((i for i, _ in specs), default=0) + 1, lock=False)
        # Per slide, the main process's verdict on its device decoder: UNDECIDED until the plan reaches it.
        self.device_verdict = ctx.Array("b", len(self.failed), lock=False)
        self.ranges = ctx.Queue() if share else None
        self._ppid: int | None = None  # in a worker: its parent (the main process, or a fork server)
        self._spec = dict(specs)

    def __iter__(self) -> Iterator[Message]:
        self._ppid = os.getppid() if get_worker_info() is not None else None
        readers = _ReaderCache()
        try:
            while (unit := self._next_unit()) is not None:
                if isinstance(unit, Range):
                    yield from self._range(unit, readers)
                else:
                    yield from self._slide(unit, readers)
        finally:
            readers.close()

    def _next_unit(self) -> int | Range | None:
        """A shared range waiting for a worker, else the next unclaimed slide; None when all is read."""
        if self.ranges is not None and not self.ranges.empty():
            try:
                return self._took(self.ranges.get(timeout=0.01))
            except queue.Empty:
                pass  # another worker took it
        with self._next.get_lock():
            i = self._next.value
            self._next.value += 1
        if i < len(self.specs):
            return self.specs[i][0]
        if self.ranges is None:
            return None
        with self._idle.get_lock():
            self._idle.value += 1
        try:
            while True:
                try:
                    return self._took(self.ranges.get(timeout=1.0))  # a range, or None: every slide is read
                except queue.Empty:
                    if self._orphaned():
                        return None
        finally:
            with self._idle.get_lock():
                self._idle.value -= 1

    def _orphaned(self) -> bool:
        """The main process is gone (killed): a worker stops instead of reading on for nobody. As torch's
        own worker watchdog does, a worker watches for its parent process changing."""
        return self._ppid is not None and os.getppid() != self._ppid

    def _took(self, unit: Range | None) -> Range | None:
        if unit is not None:
            with self._pending.get_lock():
                self._pending.value -= 1
        return unit

    def count_pending(self, split: Split, sign: int = 1) -> None:
        """Counted by the worker that splits, before the ranges exist, so that it does not split again
        for the same idle workers; uncounted by the main process for a split it never hands out."""
        with self._pending.get_lock():
            self._pending.value += sign * split.ranges

    def _open(self, idx: int):
        spec = self._spec[idx]
        return open_slide(spec.path, spec.mpp, self.cfg.allow_objective_mpp, direct=self.run.decoder != "openslide")

    def _slide(self, idx: int, readers: _ReaderCache) -> Iterator[Message]:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reader = readers.get(idx, lambda: self._open(idx))
            plan = plan_slide(reader, self.cfg, self._spec[idx], self.mpp_default, self.run)
            plan.info["warnings"] = [str(w.message) for w in caught]
            plan.info["device_decode"] = self._device_decodes(reader, plan.geometry)
        except Exception as exc:  # one bad slide never stops the others
            yield Failed(idx, _reason(exc))
            return
        yield Planned(idx, plan)
        yield from self._read(idx, reader, plan.geometry, plan.coords, 0, owner=True)

    def _range(self, unit: Range, readers: _ReaderCache) -> Iterator[Message]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the slide's owner has recorded them
                reader = readers.get(unit.slide, lambda: self._open(unit.slide))
        except Exception as exc:
            yield Failed(unit.slide, _reason(exc))
            return
        yield from self._read(unit.slide, reader, unit.geometry, unit.coords, unit.start, owner=False)

    def _device_decodes(self, reader, geom: Geometry) -> bool:
        """Whether this slide's patches may be decoded on the device by the main process (--decoder gpu and
        JPEG tiles at the level read): its plan then asks the main process, which checks the device decoder."""
        level = reader.direct_level(geom.level) if self.run.decoder == "gpu" and hasattr(reader, "direct_level") else None
        return level is not None and level.page.compression == JPEG

    def _await_verdict(self, idx: int) -> bool:
        """Whether the main process decodes this slide on the device (then the workers send coordinates, not
        pixels). The plan went out just before; the verdict comes when the main process has read it."""
        while self.device_verdict[idx] == UNDECIDED and not self.failed[idx] and not self._orphaned():
            time.sleep(0.001)
        return self.device_verdict[idx] == ON_DEVICE

    def _read(self, idx: int, reader, geom: Geometry, coords: np.ndarray, offset: int, owner: bool) -> Iterator[Message]:
        """Rows ``offset`` to ``offset + len(coords)`` of slide ``idx``, in chunks (of coordinates alone when
        the main process decodes them on the device)."""
        if self._device_decodes(reader, geom) and self._await_verdict(idx):
            for pos in range(0, len(coords), self.chunk):
                yield Coords(idx, offset + pos, coords[pos:pos + self.chunk])
            return
        pos, end = 0, len(coords)
        may_split = owner and self.ranges is not None and reader.shareable
        try:
            while pos < end and not self.failed[idx] and not self._orphaned():
                # Idle workers with no range waiting for them: this worker keeps an equal share of its
                # rows left and hands the rest out in ranges, within the range bounds.
                idle = self._idle.value - self._pending.value if may_split else 0
                if idle > 0 and end - pos >= 2 * self.min_range:
                    size = -(-(end - pos) // (idle + 1) // self.chunk) * self.chunk
                    size = max(self.min_range, min(self.max_range, size))
                    split = Split(idx, offset + pos + size, offset + end, size)
                    self.count_pending(split)
                    yield split
                    end = pos + size
                block = coords[pos:min(pos + self.chunk, end)]
                yield Pixels(idx, offset + pos, torch.from_numpy(np.stack([read_patch(reader, geom, x, y) for x, y in block])))
                pos += len(block)
        except Exception as exc:
            yield Failed(idx, _reason(exc))


class PatchReader:
    """Reader workers over slides: an iterator of Planned, Pixels (or Coords), Failed and Split messages
    (featstore.extract.messages; a Split's rows are shared out), as soon as any worker has one.

    Each slide's plan comes before its patches; a slide's patches may come from several workers, so
    out of row order. After a slide's error nothing more of it comes. This side coordinates the
    workers: it hands out the ranges a worker splits off, and tells waiting workers when every slide has
    been read.
    """

    def __init__(self, specs: list[tuple[int, SlideSpec]], cfg: ExtractConfig, mpp_default: float | None,
                 chunk: int, workers: int, pin_memory: bool = False, share: bool = True,
                 on_device: Callable[[int, SlidePlan], bool] | None = None, run: RunConfig = RunConfig()):
        """``on_device(slide, plan)``: called in this process for each slide the device could decode (its plan's
        ``device_decode``); True when this process will decode its patches (then Coords come), False to have
        the workers read them (Pixels). Without it every slide is read by the workers."""
        self.workers, self.pin_memory, self.on_device = workers, pin_memory, on_device
        self.stream = _PatchStream(specs, cfg, mpp_default, chunk, share=share and workers > 1, run=run)

    def __iter__(self) -> Iterator[Message]:
        stream = self.stream
        # Held here, not only by the for loop, so that on an early stop the waiting workers are released
        # (finally) before the workers are shut down (when this frame lets go of it).
        items = iter(patch_loader(stream, self.workers, self.pin_memory))
        waiting = stream.ranges is not None  # workers may be waiting for ranges
        unresolved = len(stream.specs)  # slides with neither a plan nor an error yet
        rows_left: dict[int, int] = {}  # planned slides still being read
        plans: dict[int, SlidePlan] = {}

        def release_waiting_workers() -> None:
            nonlocal waiting
            if waiting:
                for _ in range(self.workers):
                    stream.ranges.put(None)
                waiting = False

        completed = False
        try:
            if not unresolved:
                release_waiting_workers()
            for item in items:
                idx = item.slide
                if stream.failed[idx]:
                    if isinstance(item, Split):
                        stream.count_pending(item, -1)
                    continue
                match item:
                    case Split(first=first, end=end, size=size):  # those rows go to any worker, in ranges
                        plan = plans[idx]
                        for start in range(first, end, size):
                            stream.ranges.put(Range(idx, start, plan.coords[start:min(start + size, end)],
                                                    plan.geometry))
                    case Planned(plan=plan):
                        unresolved -= 1
                        plans[idx], rows_left[idx] = plan, len(plan.coords)
                        if plan.info.pop("device_decode", False):  # the workers' question, answered here
                            on = self.on_device is not None and bool(self.on_device(idx, plan))
                            stream.device_verdict[idx] = ON_DEVICE if on else ON_WORKERS
                    case Pixels(patches=rows) | Coords(coords=rows):
                        rows_left[idx] -= len(rows)
                        if not rows_left[idx]:
                            del rows_left[idx], plans[idx]
                    case Failed():
                        stream.failed[idx] = 1  # the workers drop the rest of this slide
                        if rows_left.pop(idx, None) is None:
                            unresolved -= 1
                        plans.pop(idx, None)
                yield item
                if not unresolved and not rows_left:
                    release_waiting_workers()  # every slide is read
            completed = True
        finally:
            if not completed:  # stopped early (--strict, an error): the workers drop what they are reading
                stream.failed[:] = [1] * len(stream.failed)
            release_waiting_workers()  # and waiting ones do not hold up the loader's shutdown
            if stream.ranges is not None:
                stream.ranges.cancel_join_thread()  # never block on ranges nobody will take


def patch_loader(stream: _PatchStream, workers: int, pin_memory: bool = False) -> DataLoader:
    """Reader workers over ``stream``, items handed on as soon as any worker has one.

    ``in_order=False``: a worker busy with a big slide's tissue mask never holds back the chunks the
    others have ready.
    """
    return DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      prefetch_factor=4 if workers else None, in_order=False,
                      worker_init_fn=_init_worker if workers else None)


def _init_worker(worker_id: int) -> None:
    keep_freed_memory()
    _quiet_when_orphaned(worker_id)


def _quiet_when_orphaned(worker_id: int) -> None:
    """A worker whose main process was killed finds out in multiprocessing's resource-sharer thread (which
    hands tensors over, and reports through sys.excepthook) as a ConnectionResetError traceback on the
    terminal; it exits anyway (the loader's watchdog), so after the kill that traceback is only noise."""
    import sys

    parent, default = os.getppid(), sys.excepthook

    def hook(exc_type, exc, tb) -> None:
        if not (issubclass(exc_type, ConnectionError) and os.getppid() != parent):
            default(exc_type, exc, tb)

    sys.excepthook = hook


def _reason(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, SlideError) else f"{type(exc).__name__}: {exc}"
