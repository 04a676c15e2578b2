"""The storage backends behind one small protocol, one file each (as zarr-python 3 puts its stores behind
``zarr.abc.store.Store``): a Zarr v3 directory (``zarr_backend.py``) and one HDF5 file (``hdf5_backend.py``).
Only these modules import zarr or h5py. Paths look like "features/resnet50/slides/S1"."""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from featstore.errors import StoreError


class Backend(Protocol):
    """The primitives the store is written in; nothing else of a backend is used. Where the two formats differ
    the backend says so itself (its capabilities), so no caller branches on which one it is."""

    name: str  # "zarr" or "hdf5"
    path: Path
    writable: bool
    # One writing process at a time (HDF5, under its lock): a writer then owns every staging entry it finds,
    # and distributed extraction is refused.
    single_writer: bool

    def lost_chunks(self, path: str) -> list[str]:
        """Chunk keys of the array at ``path`` that are gone from storage where that is visible without
        reading them (a Zarr chunk file deleted); [] where a lost chunk shows only when read (HDF5)."""
        ...

    def has(self, path: str) -> bool: ...
    def attrs(self, path: str) -> dict: ...
    def set_attrs(self, path: str, attrs: Mapping[str, Any]) -> None: ...
    def require_group(self, path: str) -> None: ...
    def entries(self, path: str) -> dict[str, str | None]: ...
    def groups(self, path: str) -> list[str]: ...
    def arrays(self, path: str) -> list[str]: ...
    def create_array(self, path: str, shape: tuple, dtype, chunks: tuple): ...
    def read(self, path: str, rows: slice | None = None) -> np.ndarray: ...
    def shape(self, path: str) -> tuple: ...
    def dtype(self, path: str) -> np.dtype: ...
    def delete(self, path: str) -> None: ...
    def move(self, src: str, dst: str) -> None: ...  # NodeExistsError where dst is taken
    def flush(self) -> None: ...
    def close(self) -> None: ...


_TARGET_CHUNK_BYTES = 4 << 20


def open_beside_store(path: Path, flags: int) -> int:
    """Open (creating) a file kept beside a store, the lock or the event log, refusing a symlink: a planted
    link would make us truncate or append to whatever it points at."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; refusing to write through it (remove it)") from exc
        raise


def row_chunks(n_rows: int, row_bytes: int) -> int:
    return int(max(1, min(n_rows, max(256, _TARGET_CHUNK_BYTES // max(row_bytes, 1)))))


def jsonable(obj: Any) -> Any:
    """Attributes are JSON in both backends; numpy scalars and paths are converted on the way in."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


from featstore.backends.hdf5_backend import HDF5Backend  # noqa: E402
from featstore.backends.zarr_backend import ZarrBackend  # noqa: E402

__all__ = ["Backend", "HDF5Backend", "ZarrBackend", "jsonable", "open_beside_store", "row_chunks"]
