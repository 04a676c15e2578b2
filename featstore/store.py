"""The feature store: one logical layout over two backends, a Zarr v3 directory or one HDF5 file.

The backends (``featstore/backends.py``) are the only code that imports zarr or h5py. The layout is
written down in ``docs/store-format.md``; bump ``SCHEMA_VERSION`` whenever it changes.

Crash safety: ``featstore/commit.py``.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from featstore import integrity
from featstore.backends import Backend, HDF5Backend, ZarrBackend, jsonable, open_beside_store
from featstore.commit import StagedCommits, Staging, owner_alive, owner_id
from featstore.errors import NodeExistsError, StoreError
from featstore.names import check_name
from featstore.records import ExpressionTable, LabelTable, SlideFeatures, now_iso
from featstore.store_tables import StoreTables
from featstore.validate import StoreChecks
from featstore.writer import SlideWriter

__all__ = ["SCHEMA_VERSION", "ExpressionTable", "LabelTable", "SlideFeatures", "SlideWriter", "Store",
           "StoreError", "check_name", "now_iso", "open", "open_beside_store", "writing"]

SCHEMA_VERSION = 1
ZARR_SUFFIXES = (".zarr",)
HDF5_SUFFIXES = (".h5", ".hdf5")


class Store(StagedCommits, StoreTables, StoreChecks):
    """A feature store; open with :func:`featstore.open`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        suffix = self.path.suffix.lower()
        if suffix not in ZARR_SUFFIXES + HDF5_SUFFIXES:
            raise StoreError(
                f"store path {self.path} must end in .zarr (Zarr v3 directory) or .h5/.hdf5 (HDF5 file)"
            )
        self.backend_name = "zarr" if suffix in ZARR_SUFFIXES else "hdf5"
        backend_cls = ZarrBackend if self.backend_name == "zarr" else HDF5Backend
        # Whether this open made the store: only then may a failing run remove it again (``writing``).
        self.created = False
        if not self.path.exists():
            if mode == "r":
                raise StoreError(f"no store at {self.path}")
            # Made whole aside and moved into place in one step, so a store without our root attribute
            # is never ours, and of two runs creating one store at once exactly one creates it.
            self.created = backend_cls.create(self.path, {"featstore": {"schema_version": SCHEMA_VERSION,
                                                                        "created": now_iso()}})
        if self.backend_name == "zarr" and not (self.path / "zarr.json").exists():
            raise StoreError(f"{self.path} exists but is not a Zarr v3 store (no zarr.json); refusing to "
                             f"{'read' if mode == 'r' else 'write into'} it")
        self._backend: Backend = backend_cls(self.path, mode)
        root = self._backend.attrs("")
        if "featstore" not in root:
            self._backend.close()
            raise StoreError(f"{self.path} is a {self.backend_name} file but not a featstore store"
                             + ("" if mode == "r" else "; refusing to write into it"))
        version = root["featstore"].get("schema_version")
        if version != SCHEMA_VERSION:
            self._backend.close()
            raise StoreError(f"{self.path} has schema version {version}; this featstore reads version {SCHEMA_VERSION}")
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

    @property
    def single_writer(self) -> bool:
        """One writing process at a time (HDF5): no concurrent or distributed writers."""
        return self._backend.single_writer

    def holds_nothing(self) -> bool:
        """No feature set, table, view or staging entry: nobody's data, not even a run's under way."""
        return not any(self._backend.entries(top) for top in self._backend.entries(""))

    def discard_if_empty(self) -> bool:
        """Close the store and remove it if it holds nothing (for a run that created it and then failed);
        anything in it, whoever wrote it, keeps it. True if it was removed."""
        if self.single_writer:  # we hold its lock: nobody writes between the check and the removal
            empty = self.holds_nothing()
            self._backend.close(remove=empty)
            return empty
        self.close()
        # Moved out of the way first, so no other run can write into it between the check and the removal.
        tomb = self.path.with_name(f".{self.path.name}.{owner_id()}.removing.zarr")
        try:
            os.rename(self.path, tomb)
        except OSError:
            return False
        with Store(tomb, "r") as look:
            empty = look.holds_nothing()
        if empty:
            shutil.rmtree(tomb, ignore_errors=True)
            return True
        try:
            os.rename(tomb, self.path)
        except OSError:
            warnings.warn(f"{self.path} was written into while it was being removed; it is kept at {tomb}",
                          stacklevel=2)
        return False

    def _require_writable(self) -> None:
        if not self._backend.writable:
            raise StoreError(f"store {self.path} is open read-only; open it with mode='a' to write")

    # ---- names ----------------------------------------------------------------------------------
    def _children(self, parent: str, asides: dict[str, str]) -> tuple[list[str], list[str]]:
        """The objects under ``parent`` (those moved aside by a replacement, in ``asides``, included) and the
        folders there that lost their zarr.json: what every listing, and validate, reads the store as."""
        entries = self._backend.entries(parent)
        names = {n for n, t in entries.items() if t == "group"}
        names |= {final.rsplit("/", 1)[1] for final in asides if final.rsplit("/", 1)[0] == parent}
        return sorted(names), [n for n, t in entries.items() if t is None]

    def _names(self, parent: str, what: str) -> list[str]:
        """The objects committed under ``parent``. A folder that lost its zarr.json is an error naming it:
        skipping it would hide data without a word."""
        names, lost = self._children(parent, self.asides())
        if lost:
            raise StoreError(f"{self.path}: {what} {lost[0]!r} has lost its metadata (zarr.json is missing); "
                             "featstore validate lists the damage")
        return names

    def _attrs(self, final: str) -> dict:
        return self._backend.attrs(self._locate(final) or final)

    def feature_sets(self) -> list[str]:
        return self._names("features", "feature set")

    def tables(self, kind: str | None = None) -> list[str]:
        names = self._names("tables", "table")
        if kind is None:
            return names
        return [n for n in names if self._attrs(f"tables/{n}").get("kind") == kind]

    def resolve(self, kind: str, name: str | None) -> str:
        """The one feature set / expression / labels table when ``name`` is None, else check it exists."""
        if name is not None:
            path = f"features/{name}" if kind == "features" else f"tables/{name}"
            # Checked without listing the store: this runs once per slide read.
            if self._locate(path) and (kind == "features" or self._attrs(path).get("kind") == kind):
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
        """Create a feature set, or check that an existing one was made with the same config. Made whole in
        staging and moved into place in one step: a run beside this one sees it with its config, or not at all."""
        check_name(name, "feature set name")
        self._require_writable()
        path = f"features/{name}"
        if not self._locate(path):
            stage = self._new_staging()
            try:
                self._backend.require_group(f"{stage}/slides")
                self._backend.require_group(f"{stage}/failed")
                self._backend.set_attrs(stage, {"kind": "feature_set", "config": dict(config), "config_hash": config_hash,
                                                "created": now_iso()})
                self._swap_in(stage, path, replace=False, steps="feature set ")
                return
            except NodeExistsError:  # another run made it first: checked like any existing one
                self._backend.delete(stage)
            except BaseException:
                self._backend.delete(stage)
                raise
        existing = self._attrs(path)
        if existing.get("config_hash") != config_hash:
            old, new = existing.get("config", {}), jsonable(dict(config))
            diff = {k: (old.get(k), new.get(k)) for k in set(old) | set(new) if old.get(k) != new.get(k)}
            raise StoreError(
                f"feature set {name!r} in {self.path} was made with another config "
                f"(differs in {diff}); pass another --name, or --overwrite to replace it"
            )

    def delete_feature_set(self, name: str) -> None:
        self._require_writable()
        self._backend.delete(f"features/{name}")
        self._backend.flush()

    def mark_import(self, name: str, pending: list[str]) -> None:
        """Record the slides an import is about to commit (``[]`` once all are in): an import killed part way
        leaves a feature set that must not pass for complete (``validate`` and the trainer name it)."""
        self._require_writable()
        self._backend.set_attrs(f"features/{name}", {"import_pending": list(pending), "import_owner": owner_id()})
        self._backend.flush()

    def interrupted_import(self, name: str, running_too: bool = True) -> str | None:
        """Why a feature set is an unfinished import, or None. An import still running is unfinished too (the
        trainer refuses it) but not interrupted (``running_too=False``: validate does not call it damage)."""
        info = self.feature_set_info(name)
        pending = info.get("import_pending") or []
        if not pending:
            return None
        have = set(self.slides(name))
        done = sum(s in have for s in pending)
        if owner_alive(info.get("import_owner", "")):
            return (f"feature set {name}: an import of {len(pending)} slides is under way ({done} done); wait for it "
                    "to finish") if running_too else None
        return (f"feature set {name}: an import of {len(pending)} slides was interrupted after {done}; rerun the same "
                "`featstore import-features` command to finish it")

    def feature_set_info(self, name: str) -> dict:
        return self._attrs(f"features/{self.resolve('features', name)}")

    def slides(self, feature_set: str | None = None) -> list[str]:
        name = self.resolve("features", feature_set)
        return self._names(f"features/{name}/slides", f"feature set {name}: slide")

    def failures(self, feature_set: str | None = None) -> dict[str, dict]:
        name = self.resolve("features", feature_set)
        return {s: self._attrs(f"features/{name}/failed/{s}")
                for s in self._names(f"features/{name}/failed", f"feature set {name}: failure record")}

    def slide_attrs(self, feature_set: str | None, slide_id: str) -> dict:
        name = self.resolve("features", feature_set)
        path = self._locate(f"features/{name}/slides/{slide_id}")
        if path is None:
            raise StoreError(f"feature set {name!r} has no committed slide {slide_id!r}")
        return self._backend.attrs(path)

    def _read(self, node: str, array: str, where: str, rows: slice | None = None) -> np.ndarray:
        """An array of a committed node (read where it is: in place, or aside while it is being replaced),
        checked against the digest recorded at commit when read whole: a lost or garbled chunk is an error
        naming what it belongs to, never zeros."""
        node = self._locate(node) or node
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
        return SlideWriter(Staging(self, f"features/{feature_set}/slides/{slide_id}"), n, dim, dtype)

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
                            {"reason": reason, **info}, replace=True)

    def delete_slide(self, feature_set: str, slide_id: str) -> None:
        self._require_writable()
        self._backend.delete(f"features/{feature_set}/slides/{slide_id}")
        self._backend.delete(f"features/{feature_set}/failed/{slide_id}")
        self._backend.flush()

    # ---- derived views --------------------------------------------------------------------------
    def views(self) -> list[str]:
        return self._names("views", "view")

    def write_view(self, key: str, arrays: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> None:
        self._commit_arrays(f"views/{check_name(key, 'view key')}", arrays, {"kind": "view", **attrs})

    def read_view(self, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
        path = self._locate(f"views/{key}")
        if path is None:
            return None
        return {a: self._read(path, a, f"view {key}") for a in self._backend.arrays(path)}, self._backend.attrs(path)

    def summary(self) -> dict:
        """Counts for ``featstore ls``."""
        out: dict[str, Any] = {"path": str(self.path), "backend": self.backend_name, "feature_sets": {}, "tables": {}}
        for fs in self.feature_sets():
            info = self._attrs(f"features/{fs}")
            slides = self.slides(fs)
            out["feature_sets"][fs] = {
                "slides": len(slides),
                "failed": len(self.failures(fs)),
                "patches": sum(self._backend.shape(f"{self._locate(f'features/{fs}/slides/{s}')}/features")[0]
                               for s in slides),
                "dim": info.get("config", {}).get("dim"),
                "encoder": info.get("config", {}).get("encoder"),
            }
        for name in self.tables():
            attrs = self._attrs(f"tables/{name}")
            out["tables"][name] = {"kind": attrs.get("kind"), "shape": attrs.get("shape")}
        out["views"] = self.views()
        return out

    def iter_slides(self, feature_set: str | None = None) -> Iterator[tuple[str, SlideFeatures]]:
        name = self.resolve("features", feature_set)
        for sid in self.slides(name):
            yield sid, self.read_slide(name, sid)


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[Store]:
    """A store opened to write, created if absent. The one place that knows what a run created: when the
    block fails, a store this run created is removed again, but only while it holds nothing (neither
    this run's commits nor another run's); a store that existed before is never removed."""
    store = Store(path, "a")
    try:
        yield store
    except BaseException:
        if store.created:
            store.discard_if_empty()
        else:
            store.close()
        raise
    store.close()


def open(path: str | os.PathLike, mode: str = "r") -> Store:  # noqa: A001 - mirrors zarr.open / h5py.File
    """Open a feature store: ``*.zarr`` (Zarr v3, the default) or ``*.h5``/``*.hdf5`` (HDF5).

    ``mode``: ``"r"`` read-only, ``"a"`` read/write (created if absent). A path that holds anything other
    than a featstore store is refused, never written into.
    """
    return Store(Path(path), mode)
