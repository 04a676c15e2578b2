"""Identity of configs, files and the software that produced features."""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

# Hashing a whole multi-GB slide is not cheap; below this size it is, and it catches edits that keep
# size and mtime.
CONTENT_HASH_MAX_BYTES = 64 << 20


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable short hash of a JSON-able config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Size, mtime and (for files up to 64 MiB) sha256; directories fingerprint their files' sizes and mtimes."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file())
        blob = json.dumps([(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files])
        return {"size": sum(f.stat().st_size for f in files), "files": len(files),
                "listing_sha256": hashlib.sha256(blob.encode()).hexdigest()}
    st = p.stat()
    out: dict[str, Any] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if st.st_size <= CONTENT_HASH_MAX_BYTES:
        out["sha256"] = sha256_file(p)
    return out


def library_versions(names: tuple[str, ...] = ("featstore", "torch", "torchvision", "numpy", "openslide-python",
                                              "openslide-bin", "tifffile", "imagecodecs", "simplejpeg", "pillow",
                                              "zarr", "h5py", "timm")) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out
