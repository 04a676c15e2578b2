"""The feature store: one logical layout over two backends, a Zarr v3 directory or one HDF5 file.

The backends (``featstore/backends.py``) are the only code that imports zarr or h5py. The layout is
written down in ``docs/store-format.md``; bump ``SCHEMA_VERSION`` whenever it changes.

Crash safety: every slide, failure record, table and view is written under ``_staging/<uuid>`` and
then moved to its final path in one step (a directory rename for Zarr, an HDF5 link move followed by
a flush). Readers only ever look at final paths, so a half-written object is invisible, and an
interrupted write leaves nothing but a staging entry that the next writer removes.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import numpy as np

from featstore import integrity
from featstore.backends import Backend, HDF5Backend, ZarrBackend, jsonable, open_beside_store, row_chunks
from featstore.errors import StoreError
from featstore.records import ExpressionTable, LabelTable, SlideFeatures, now_iso
from featstore.validate import StoreChecks
from featstore.writer import SlideWriter

__all__ = ["SCHEMA_VERSION", "ExpressionTable", "LabelTable", "SlideFeatures", "SlideWriter", "Store",
           "StoreError", "check_name", "now_iso", "open", "open_beside_store", "remove_store"]

SCHEMA_VERSION = 1
ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")
_STAGING = "_staging"
_ASIDE = "__replaces__"  # a staging entry holding an object moved aside while its replacement goes in


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


class Store(StoreChecks):
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
        backend_cls = ZarrBackend if self.backend_name == "zarr" else HDF5Backend
        self._backend: Backend = backend_cls(self.path, mode)
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
        be.flush()  # the staged object is on disk before it can become visible
        _fault_point("staged")
        if not be.has(final):
            be.move(stage, final)
            _fault_point("committed")
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
        _fault_point("committed")

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
                        min(data.shape[1], row_chunks(data.shape[1], 4 * 1024)) or 1,
                    )
                elif data.ndim >= 1:
                    chunks = (row_chunks(data.shape[0], int(np.prod(data.shape[1:])) * data.itemsize) or 1,
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
                old, new = existing.get("config", {}), jsonable(dict(config))
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

    def mark_import(self, name: str, pending: list[str]) -> None:
        """Record the slides an import is about to commit (``[]`` once all are in): an import killed part way
        leaves a feature set that must not pass for complete (``validate`` and the trainer name it)."""
        self._require_writable()
        self._backend.set_attrs(f"features/{name}", {"import_pending": list(pending)})
        self._backend.flush()

    def interrupted_import(self, name: str) -> str | None:
        """Why a feature set is an interrupted import, or None."""
        pending = self.feature_set_info(name).get("import_pending") or []
        if not pending:
            return None
        have = set(self.slides(name))
        done = sum(s in have for s in pending)
        return (f"feature set {name}: an import of {len(pending)} slides was interrupted after {done}; rerun the same "
                "`featstore import-features` command to finish it")

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
