"""The two storage backends under one set of primitives over paths like "features/resnet50/slides/S1":
a Zarr v3 directory and one HDF5 file. Only this module imports zarr or h5py."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from featstore.errors import StoreError, StoreLockedError

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


class ZarrBackend:
    def __init__(self, path: Path, mode: str):
        import zarr
        from zarr.codecs import BloscCodec, BloscShuffle

        self._zarr = zarr
        self.path = path
        self.writable = mode != "r"
        self._compressor = BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)
        self._root = zarr.open_group(str(path), mode=mode)

    def _node(self, path: str):
        return self._root[path] if path else self._root

    # Metadata reads go straight to the spec's zarr.json documents: listing 1,000 slides through
    # zarr's async machinery costs about a millisecond per node, a plain file read a few microseconds.
    def _meta(self, path: str) -> dict | None:
        try:
            return json.loads((self.path / path / "zarr.json").read_bytes())
        except FileNotFoundError:
            return None

    def has(self, path: str) -> bool:
        return (self.path / path / "zarr.json").exists()

    def attrs(self, path: str) -> dict:
        meta = self._meta(path)
        if meta is None:
            raise KeyError(f"{self.path}: no node {path!r}")
        return meta.get("attributes", {})

    def set_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        self._node(path).attrs.update(jsonable(attrs))

    def require_group(self, path: str) -> None:
        self._root.require_group(path)

    def _children(self, path: str, node_type: str) -> list[str]:
        try:
            entries = list(os.scandir(self.path / path))
        except FileNotFoundError:
            return []
        return sorted(e.name for e in entries
                      if e.is_dir() and (self._meta(f"{path}/{e.name}" if path else e.name) or {}).get("node_type") == node_type)

    def groups(self, path: str) -> list[str]:
        return self._children(path, "group")

    def arrays(self, path: str) -> list[str]:
        return self._children(path, "array")

    def create_array(self, path: str, shape: tuple, dtype, chunks: tuple):
        dtype = str if np.dtype(dtype).kind in "UOT" else dtype
        compressors = None if dtype is str else self._compressor
        parent, name = path.rsplit("/", 1)
        # Every chunk is written, fill-valued or not, so a chunk file that is missing means a lost chunk.
        return self._node(parent).create_array(
            name, shape=shape, dtype=dtype, chunks=chunks, compressors=compressors,
            config={"write_empty_chunks": True},
        )

    def read(self, path: str, rows: slice | None = None) -> np.ndarray:
        arr = self._node(path)
        data = arr[:] if rows is None else arr[rows]
        return np.asarray(data, dtype=object).astype(str) if arr.dtype.kind in "OT" else data

    def shape(self, path: str) -> tuple:
        return tuple(self._node(path).shape)

    def dtype(self, path: str) -> np.dtype:
        return np.dtype(self._node(path).dtype) if self._node(path).dtype.kind not in "OT" else np.dtype(str)

    def delete(self, path: str) -> None:
        shutil.rmtree(self.path / path, ignore_errors=True)

    def move(self, src: str, dst: str) -> None:
        self._root.require_group(dst.rsplit("/", 1)[0])
        if (self.path / dst).exists():
            # Between these two steps the object is absent, never half-present: a crash here means
            # it is simply redone.
            shutil.rmtree(self.path / dst)
        os.replace(self.path / src, self.path / dst)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class HDF5Backend:
    def __init__(self, path: Path, mode: str):
        import h5py

        self._h5py = h5py
        self.path = path
        self.writable = mode != "r"
        self._lock_fd: int | None = None
        if self.writable:
            self._take_lock()
        try:
            self._file = h5py.File(path, "r" if mode == "r" else ("w" if mode == "w" else "a"))
        except OSError as exc:
            self._release_lock()
            # HDF5's own file lock fails with EAGAIN/EWOULDBLOCK (h5py raises BlockingIOError); anything else
            # is the file itself: truncated, corrupt, or not HDF5.
            if isinstance(exc, BlockingIOError) or exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise StoreLockedError(
                    f"HDF5 store {path} is open for writing by another process; HDF5 allows one "
                    "writer at a time (use a .zarr store for concurrent writers)"
                ) from exc
            raise StoreError(f"HDF5 store {path} cannot be opened: the file is truncated or corrupt, or not HDF5 "
                             f"({exc})") from exc

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = open_beside_store(lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreLockedError(
                    f"HDF5 store {self.path} is locked by another writer (pid {holder}); HDF5 allows "
                    "one writer at a time: wait for it, or write to a .zarr store, which takes "
                    "concurrent writers"
                ) from exc
            raise
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def has(self, path: str) -> bool:
        return path in self._file

    def attrs(self, path: str) -> dict:
        node = self._file[path] if path else self._file
        return {k: json.loads(v) for k, v in node.attrs.items()}

    def set_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        node = self._file[path] if path else self._file
        for k, v in jsonable(attrs).items():
            node.attrs[k] = json.dumps(v)

    def require_group(self, path: str) -> None:
        self._file.require_group(path)

    def groups(self, path: str) -> list[str]:
        if path and path not in self._file:
            return []
        node = self._file[path] if path else self._file
        return sorted(k for k, v in node.items() if isinstance(v, self._h5py.Group))

    def arrays(self, path: str) -> list[str]:
        return sorted(k for k, v in self._file[path].items() if isinstance(v, self._h5py.Dataset))

    def create_array(self, path: str, shape: tuple, dtype, chunks: tuple):
        if np.dtype(dtype).kind in "UOT":
            return self._file.create_dataset(path, shape=shape, dtype=self._h5py.string_dtype())
        return self._file.create_dataset(
            path, shape=shape, dtype=dtype, chunks=chunks if all(shape) else None,
            compression="gzip", compression_opts=1, shuffle=True,
        )

    def read(self, path: str, rows: slice | None = None) -> np.ndarray:
        ds = self._file[path]
        if self._h5py.check_string_dtype(ds.dtype) is not None:
            return np.asarray(ds.asstr()[()] if rows is None else ds.asstr()[rows], dtype=str)
        return ds[()] if rows is None else ds[rows]

    def shape(self, path: str) -> tuple:
        return tuple(self._file[path].shape)

    def dtype(self, path: str) -> np.dtype:
        ds = self._file[path]
        return np.dtype(str) if self._h5py.check_string_dtype(ds.dtype) is not None else ds.dtype

    def delete(self, path: str) -> None:
        if path in self._file:
            del self._file[path]

    def move(self, src: str, dst: str) -> None:
        parent = dst.rsplit("/", 1)[0]
        self._file.require_group(parent)
        if dst in self._file:
            del self._file[dst]
        self._file.move(src, dst)
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._release_lock()


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
