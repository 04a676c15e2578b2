"""A store as one HDF5 file (one writer at a time, held by an flock on ``<store>.lock``)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from featstore.backends import jsonable, open_beside_store
from featstore.errors import NodeExistsError, StoreError, StoreLockedError


class HDF5Backend:
    name = "hdf5"
    single_writer = True

    def __init__(self, path: Path, mode: str):
        import h5py

        self._h5py = h5py
        self.path = path
        self.writable = mode != "r"
        self._lock_fd: int | None = None
        if self.writable:
            self._take_lock()
        try:
            self._file = h5py.File(path, "r" if mode == "r" else "a")
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

    @classmethod
    def create(cls, path: Path, root_attrs: Mapping[str, Any]) -> bool:
        """Make a store at ``path`` in one step: written under a hidden name, then hard-linked into place,
        which fails where a file is there already. False where another run's store got there first."""
        import h5py
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.creating")
        try:
            with h5py.File(tmp, "w") as f:
                for k, v in jsonable(root_attrs).items():
                    f.attrs[k] = json.dumps(v)
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            except OSError as exc:  # a file system without hard links: the nearest it offers
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                if path.exists():
                    return False
                os.rename(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return True

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

    def lost_chunks(self, path: str) -> list[str]:
        return []  # chunks live inside the one file: a damaged one fails its read (deep validation finds it)

    def attrs(self, path: str) -> dict:
        node = self._file[path] if path else self._file
        return {k: json.loads(v) for k, v in node.attrs.items()}

    def set_attrs(self, path: str, attrs: Mapping[str, Any]) -> None:
        node = self._file[path] if path else self._file
        for k, v in jsonable(attrs).items():
            node.attrs[k] = json.dumps(v)

    def require_group(self, path: str) -> None:
        self._file.require_group(path)

    def entries(self, path: str) -> dict[str, str | None]:
        if path and path not in self._file:
            return {}
        node = self._file[path] if path else self._file
        return {k: "group" if isinstance(v, self._h5py.Group) else "array" for k, v in sorted(node.items())}

    def groups(self, path: str) -> list[str]:
        return [n for n, t in self.entries(path).items() if t == "group"]

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
        if dst in self._file:  # one writer at a time (the lock): checking first is enough
            raise NodeExistsError(f"{self.path}: {dst} already exists")
        self._file.move(src, dst)
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self, remove: bool = False) -> None:
        """``remove``: delete the file too, before the lock is let go (no writer can open it in between)."""
        try:
            self._file.close()
            if remove:
                self.path.unlink()
        finally:
            self._release_lock()
