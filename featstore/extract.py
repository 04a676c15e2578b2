"""The one-time pass: slides -> tissue -> patch grid -> frozen encoder -> feature store.

Reading and decoding run in DataLoader worker processes (each taking the next unclaimed slide, largest
first, and sharing the rest of its slide with workers that have nothing left to claim), overlapped with
batched inference in the main process; batches span slide boundaries so the accelerator never waits
for a small slide; a background thread owns every store write. Queues are bounded, so memory stays
flat however large a slide is. Each slide is committed atomically once all its rows are written; a
slide that fails is recorded with its reason and the others go on.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import multiprocessing
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from featstore.barcodes import patient_of
from featstore.encoders import Encoder, build_encoder
from featstore.errors import AlreadyCommittedError, DeviceError
from featstore.provenance import config_hash, file_fingerprint, library_versions
from featstore.slides import SLIDE_SUFFIXES, SlideError, open_slide
from featstore.store import Store, StoreError, check_name, now_iso, open_beside_store
from featstore.store import open as open_store
from featstore.tiling import Geometry, grid, tissue_fractions
from featstore.tissue import tissue_mask

# Bump when tissue detection, tiling or preprocessing changes what a given config produces.
PIPELINE_VERSION = 2
EXIT_OK, EXIT_SOME_FAILED = 0, 2
# A slide shared between reader workers goes out in ranges of 4 to 32 chunks (128 to 1,024 patches at
# the default chunk of 32): at most about a second of one worker's reading, so the last range ends the
# run soon, and at least enough to repay the slide's opening by another worker.
MIN_RANGE_CHUNKS, MAX_RANGE_CHUNKS = 4, 32

EventHandler = Callable[[dict], None]


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that determines the features; its hash names the feature set's identity."""

    encoder: str = "resnet50"
    weights: str = "random"
    seed: int = 0
    target_mpp: float = 0.5
    patch_size: int = 224
    min_tissue: float = 0.25
    precision: str = "auto"
    dtype: str = "float16"
    thumbnail_side: int = 1024
    allow_objective_mpp: bool = True
    reader: str = "auto"  # "openslide": every pixel through OpenSlide (see featstore.tifftiles)
    # A bound, not part of what the features are: kept out of the feature set's identity (RUN_ONLY).
    max_patches: int = 2_000_000  # per slide, counted on the grid before the tissue mask

    def __post_init__(self) -> None:
        if self.target_mpp <= 0:
            raise ValueError(f"target_mpp must be > 0, got {self.target_mpp}")
        if self.patch_size < 16:
            raise ValueError(f"patch_size must be at least 16, got {self.patch_size}")
        if not 0 <= self.min_tissue <= 1:
            raise ValueError(f"min_tissue must be in [0, 1], got {self.min_tissue}")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {self.precision!r}")
        if self.reader not in ("auto", "openslide"):
            raise ValueError(f"reader must be auto or openslide, got {self.reader!r}")
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"dtype must be float16 or float32, got {self.dtype!r}")


@dataclass(frozen=True)
class SlideSpec:
    path: str
    slide_id: str
    patient_id: str
    mpp: float | None = None


@dataclass
class ExtractReport:
    feature_set: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    patches: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_OK

    def merge(self, other: ExtractReport) -> None:
        self.done += other.done
        self.skipped += other.skipped
        self.failed.update(other.failed)
        self.patches += other.patches


# --------------------------------------------------------------------------------------------------
# Inputs


def _slide_id(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def find_slides(inputs: list[str | os.PathLike], tiles_as_slide: bool = False) -> list[SlideSpec]:
    """Files, directories (searched recursively for slides and images), globs, or CSV manifests.

    A folder of slides and a folder of one slide's tiles look alike, so it is said explicitly: a
    directory is searched for slides unless ``tiles_as_slide``, when it is one virtual slide made of its
    image tiles. A manifest has ``slide_path`` and optional ``slide_id``, ``patient_id`` and ``mpp``; a
    ``slide_path`` that is a directory is a folder of tiles read as one slide. Slides are sorted by id
    so the order (and any ``--shard``) is deterministic.
    """
    specs: list[SlideSpec] = []
    for item in map(str, inputs):
        p = Path(item)
        if p.suffix.lower() == ".csv" and p.is_file():
            specs += _read_manifest(p)
        elif p.is_dir() and tiles_as_slide:
            specs.append(_spec(p))
        elif p.is_dir():
            specs += [_spec(f) for f in sorted(p.rglob("*")) if f.is_file() and f.suffix.lower() in SLIDE_SUFFIXES]
        elif p.exists():
            specs.append(_spec(p))
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: no such file, folder or glob match")
            specs += [_spec(Path(m)) for m in matches if Path(m).is_dir() or Path(m).suffix.lower() in SLIDE_SUFFIXES]
    seen: dict[str, str] = {}
    for s in specs:
        if s.slide_id in seen and seen[s.slide_id] != s.path:
            raise ValueError(f"slide id {s.slide_id!r} is used by both {seen[s.slide_id]} and {s.path}; "
                             "give unique slide_id values in a manifest")
        seen[s.slide_id] = s.path
    unique = {s.slide_id: s for s in specs}
    return [unique[k] for k in sorted(unique)]


def _spec(path: Path, slide_id: str | None = None, patient_id: str | None = None,
          mpp: float | None = None) -> SlideSpec:
    sid = check_name(slide_id or _slide_id(path), "slide id")
    return SlideSpec(str(path.resolve()), sid, patient_id or patient_of(sid), mpp)


def _read_manifest(path: Path) -> list[SlideSpec]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8") from exc
    if not rows or "slide_path" not in rows[0]:
        raise ValueError(f"{path}: a manifest needs a 'slide_path' column (optional: slide_id, patient_id, mpp)")
    out = []
    for i, row in enumerate(rows, start=2):
        sp = Path(row["slide_path"].strip())
        if not sp.is_absolute():
            sp = path.parent / sp
        mpp = None
        if (row.get("mpp") or "").strip():
            try:
                mpp = float(row["mpp"])
            except ValueError:
                raise ValueError(f"{path}: row {i}, column 'mpp': {row['mpp']!r} is not a number") from None
            if not math.isfinite(mpp) or mpp <= 0:
                raise ValueError(f"{path}: row {i}, column 'mpp': must be a finite number > 0, got {row['mpp']!r}")
        out.append(_spec(sp, (row.get("slide_id") or "").strip() or None,
                         (row.get("patient_id") or "").strip() or None, mpp))
    return out


def shard(specs: list[SlideSpec], index: int, count: int) -> list[SlideSpec]:
    """Deterministic shard ``index`` of ``count`` (0-based), for job arrays: every slide in exactly one."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
    return specs[index::count]


# --------------------------------------------------------------------------------------------------
# Planning and reading (run inside DataLoader workers)


@dataclass
class SlidePlan:
    coords: np.ndarray
    tissue_fraction: np.ndarray
    geometry: Geometry
    mpp_source: str
    info: dict


def plan_slide(reader, cfg: ExtractConfig, spec: SlideSpec, mpp_default: float | None) -> SlidePlan:
    """Tissue mask and patch grid of one slide; raises SlideError for no mpp or no tissue."""
    mpp, source = reader.mpp, reader.mpp_source
    if mpp is None:
        if mpp_default is None:
            raise SlideError(f"{spec.slide_id}: no mpp in the slide's metadata; give one in a manifest 'mpp' "
                             "column or with --mpp-default")
        mpp, source = mpp_default, "default"
    if not math.isfinite(mpp) or mpp <= 0:
        raise SlideError(f"{spec.slide_id}: mpp {mpp!r} ({source}) is not a finite number > 0")
    geom = Geometry.for_slide(cfg.target_mpp, cfg.patch_size, mpp, reader.level_downsamples)
    # Bounds before any pixel is read: a declared size is checked against the patch budget and, for
    # directly decoded TIFFs, against the bytes the file holds.
    width, height = reader.level_dimensions[0]
    planned = sum(-(-r.width // geom.patch_size_level0) * -(-r.height // geom.patch_size_level0)
                  for r in reader.regions())
    if planned > cfg.max_patches:
        raise SlideError(f"{spec.slide_id}: declares {width} x {height} px, a grid of {planned:,} patches at "
                         f"{cfg.target_mpp} µm/px, over the limit of {cfg.max_patches:,} per slide (--max-patches)")
    if getattr(reader, "declared_bytes", None) == 0:
        raise SlideError(f"{spec.slide_id}: declares {width} x {height} px but its tiles hold no data "
                         "(every tile byte count is 0): the file is truncated or not what it says")
    coords, fractions = [], []
    for region in reader.regions():
        thumb, ds = reader.thumbnail(region, cfg.thumbnail_side)
        mask = tissue_mask(thumb)
        c = grid(region.x, region.y, region.width, region.height, geom.patch_size_level0)
        coords.append(c)
        fractions.append(tissue_fractions(mask, c, (region.x, region.y), ds, geom.patch_size_level0))
    coords_a, frac = np.concatenate(coords), np.concatenate(fractions)
    keep = frac >= cfg.min_tissue if cfg.min_tissue > 0 else np.ones(len(frac), bool)
    keep &= frac > 0
    if not keep.any():
        raise SlideError(f"{spec.slide_id}: no tissue (no patch has tissue fraction >= {cfg.min_tissue})")
    info = {"level_dimensions": [list(d) for d in reader.level_dimensions],
            "level_downsamples": list(reader.level_downsamples), "regions": len(reader.regions()),
            "grid_patches": int(len(coords_a)), "pixels": reader.pixel_source}
    if hasattr(reader, "files"):
        info["tiles"] = [{"file": f.name, "x_offset": int(o)} for f, o in zip(reader.files, reader.offsets)]
    return SlidePlan(coords_a[keep], frac[keep], geom, source, info)


def read_patch(reader, geom: Geometry, x: int, y: int) -> np.ndarray:
    img = reader.read(x, y, geom.level, geom.read_size, geom.read_size)
    if geom.read_size == geom.patch_size:
        return img
    # Antialiased bilinear, PIL's filter (to within one grey level) at a quarter of PIL's cost: torch has
    # a vectorised uint8 kernel for it. Downsampling a 40x slide to 0.5 µm/px is the common case.
    t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0)
    t = torch.nn.functional.interpolate(t, size=(geom.patch_size, geom.patch_size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


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
    """Runs in each reader worker. Yields ('plan', i, plan), ('patches', i, start, uint8 NHWC),
    ('error', i, reason) and ('split', i, first row, end row, range size), for :class:`PatchReader` to hand on.

    A worker reads a shared row range if one is waiting, else claims the next unclaimed slide from a
    shared counter, plans it and reads it. When it finds nothing to claim it waits for shared ranges,
    and counts itself idle: a worker reading a slide that sees idle ones keeps its share of the rows
    left and hands the rest back (a 'split', given out as ranges), so a cohort's last big slide, or a
    single big slide, is read by every worker instead of one. With fewer than two workers nothing is
    shared. One pass per instance.
    """

    def __init__(self, specs: list[tuple[int, SlideSpec]], cfg: ExtractConfig, mpp_default: float | None,
                 chunk: int, share: bool):
        self.specs, self.cfg, self.mpp_default, self.chunk = specs, cfg, mpp_default, chunk
        self.min_range, self.max_range = MIN_RANGE_CHUNKS * chunk, MAX_RANGE_CHUNKS * chunk
        ctx = multiprocessing.get_context()  # all shared with the worker processes
        self._next = ctx.Value("i", 0)
        self._idle = ctx.Value("i", 0)  # workers waiting for a range
        self._pending = ctx.Value("i", 0)  # ranges split off and not yet taken
        self.failed = ctx.Array("b", max((i for i, _ in specs), default=0) + 1, lock=False)
        self.ranges = ctx.Queue() if share else None
        self._ppid: int | None = None  # in a worker: its parent (the main process, or a fork server)
        self._spec = dict(specs)

    def __iter__(self) -> Iterator[tuple]:
        self._ppid = os.getppid() if get_worker_info() is not None else None
        readers = _ReaderCache()
        try:
            while (unit := self._next_unit()) is not None:
                if unit[0] == "slide":
                    yield from self._slide(unit[1], readers)
                else:
                    yield from self._range(*unit[1:], readers)
        finally:
            readers.close()

    def _next_unit(self) -> tuple | None:
        if self.ranges is not None and not self.ranges.empty():
            try:
                return self._took(self.ranges.get(timeout=0.01))
            except queue.Empty:
                pass  # another worker took it
        with self._next.get_lock():
            i = self._next.value
            self._next.value += 1
        if i < len(self.specs):
            return ("slide", self.specs[i][0])
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

    def _took(self, unit: tuple | None) -> tuple | None:
        if unit is not None:
            with self._pending.get_lock():
                self._pending.value -= 1
        return unit

    def count_pending(self, split: tuple, sign: int = 1) -> None:
        """Counted by the worker that splits, before the ranges exist, so that it does not split again
        for the same idle workers; uncounted by the main process for a split it never hands out."""
        _, _, first, stop, size = split
        with self._pending.get_lock():
            self._pending.value += sign * -(-(stop - first) // size)

    def _open(self, idx: int):
        spec = self._spec[idx]
        return open_slide(spec.path, spec.mpp, self.cfg.allow_objective_mpp, direct=self.cfg.reader == "auto")

    def _slide(self, idx: int, readers: _ReaderCache) -> Iterator[tuple]:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                reader = readers.get(idx, lambda: self._open(idx))
            plan = plan_slide(reader, self.cfg, self._spec[idx], self.mpp_default)
            plan.info["warnings"] = [str(w.message) for w in caught]
        except Exception as exc:  # one bad slide never stops the others
            yield ("error", idx, _reason(exc))
            return
        yield ("plan", idx, plan)
        yield from self._read(idx, reader, plan.geometry, plan.coords, 0, owner=True)

    def _range(self, idx: int, start: int, coords: np.ndarray, geom: Geometry, readers: _ReaderCache) -> Iterator[tuple]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the slide's owner has recorded them
                reader = readers.get(idx, lambda: self._open(idx))
        except Exception as exc:
            yield ("error", idx, _reason(exc))
            return
        yield from self._read(idx, reader, geom, coords, start, owner=False)

    def _read(self, idx: int, reader, geom: Geometry, coords: np.ndarray, offset: int, owner: bool) -> Iterator[tuple]:
        """Rows ``offset`` to ``offset + len(coords)`` of slide ``idx``, in chunks."""
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
                    split = ("split", idx, offset + pos + size, offset + end, size)
                    self.count_pending(split)
                    yield split
                    end = pos + size
                block = coords[pos:min(pos + self.chunk, end)]
                yield ("patches", idx, offset + pos,
                       torch.from_numpy(np.stack([read_patch(reader, geom, x, y) for x, y in block])))
                pos += len(block)
        except Exception as exc:
            yield ("error", idx, _reason(exc))


class PatchReader:
    """Reader workers over slides: an iterator of ('plan', i, plan), ('patches', i, start, uint8 NHWC),
    ('error', i, reason) and ('split', i, first row, end row, range size) items (those rows are shared
    out), as soon as any worker has one.

    Each slide's plan comes before its patches; a slide's patches may come from several workers, so
    out of row order. After a slide's error nothing more of it comes. This side coordinates the
    workers: it hands out the ranges a worker splits off, and tells waiting workers when every slide has
    been read.
    """

    def __init__(self, specs: list[tuple[int, SlideSpec]], cfg: ExtractConfig, mpp_default: float | None,
                 chunk: int, workers: int, pin_memory: bool = False, share: bool = True):
        self.workers, self.pin_memory = workers, pin_memory
        self.stream = _PatchStream(specs, cfg, mpp_default, chunk, share=share and workers > 1)

    def __iter__(self) -> Iterator[tuple]:
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
                kind, idx = item[0], item[1]
                if stream.failed[idx]:
                    if kind == "split":
                        stream.count_pending(item, -1)
                    continue
                if kind == "split":  # rows item[2] to item[3] go to any worker, in ranges of item[4]
                    plan, (first, stop, size) = plans[idx], item[2:]
                    for start in range(first, stop, size):
                        stream.ranges.put(("range", idx, start, plan.coords[start:min(start + size, stop)],
                                           plan.geometry))
                elif kind == "plan":
                    unresolved -= 1
                    plans[idx], rows_left[idx] = item[2], len(item[2].coords)
                elif kind == "patches":
                    rows_left[idx] -= len(item[3])
                    if not rows_left[idx]:
                        del rows_left[idx], plans[idx]
                else:  # error
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
                      worker_init_fn=_quiet_when_orphaned if workers else None)


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


# --------------------------------------------------------------------------------------------------
# Inference


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but torch sees no CUDA device on this machine; "
                          "use --device cpu (or auto)")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast is slower than fp32 on CPUs without bf16 matrix units


class PatchEmbedder:
    """uint8 NHWC patches on any device in, float32 embeddings out: normalisation runs on the device."""

    def __init__(self, encoder: Encoder, device: torch.device, precision: str):
        self.device, self.precision = device, precision
        self.model = encoder.model.to(device).to(memory_format=torch.channels_last)
        mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
        # (x / 255 - mean) / std as one multiply-add pass over the batch.
        self.scale, self.shift = 1 / (255 * std), -mean / std
        self._autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    @torch.inference_mode()
    def __call__(self, patches: torch.Tensor) -> torch.Tensor:
        x = patches.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = torch.addcmul(self.shift, x, self.scale).contiguous(memory_format=torch.channels_last)
        if self._autocast is not None:
            with torch.autocast(self.device.type, dtype=self._autocast):
                return self.model(x).float()
        return self.model(x)


# --------------------------------------------------------------------------------------------------
# The run


RUN_ONLY = ("max_patches",)


def feature_set_config(cfg: ExtractConfig, encoder: Encoder, precision: str) -> dict:
    identity = {k: v for k, v in asdict(cfg).items() if k not in RUN_ONLY}
    return {**identity, "weights": encoder.weights_id, "precision": precision, "dim": encoder.dim,
            "mean": list(encoder.mean), "std": list(encoder.std), "pipeline_version": PIPELINE_VERSION,
            "source": "extract"}


class _EventLog:
    def __init__(self, store_path: Path, on_event: EventHandler | None):
        self.path = store_path.with_name(store_path.name + ".events.jsonl")
        self.on_event = on_event
        self._lock = threading.Lock()

    def __call__(self, event: str, **data: Any) -> None:
        record = {"time": now_iso(), "event": event, "pid": os.getpid(), **data}
        with self._lock:
            with os.fdopen(open_beside_store(self.path, os.O_WRONLY | os.O_APPEND), "a") as fh:
                fh.write(json.dumps(record, default=str) + "\n")
            if self.on_event is not None:
                self.on_event(record)

    def progress(self, **data: Any) -> None:
        """Progress goes to the handler (a progress bar) only: one log line per batch would swamp the log."""
        if self.on_event is not None:
            self.on_event({"event": "progress", **data})


def _pending(store: Store, name: str, specs: list[SlideSpec], log: _EventLog,
             report: ExtractReport) -> list[tuple[SlideSpec, dict]]:
    """Slides still to do, each with its file fingerprint; committed unchanged slides are skipped."""
    committed = set(store.slides(name))
    todo = []
    for spec in specs:
        try:
            fp = file_fingerprint(spec.path)
        except OSError as exc:
            fp = {"error": str(exc)}
        if spec.slide_id in committed:
            attrs = store.slide_attrs(name, spec.slide_id)
            if attrs.get("provenance", {}).get("file") == fp and attrs.get("slide_path") == spec.path:
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
    name: str | None = None,
    device: str = "auto",
    batch_size: int = 64,
    num_workers: int | None = None,
    mpp_default: float | None = None,
    overwrite: bool = False,
    strict: bool = False,
    on_event: EventHandler | None = None,
    scheduler: str | None = None,
    dask_workers: int | None = None,
) -> ExtractReport:
    """Extract ``slides`` into the feature set ``name`` (default: the encoder's name) of a store.

    Resumable: slides already committed with the same config and an unchanged file are skipped.
    ``scheduler``/``dask_workers`` run one Dask task per slide instead (Zarr stores only).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    store_path = Path(store_path)
    name = check_name(name or config.encoder, "feature set name")
    dev = resolve_device(device)
    precision = resolve_precision(config.precision, dev)
    encoder = build_encoder(config.encoder, config.weights, config.seed)
    fs_config = feature_set_config(config, encoder, precision)
    log = _EventLog(store_path, on_event)
    report = ExtractReport(name)
    t0 = time.perf_counter()
    with open_store(store_path, "a") as store:
        if overwrite and name in store.feature_sets():
            store.delete_feature_set(name)
        store.create_feature_set(name, fs_config, config_hash(fs_config))
        todo = _pending(store, name, slides, log, report)
        distributed = scheduler is not None or dask_workers is not None
        if distributed and store.backend_name == "hdf5":
            raise StoreError(f"{store_path} is an HDF5 store, which takes one writer at a time; "
                             "distributed extraction needs a .zarr store")
        log("run_start", feature_set=name, slides=len(slides), todo=len(todo), skipped=len(report.skipped),
            device=str(dev), precision=precision, config_hash=config_hash(fs_config))
        if not distributed:
            _run_local(store, name, todo, config, encoder, dev, precision, batch_size,
                       _default_workers() if num_workers is None else num_workers, mpp_default, strict, log, report)
    if distributed and todo:
        from featstore.distributed import run_on_dask

        report.merge(run_on_dask(todo, store_path, name, config, device, batch_size, mpp_default,
                                 scheduler, dask_workers, log))
    report.seconds = time.perf_counter() - t0
    log("run_end", feature_set=name, done=len(report.done), skipped=len(report.skipped),
        failed=len(report.failed), patches=report.patches, seconds=round(report.seconds, 3))
    return report


def _default_workers() -> int:
    # The cores this process may use (a SLURM or container allocation), not all the host's.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
    return max(1, min(12, cores - 1))


class _StopRun(Exception):
    pass


def _run_local(store: Store, name: str, todo: list[tuple[SlideSpec, dict]], cfg: ExtractConfig, encoder: Encoder,
               dev: torch.device, precision: str, batch_size: int, num_workers: int, mpp_default: float | None,
               strict: bool, log: _EventLog, report: ExtractReport) -> None:
    if not todo:
        return
    specs = [s for s, _ in todo]
    fingerprints = [fp for _, fp in todo]
    embed = PatchEmbedder(encoder, dev, precision)
    cuda = dev.type == "cuda"
    chunk = max(1, min(batch_size, 32))
    # Largest files first: the last slides claimed are then small ones, so no worker is left reading a
    # big slide alone while the device waits (longest-processing-time-first scheduling).
    largest_first = sorted(range(len(specs)), key=lambda i: (-fingerprints[i].get("size", 0), i))
    reading = PatchReader([(i, specs[i]) for i in largest_first], cfg, mpp_default, chunk, num_workers, pin_memory=cuda)
    writer = _Writer(store, name, specs, fingerprints, cfg, encoder, precision, str(dev), log, report, strict)
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
            kind, idx = item[0], item[1]
            if kind == "plan":
                writer.put(("begin", idx, item[2]))
                log("slide_started", slide_id=specs[idx].slide_id, patches=int(len(item[2].coords)))
            elif kind == "error":
                writer.put(("fail", idx, item[2]))
            elif kind == "split":
                log("slide_shared", slide_id=specs[idx].slide_id, patches=[int(item[2]), int(item[3])],
                    range_size=int(item[4]), reason="reader workers were idle: they read these patches")
            else:
                start, patches = item[2], item[3]
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


class _Writer:
    """Owns every store write of a run, in a background thread fed through a bounded queue."""

    def __init__(self, store: Store, name: str, specs: list[SlideSpec], fingerprints: list[dict], cfg: ExtractConfig,
                 encoder: Encoder, precision: str, device: str, log: _EventLog, report: ExtractReport, strict: bool):
        self.store, self.name, self.specs, self.fps = store, name, specs, fingerprints
        self.cfg, self.encoder, self.precision, self.device = cfg, encoder, precision, device
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
                    "min_tissue": self.cfg.min_tissue, **self.encoder.provenance(), "precision": self.precision,
                    "device": self.device, "dtype": self.cfg.dtype, "coords": "level-0 pixels, top-left corner (x, y)",
                    "libraries": self.versions, "extracted": now_iso(), "seconds": round(seconds, 3), **plan.info,
                },
            })
        except AlreadyCommittedError:  # a concurrent run committed this slide first: keep theirs, go on
            self.report.skipped.append(spec.slide_id)
            self.log("slide_skipped", slide_id=spec.slide_id, reason="already committed by another run")
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
