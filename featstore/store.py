"""The feature store: one logical layout over two backends, a Zarr v3 directory or one HDF5 file.

This is the only module that imports zarr or h5py. The layout is written down in
``docs/store-format.md``; bump ``SCHEMA_VERSION`` whenever it changes.

Crash safety: every slide, failure record, table and view is written under ``_staging/<uuid>`` and
then moved to its final path in one step (a directory rename for Zarr, an HDF5 link move followed by
a flush). Readers only ever look at final paths, so a half-written object is invisible, and an
interrupted write leaves nothing but a staging entry that the next writer removes.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from featstore import integrity
from featstore.errors import AlreadyCommittedError, StoreError, StoreLockedError

SCHEMA_VERSION = 1
ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")
_STAGING = "_staging"
_ASIDE = "__replaces__"  # a staging entry holding an object moved aside while its replacement goes in
_TARGET_CHUNK_BYTES = 4 << 20


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


MAX_NAME = 200
_RESERVED = {"zarr.json"}  # the metadata document of every Zarr v3 node


def check_name(name: str, what: str) -> str:
    """Names become path components in both backends; reject those that would not round-trip or would
    collide with the layout's own names (checked when slides are planned, so a bad name fails before
    any compute)."""
    if not isinstance(name, str) or not name or name.strip() != name:
        raise ValueError(f"{what} {name!r} must be a non-empty string without surrounding spaces")
    if "/" in name or "\\" in name or name.startswith((".", "_")):
        raise ValueError(f"{what} {name!r} may not contain '/' or start with '.' or '_'")
    if len(name) > MAX_NAME:
        raise ValueError(f"{what} {name[:40]!r}... is {len(name)} characters long; at most {MAX_NAME}")
    if name in _RESERVED or not name.isprintable():
        raise ValueError(f"{what} {name!r} is reserved by the store layout or holds unprintable characters")
    return name


def _fault_point(step: str) -> None:
    """A SIGKILL at ``step`` when the test environment asks for it (tests/test_integrity.py); a no-op otherwise."""
    if os.environ.get("FEATSTORE_TEST_KILL_AT") == step:
        os.kill(os.getpid(), 9)


def open_beside_store(path: Path, flags: int) -> int:
    """Open (creating) a file kept beside a store, the lock or the event log, refusing a symlink: a planted
    link would make us truncate or append to whatever it points at."""
    try:
        return os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise StoreError(f"{path} is a symbolic link; refusing to write through it (remove it)") from exc
        raise


def _row_chunks(n_rows: int, row_bytes: int) -> int:
    return int(max(1, min(n_rows, max(256, _TARGET_CHUNK_BYTES // max(row_bytes, 1)))))


# --------------------------------------------------------------------------------------------------
# Backends: a handful of primitives over paths like "features/resnet50/slides/S1".


class _ZarrBackend:
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
        self._node(path).attrs.update(_jsonable(attrs))

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


class _HDF5Backend:
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
        for k, v in _jsonable(attrs).items():
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


def _jsonable(obj: Any) -> Any:
    """Attributes are JSON in both backends; numpy scalars and paths are converted on the way in."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------------
# Records that travel in and out of the store.


@dataclass
class ExpressionTable:
    """Samples x genes expression with the ids needed to join it to slides and labels."""

    values: np.ndarray  # (samples, genes) float32
    sample_ids: list[str]
    gene_ids: list[str]
    patient_ids: list[str]
    sample_types: list[str]  # two-digit TCGA code, or "" where unknown
    provenance: dict = field(default_factory=dict)


@dataclass
class LabelTable:
    """One label per patient, as read (``raw_labels``) and after the label map (``labels``)."""

    patient_ids: list[str]
    labels: list[str]
    raw_labels: list[str]
    provenance: dict = field(default_factory=dict)


@dataclass
class SlideFeatures:
    features: np.ndarray
    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict


class SlideWriter:
    """Streams one slide's rows into staging, chunk by chunk, in any order, and commits it in one step.

    Rows arrive in batches of any size, in order or not (reader workers share a big slide's row ranges
    between them). Each chunk is assembled in memory and written once, when its last row arrives, so
    memory stays bounded by the partly filled chunks (about one per reader working on the slide) however
    large the slide. Coordinates and tissue fractions (20 bytes a row) are kept until the commit and
    written once: each is a single chunk, which would otherwise be rewritten at every flush.
    """

    def __init__(self, store: Store, final_path: str, n: int, dim: int, dtype: str):
        self._store, self._final = store, final_path
        be = store._backend
        # The commit this writer may replace (a redo of a changed slide); any other commit that appears at
        # the final path meanwhile is a concurrent run's, and is kept.
        self._replaces = be.attrs(final_path).get("commit_id") if be.has(final_path) else None
        self._stage = store._new_staging()
        self._rows = _row_chunks(n, dim * np.dtype(dtype).itemsize)
        self._features = be.create_array(f"{self._stage}/features", (n, dim), dtype, (self._rows, dim))
        self._small = {
            "coords": be.create_array(f"{self._stage}/coords", (n, 2), "int64", (max(n, 1), 2)),
            "tissue_fraction": be.create_array(f"{self._stage}/tissue_fraction", (n,), "float32", (max(n, 1),)),
        }
        self._coords = np.zeros((n, 2), np.int64)
        self._tissue = np.zeros(n, np.float32)
        self._received = np.zeros(n, bool)
        self._chunks: dict[int, list] = {}  # chunk index -> [rows so far, number of rows filled]
        self._hashes: dict[int, str] = {}  # chunk index -> digest of the rows written
        self._dim, self._dtype = dim, np.dtype(dtype)
        self._next = 0
        self.n = n

    def write(self, features: np.ndarray, coords: np.ndarray, tissue_fraction: np.ndarray,
              start: int | None = None) -> None:
        """Rows ``start`` to ``start + len(features)`` (default: right after the previous write)."""
        features = np.asarray(features)
        start = self._next if start is None else int(start)
        end = start + len(features)
        if start < 0 or end > self.n:
            raise ValueError(f"slide writer got rows {start}:{end}, but the slide has {self.n} rows")
        # Finite after the cast to the stored dtype: 1e5 is finite as float32 and inf as float16.
        with np.errstate(over="ignore", invalid="ignore"):
            features = features.astype(self._dtype, copy=False)
        if not np.isfinite(features).all():
            r, c = (int(v) for v in np.argwhere(~np.isfinite(features))[0])
            raise ValueError(f"{self._final}: feature row {start + r}, column {c} is not finite as {self._dtype} "
                             f"(NaN, Inf, or beyond its range of about ±{float(np.finfo(self._dtype).max):.0f})")
        if self._received[start:end].any():
            raise ValueError(f"slide writer got rows {start}:{end}, some of them twice")
        self._received[start:end] = True
        self._coords[start:end] = coords
        self._tissue[start:end] = tissue_fraction
        self._next = end
        pos = start
        while pos < end:
            c = pos // self._rows
            c0, c1 = c * self._rows, min((c + 1) * self._rows, self.n)
            take = min(end, c1) - pos
            chunk = self._chunks.setdefault(c, [np.empty((c1 - c0, self._dim), self._dtype), 0])
            chunk[0][pos - c0:pos - c0 + take] = features[pos - start:pos - start + take]
            chunk[1] += take
            if chunk[1] == c1 - c0:
                self._features[c0:c1] = chunk[0]
                self._hashes[c] = integrity.piece_hash(chunk[0])
                del self._chunks[c]
            pos += take

    def commit(self, attrs: Mapping[str, Any]) -> None:
        got = int(self._received.sum())
        if got != self.n:
            raise ValueError(f"slide writer got {got} rows, expected {self.n}")
        if self.n:
            self._small["coords"][:] = self._coords
            self._small["tissue_fraction"][:] = self._tissue
        digests = {
            "features": {"shape": [self.n, self._dim], "dtype": str(self._dtype), "chunk_rows": self._rows,
                         "sha256": integrity.combine([self._hashes[c] for c in range(len(self._hashes))])},
            "coords": integrity.record(self._coords), "tissue_fraction": integrity.record(self._tissue),
        }
        be = self._store._backend
        be.set_attrs(self._stage, {**attrs, "n_patches": self.n, "committed": now_iso(), "digests": digests,
                                   "commit_id": uuid.uuid4().hex})
        current = be.attrs(self._final).get("commit_id") if be.has(self._final) else None
        if current is not None and current != self._replaces:
            self.abort()
            raise AlreadyCommittedError(f"{self._final}: already committed by another run")
        try:
            self._store._swap_in(self._stage, self._final)
        except OSError as exc:  # the other run's commit landed between our check and our move
            self.abort()
            if be.has(self._final):
                raise AlreadyCommittedError(f"{self._final}: already committed by another run") from exc
            raise
        # A success supersedes an earlier failure record of the same slide.
        be.delete(self._final.replace("/slides/", "/failed/"))
        be.flush()

    def abort(self) -> None:
        self._store._backend.delete(self._stage)


class Store:
    """A feature store; open with :func:`featstore.open`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode must be 'r', 'a' or 'w', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        suffix = self.path.suffix.lower()
        if suffix not in ZARR_SUFFIXES + HDF5_SUFFIXES:
            raise StoreError(
                f"store path {self.path} must end in .zarr (Zarr v3 directory) or .h5/.hdf5 (HDF5 file)"
            )
        self.backend_name = "zarr" if suffix in ZARR_SUFFIXES else "hdf5"
        exists = self.path.exists()
        if mode == "r" and not exists:
            raise StoreError(f"no store at {self.path}")
        if self.backend_name == "zarr" and exists and not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path} exists but is not a Zarr v3 store (no zarr.json)")
        backend_cls = _ZarrBackend if self.backend_name == "zarr" else _HDF5Backend
        self._backend = backend_cls(self.path, mode)
        root = self._backend.attrs("")
        if "featstore" not in root:
            if mode == "r":
                raise StoreError(f"{self.path} is a {self.backend_name} file but not a featstore store")
            if exists and mode == "a" and (self._backend.groups("") or root):
                raise StoreError(f"{self.path} holds data that is not a featstore store; refusing to write")
            self._backend.set_attrs("", {"featstore": {"schema_version": SCHEMA_VERSION, "created": now_iso()}})
        else:
            version = root["featstore"].get("schema_version")
            if version != SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema version {version}; this featstore reads version {SCHEMA_VERSION}"
                )
        if self._backend.writable:
            # Every writer tidies up after dead ones (and finishes their interrupted replacements).
            self.cleanup_staging()

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, backend={self.backend_name}, mode={self.mode!r})"

    def _require_writable(self) -> None:
        if not self._backend.writable:
            raise StoreError(f"store {self.path} is open read-only; open it with mode='a' to write")

    def _new_staging(self) -> str:
        self._require_writable()
        # Host and pid in the name let cleanup tell a dead writer's leftovers from a live one's work.
        path = f"{_STAGING}/{os.getpid()}_{socket.gethostname()}_{uuid.uuid4().hex}"
        self._backend.require_group(path)
        return path

    def cleanup_staging(self) -> int:
        """Remove staging entries of writers that no longer run; returns how many were removed. An object a
        dead writer had moved aside to replace, and whose replacement never arrived, is put back."""
        self._require_writable()
        removed = 0
        host = socket.gethostname()
        for entry in self._backend.groups(_STAGING):
            owner, _, replaced = entry.partition(_ASIDE)
            pid, _, rest = owner.partition("_")
            same_host = rest.rsplit("_", 1)[0] == host
            # HDF5 takes one writer at a time (we hold its lock): every entry there is a dead writer's.
            if self.backend_name != "hdf5" and (not same_host or not pid.isdigit() or _pid_alive(int(pid))):
                continue
            target = unquote(replaced) if replaced else None
            if target and not self._backend.has(target):
                self._backend.move(f"{_STAGING}/{entry}", target)
            else:
                self._backend.delete(f"{_STAGING}/{entry}")
            removed += 1
        return removed

    def _swap_in(self, stage: str, final: str) -> None:
        """Replace ``final`` by the complete ``stage``: the old object is moved aside first, into a staging
        entry that names it, so a kill at any moment leaves the old or the new in place, or the old aside
        where the next writer puts it back (cleanup_staging); never neither."""
        be = self._backend
        if not be.has(final):
            be.move(stage, final)
            return
        aside = f"{stage}{_ASIDE}{quote(final, safe='')}"
        be.move(final, aside)
        be.flush()
        _fault_point("aside")
        be.move(stage, final)
        be.flush()
        _fault_point("swapped")
        be.delete(aside)
        be.flush()

    def _commit_arrays(self, final: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        stage = self._new_staging()
        digests = {}
        try:
            for name, data in arrays.items():
                data = np.asarray(data)
                digests[name] = integrity.record(data)
                if data.dtype.kind in "UOT":
                    arr = self._backend.create_array(f"{stage}/{name}", data.shape, str, data.shape)
                    if data.size:
                        arr[...] = data.astype(str)
                    continue
                if data.ndim == 2:
                    chunks = (
                        min(data.shape[0], 1024) or 1,
                        min(data.shape[1], _row_chunks(data.shape[1], 4 * 1024)) or 1,
                    )
                elif data.ndim >= 1:
                    chunks = (_row_chunks(data.shape[0], int(np.prod(data.shape[1:])) * data.itemsize) or 1,
                              *data.shape[1:])
                else:
                    chunks = ()
                arr = self._backend.create_array(f"{stage}/{name}", data.shape, data.dtype, chunks)
                if data.size:
                    arr[...] = data
            self._backend.set_attrs(stage, {**attrs, "committed": now_iso(), "digests": digests})
            self._swap_in(stage, final)
        except BaseException:
            self._backend.delete(stage)
            raise

    # ---- names ----------------------------------------------------------------------------------
    def feature_sets(self) -> list[str]:
        return self._backend.groups("features")

    def tables(self, kind: str | None = None) -> list[str]:
        names = self._backend.groups("tables")
        if kind is None:
            return names
        return [n for n in names if self._backend.attrs(f"tables/{n}").get("kind") == kind]

    def resolve(self, kind: str, name: str | None) -> str:
        """The one feature set / expression / labels table when ``name`` is None, else check it exists."""
        if name is not None:
            path = f"features/{name}" if kind == "features" else f"tables/{name}"
            # Checked without listing the store: this runs once per slide read.
            if self._backend.has(path) and (kind == "features" or self._backend.attrs(path).get("kind") == kind):
                return name
        available = self.feature_sets() if kind == "features" else self.tables(kind)
        if name is not None:
            raise StoreError(f"store {self.path} has no {kind} named {name!r}; it has: {', '.join(available) or 'none'}")
        if len(available) == 1:
            return available[0]
        if not available:
            raise StoreError(f"store {self.path} holds no {kind}")
        raise StoreError(
            f"store {self.path} holds several {kind} ({', '.join(available)}); say which with --name"
        )

    # ---- feature sets ---------------------------------------------------------------------------
    def create_feature_set(self, name: str, config: Mapping[str, Any], config_hash: str) -> None:
        """Create a feature set, or check that an existing one was made with the same config."""
        check_name(name, "feature set name")
        self._require_writable()
        path = f"features/{name}"
        if self._backend.has(path):
            existing = self._backend.attrs(path)
            if existing.get("config_hash") != config_hash:
                old, new = existing.get("config", {}), _jsonable(dict(config))
                diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
                raise StoreError(
                    f"feature set {name!r} in {self.path} was made with another config "
                    f"(differs in {diff}); pass another --name, or --overwrite to replace it"
                )
            return
        self._backend.require_group(path)
        self._backend.require_group(f"{path}/slides")
        self._backend.require_group(f"{path}/failed")
        self._backend.set_attrs(path, {"kind": "feature_set", "config": dict(config), "config_hash": config_hash,
                                       "created": now_iso()})
        self._backend.flush()

    def delete_feature_set(self, name: str) -> None:
        self._require_writable()
        self._backend.delete(f"features/{name}")
        self._backend.flush()

    def feature_set_info(self, name: str) -> dict:
        return self._backend.attrs(f"features/{self.resolve('features', name)}")

    def slides(self, feature_set: str | None = None) -> list[str]:
        name = self.resolve("features", feature_set)
        return self._backend.groups(f"features/{name}/slides")

    def failures(self, feature_set: str | None = None) -> dict[str, dict]:
        name = self.resolve("features", feature_set)
        return {s: self._backend.attrs(f"features/{name}/failed/{s}")
                for s in self._backend.groups(f"features/{name}/failed")}

    def slide_attrs(self, feature_set: str | None, slide_id: str) -> dict:
        name = self.resolve("features", feature_set)
        path = f"features/{name}/slides/{slide_id}"
        if not self._backend.has(path):
            raise StoreError(f"feature set {name!r} has no committed slide {slide_id!r}")
        return self._backend.attrs(path)

    def _read(self, node: str, array: str, where: str, rows: slice | None = None) -> np.ndarray:
        """An array of a committed node, checked against the digest recorded at commit when read whole:
        a lost or garbled chunk is an error naming what it belongs to, never zeros."""
        try:
            data = self._backend.read(f"{node}/{array}", rows)
        except Exception as exc:  # a decoder's error on a garbled chunk, whatever library raised it
            raise StoreError(f"{self.path}: {where}, array {array!r} cannot be read ({type(exc).__name__}: {exc}); "
                             "the store is damaged: featstore validate lists what") from exc
        rec = self._backend.attrs(node).get("digests", {}).get(array)
        if rows is None and rec is not None and (problem := integrity.mismatch(data, rec)):
            raise StoreError(f"{self.path}: {where}, array {array!r}: {problem}; featstore validate lists the damage")
        return data

    def read_slide(self, feature_set: str | None, slide_id: str, rows: slice | None = None) -> SlideFeatures:
        name = self.resolve("features", feature_set)
        attrs = self.slide_attrs(name, slide_id)
        base, where = f"features/{name}/slides/{slide_id}", f"feature set {name}, slide {slide_id}"
        return SlideFeatures(
            features=self._read(base, "features", where, rows),
            coords=self._read(base, "coords", where, rows),
            tissue_fraction=self._read(base, "tissue_fraction", where, rows),
            attrs=attrs,
        )

    def begin_slide(self, feature_set: str, slide_id: str, n: int, dim: int, dtype: str = "float16") -> SlideWriter:
        check_name(slide_id, "slide id")
        if not self._backend.has(f"features/{feature_set}"):
            raise StoreError(f"create feature set {feature_set!r} before writing slides into it")
        return SlideWriter(self, f"features/{feature_set}/slides/{slide_id}", n, dim, dtype)

    def write_slide(self, feature_set: str, slide_id: str, features: np.ndarray, coords: np.ndarray,
                    tissue_fraction: np.ndarray | None, attrs: Mapping[str, Any]) -> None:
        """Write one whole slide at once (import paths); extraction streams through begin_slide."""
        features, coords = np.asarray(features), np.asarray(coords)
        if features.ndim != 2 or coords.shape != (len(features), 2):
            raise ValueError(
                f"slide {slide_id!r}: features must be N x D and coords N x 2, got {features.shape} and {coords.shape}"
            )
        tf = np.full(len(features), np.nan, np.float32) if tissue_fraction is None else tissue_fraction
        writer = self.begin_slide(feature_set, slide_id, len(features), features.shape[1], str(features.dtype))
        try:
            writer.write(features, coords.astype(np.int64), np.asarray(tf, np.float32))
            writer.commit(attrs)
        except BaseException:
            writer.abort()
            raise

    def record_failure(self, feature_set: str, slide_id: str, reason: str, **info: Any) -> None:
        self._commit_arrays(f"features/{feature_set}/failed/{check_name(slide_id, 'slide id')}", {},
                            {"reason": reason, **info})

    def delete_slide(self, feature_set: str, slide_id: str) -> None:
        self._require_writable()
        self._backend.delete(f"features/{feature_set}/slides/{slide_id}")
        self._backend.delete(f"features/{feature_set}/failed/{slide_id}")
        self._backend.flush()

    # ---- tables ---------------------------------------------------------------------------------
    def _check_table_name(self, name: str, kind: str, overwrite: bool) -> str:
        check_name(name, "table name")
        path = f"tables/{name}"
        if self._backend.has(path):
            if not overwrite:
                raise StoreError(f"store {self.path} already has a table {name!r}; pass --overwrite to replace it")
            if self._backend.attrs(path).get("kind") != kind:
                raise StoreError(f"table {name!r} in {self.path} is not a {kind} table; refusing to replace it")
        return path

    def write_expression(self, name: str, table: ExpressionTable, overwrite: bool = False) -> None:
        path = self._check_table_name(name, "expression", overwrite)
        with np.errstate(over="ignore", invalid="ignore"):
            values = np.asarray(table.values, dtype=np.float32)
        n, g = values.shape
        if not np.isfinite(values).all():
            r, c = (int(v) for v in np.argwhere(~np.isfinite(values))[0])
            raise ValueError(f"expression {name!r}: value at sample {table.sample_ids[r]!r}, gene {table.gene_ids[c]!r} is "
                             f"{float(np.asarray(table.values)[r, c])!r}, not finite as float32 (beyond about ±3.4e38, NaN or Inf)")
        for what, ids, expected in (("sample_ids", table.sample_ids, n), ("patient_ids", table.patient_ids, n),
                                    ("sample_types", table.sample_types, n), ("gene_ids", table.gene_ids, g)):
            if len(ids) != expected:
                raise ValueError(f"expression {name!r}: {what} has {len(ids)} entries, values imply {expected}")
        self._commit_arrays(path, {
            "values": values,
            "sample_ids": np.asarray(table.sample_ids, dtype=str),
            "gene_ids": np.asarray(table.gene_ids, dtype=str),
            "patient_ids": np.asarray(table.patient_ids, dtype=str),
            "sample_types": np.asarray(table.sample_types, dtype=str),
        }, {"kind": "expression", "provenance": table.provenance, "shape": [n, g]})

    def read_expression(self, name: str | None = None) -> ExpressionTable:
        name = self.resolve("expression", name)
        base = f"tables/{name}"

        def read(array: str) -> np.ndarray:
            return self._read(base, array, f"table {name}")
        return ExpressionTable(
            values=read("values"),
            sample_ids=read("sample_ids").tolist(),
            gene_ids=read("gene_ids").tolist(),
            patient_ids=read("patient_ids").tolist(),
            sample_types=read("sample_types").tolist(),
            provenance=self._backend.attrs(base).get("provenance", {}),
        )

    def write_labels(self, name: str, table: LabelTable, overwrite: bool = False) -> None:
        path = self._check_table_name(name, "labels", overwrite)
        if not len(table.patient_ids) == len(table.labels) == len(table.raw_labels):
            raise ValueError(f"labels {name!r}: patient_ids, labels and raw_labels differ in length")
        self._commit_arrays(path, {
            "patient_ids": np.asarray(table.patient_ids, dtype=str),
            "labels": np.asarray(table.labels, dtype=str),
            "raw_labels": np.asarray(table.raw_labels, dtype=str),
        }, {"kind": "labels", "provenance": table.provenance, "shape": [len(table.patient_ids)]})

    def read_labels(self, name: str | None = None) -> LabelTable:
        name = self.resolve("labels", name)
        base = f"tables/{name}"

        def read(array: str) -> np.ndarray:
            return self._read(base, array, f"table {name}")
        return LabelTable(
            patient_ids=read("patient_ids").tolist(),
            labels=read("labels").tolist(),
            raw_labels=read("raw_labels").tolist(),
            provenance=self._backend.attrs(base).get("provenance", {}),
        )

    def table_info(self, name: str) -> dict:
        if name not in self.tables():
            raise StoreError(f"store {self.path} has no table {name!r}")
        return self._backend.attrs(f"tables/{name}")

    # ---- derived views --------------------------------------------------------------------------
    def views(self) -> list[str]:
        return self._backend.groups("views")

    def write_view(self, key: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        self._commit_arrays(f"views/{check_name(key, 'view key')}", arrays, {"kind": "view", **attrs})

    def read_view(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        path = f"views/{key}"
        if not self._backend.has(path):
            return None
        return {a: self._read(path, a, f"view {key}") for a in self._backend.arrays(path)}, self._backend.attrs(path)

    # ---- checks ---------------------------------------------------------------------------------
    def validate(self, deep: bool = False) -> list[str]:
        """Check every committed object; return the list of problems, one line each naming the slide or table
        and the array (empty when the store is sound). Every chunk must be on disk (Zarr); ``deep`` also
        re-hashes every array against the digest recorded at commit."""
        problems: list[str] = []
        be = self._backend
        for node, where in self._committed_nodes(problems):
            problems += self._check_integrity(node, where, deep)
        for fs in self.feature_sets():
            info = be.attrs(f"features/{fs}")
            for key in ("config", "config_hash"):
                if key not in info:
                    problems.append(f"feature set {fs}: attribute {key!r} missing")
            dim = None
            for sid in self.slides(fs):
                base = f"features/{fs}/slides/{sid}"
                where = f"feature set {fs}, slide {sid}"
                try:
                    dim = self._check_slide(base, where, dim, problems)
                except Exception as exc:  # a decoder's error on a garbled chunk: a problem line, not a traceback
                    problems.append(f"{where}: cannot be read ({type(exc).__name__}: {exc})")
        for name in self.tables():
            base = f"tables/{name}"
            try:
                self._check_table(name, base, problems)
            except Exception as exc:
                problems.append(f"table {name}: cannot be read ({type(exc).__name__}: {exc})")
        return list(dict.fromkeys(problems))

    def _committed_nodes(self, problems: list[str]) -> Iterator[tuple[str, str]]:
        """Every committed slide, table and view; a Zarr slide folder that lost its zarr.json is a problem."""
        for fs in self.feature_sets():
            if self.backend_name == "zarr":
                folder = self.path / "features" / fs / "slides"
                listed = set(self.slides(fs))
                for d in sorted(folder.iterdir()) if folder.is_dir() else []:
                    if d.is_dir() and d.name not in listed:
                        problems.append(f"feature set {fs}, slide {d.name}: zarr.json missing, the slide's metadata "
                                        "is lost (delete the folder and extract the slide again)")
            for sid in self.slides(fs):
                yield f"features/{fs}/slides/{sid}", f"feature set {fs}, slide {sid}"
        for name in self.tables():
            yield f"tables/{name}", f"table {name}"
        for key in self.views():
            yield f"views/{key}", f"view {key}"

    def _check_integrity(self, node: str, where: str, deep: bool) -> list[str]:
        digests = self._backend.attrs(node).get("digests")
        if digests is None:
            return [f"{where}: no digests recorded at commit (written by an older featstore); rewrite it to check it"]
        out = []
        present = set(self._backend.arrays(node))
        for array in digests:
            if array not in present:
                out.append(f"{where}, array {array}: missing")
                continue
            if self.backend_name == "zarr":
                lost = integrity.missing_zarr_chunks(self.path / node / array)
                if lost:
                    out.append(f"{where}, array {array}: {len(lost)} chunk file(s) missing ({', '.join(lost[:3])})")
                    continue
            if deep:
                try:
                    self._read(node, array, where)
                except StoreError as exc:
                    out.append(f"{where}, array {array}: " + str(exc).split(f"array {array!r}", 1)[-1].lstrip(": "))
        return out

    def _check_slide(self, base: str, where: str, dim: int | None, problems: list[str]) -> int | None:
        be = self._backend
        present = set(be.arrays(base))
        missing = {"features", "coords", "tissue_fraction"} - present
        if missing:
            problems.append(f"{where}: arrays missing: {sorted(missing)}")
            return dim
        attrs = be.attrs(base)
        for key in ("patient_id", "provenance", "n_patches"):
            if key not in attrs:
                problems.append(f"{where}: attribute {key!r} missing")
        n, d = be.shape(f"{base}/features")
        if dim is not None and d != dim:
            problems.append(f"{where}: feature dimension {d} differs from other slides ({dim})")
        dim = d
        if be.shape(f"{base}/coords") != (n, 2):
            problems.append(f"{where}: coords shape {be.shape(f'{base}/coords')} != ({n}, 2)")
        if be.shape(f"{base}/tissue_fraction") != (n,):
            problems.append(f"{where}: tissue_fraction shape {be.shape(f'{base}/tissue_fraction')} != ({n},)")
        if attrs.get("n_patches") not in (None, n):
            problems.append(f"{where}: n_patches attribute {attrs.get('n_patches')} != {n} rows")
        for start in range(0, n, 65536):
            block = be.read(f"{base}/features", slice(start, start + 65536))
            if not np.isfinite(block).all():
                bad = start + int(np.argwhere(~np.isfinite(block))[0][0])
                problems.append(f"{where}: non-finite feature values (first at row {bad})")
                break
        if n and (be.read(f"{base}/coords") < 0).any():
            problems.append(f"{where}: negative coordinates")
        return dim

    def _check_table(self, name: str, base: str, problems: list[str]) -> None:
        be = self._backend
        attrs = be.attrs(base)
        kind = attrs.get("kind")
        if "provenance" not in attrs:
            problems.append(f"table {name}: attribute 'provenance' missing")
        if kind == "expression":
            s, g = be.shape(f"{base}/values")
            for ids, n in (("sample_ids", s), ("patient_ids", s), ("sample_types", s), ("gene_ids", g)):
                if be.shape(f"{base}/{ids}") != (n,):
                    problems.append(f"table {name}: {ids} has shape {be.shape(f'{base}/{ids}')}, expected ({n},)")
            if not np.isfinite(be.read(f"{base}/values")).all():
                problems.append(f"table {name}: non-finite expression values")
        elif kind == "labels":
            n = be.shape(f"{base}/patient_ids")
            for col in ("labels", "raw_labels"):
                if be.shape(f"{base}/{col}") != n:
                    problems.append(f"table {name}: {col} length differs from patient_ids")
        else:
            problems.append(f"table {name}: unknown kind {kind!r}")

    def summary(self) -> dict:
        """Counts for ``featstore ls``."""
        out: dict[str, Any] = {"path": str(self.path), "backend": self.backend_name, "feature_sets": {}, "tables": {}}
        for fs in self.feature_sets():
            info = self._backend.attrs(f"features/{fs}")
            slides = self.slides(fs)
            out["feature_sets"][fs] = {
                "slides": len(slides),
                "failed": len(self.failures(fs)),
                "patches": sum(self._backend.shape(f"features/{fs}/slides/{s}/features")[0] for s in slides),
                "dim": info.get("config", {}).get("dim"),
                "encoder": info.get("config", {}).get("encoder"),
            }
        for name in self.tables():
            attrs = self._backend.attrs(f"tables/{name}")
            out["tables"][name] = {"kind": attrs.get("kind"), "shape": attrs.get("shape")}
        out["views"] = self.views()
        return out

    def iter_slides(self, feature_set: str | None = None) -> Iterator[tuple[str, SlideFeatures]]:
        name = self.resolve("features", feature_set)
        for sid in self.slides(name):
            yield sid, self.read_slide(name, sid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_store(path: str | os.PathLike) -> None:
    """Delete a store (a Zarr directory or an HDF5 file)."""
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def open(path: str | os.PathLike, mode: str = "r") -> Store:  # noqa: A001 - mirrors zarr.open / h5py.File
    """Open a feature store: ``*.zarr`` (Zarr v3, the default) or ``*.h5``/``*.hdf5`` (HDF5).

    ``mode``: ``"r"`` read-only, ``"a"`` read/write (created if absent), ``"w"`` create, replacing any.
    """
    p = Path(path)
    if mode == "w":
        remove_store(p)
    return Store(p, "a" if mode == "w" else mode)
