"""Content digests recorded at commit and checked on read, and a check that every Zarr chunk is on disk.

A Zarr reader fills a missing chunk with the fill value, so a lost chunk file would read as zeros and a
garbled one as whatever decodes: neither is noticed unless something checks. Every committed array gets
``{shape, dtype, chunk_rows, sha256}`` in its node's ``digests`` attribute; ``sha256`` is the digest of the
per-chunk SHA-256 digests of its rows in order, so a writer that receives chunks out of order (reader
workers sharing a slide) can compute it without holding the array.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def piece_hash(rows: np.ndarray) -> str:
    """SHA-256 of one run of rows; strings hashed as NUL-joined UTF-8, so their in-memory width is irrelevant."""
    if rows.dtype.kind in "UOT":
        data = "\0".join(map(str, rows.reshape(-1).tolist())).encode()
    else:
        data = np.ascontiguousarray(rows).tobytes()
    return hashlib.sha256(data).hexdigest()


def combine(piece_hashes: list[str]) -> str:
    return hashlib.sha256("".join(piece_hashes).encode()).hexdigest()


def record(array: np.ndarray, chunk_rows: int | None = None) -> dict:
    """The digest record of a whole in-memory array."""
    rows = max(1, chunk_rows or len(array) or 1) if array.ndim else 1
    pieces = [piece_hash(array[i:i + rows]) for i in range(0, len(array), rows)] if array.ndim else [piece_hash(array)]
    return {"shape": list(array.shape), "dtype": _dtype_name(array), "chunk_rows": rows, "sha256": combine(pieces)}


def mismatch(array: np.ndarray, rec: dict) -> str | None:
    """What differs between ``array`` as read and its commit-time record, or None."""
    if list(array.shape) != list(rec["shape"]):
        return f"shape {list(array.shape)} != {rec['shape']} recorded at commit"
    if _dtype_name(array) != rec["dtype"]:
        return f"dtype {_dtype_name(array)} != {rec['dtype']} recorded at commit"
    if record(array, rec["chunk_rows"])["sha256"] != rec["sha256"]:
        return "content differs from the digest recorded at commit (a lost, garbled or rewritten chunk)"
    return None


def _dtype_name(array: np.ndarray) -> str:
    return "str" if array.dtype.kind in "UOT" else str(array.dtype)


def missing_zarr_chunks(array_dir: Path) -> list[str]:
    """Chunk keys of a Zarr v3 array (default "/" key encoding) whose files are not on disk."""
    meta = json.loads((array_dir / "zarr.json").read_bytes())
    shape = meta["shape"]
    chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
    if not shape or not all(shape):
        return []
    grid = [range(-(-s // c)) for s, c in zip(shape, chunks)]
    out = []
    for idx in np.ndindex(*[len(g) for g in grid]):
        key = "c/" + "/".join(map(str, idx))
        if not (array_dir / key).is_file():
            out.append(key)
    return out
