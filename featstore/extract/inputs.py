"""Input discovery: slide files, folders, manifests; sharding a list of slides across runs."""

from __future__ import annotations

import csv
import glob
import math
import os
from pathlib import Path

from featstore.barcodes import patient_of
from featstore.extract.config import SlideSpec
from featstore.slides import SLIDE_SUFFIXES
from featstore.store import check_name


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
        before = len(specs)
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
        if len(specs) == before:  # an empty folder or a link to nowhere is a mistake, never a run over no slides
            raise FileNotFoundError(f"{item}: no slide files there (searched for {', '.join(sorted(SLIDE_SUFFIXES))}"
                                    "; a folder of one slide's tiles needs --tiles-as-slide)")
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
