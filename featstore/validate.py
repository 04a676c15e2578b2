"""``Store.validate``: every committed object checked, one problem line each, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from featstore import integrity
from featstore.errors import StoreError


class StoreChecks:
    """The checks half of :class:`featstore.store.Store` (mixed in; it reads through the store's backend)."""

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
            if why := self.interrupted_import(fs):
                problems.append(why)
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
