"""``Store.validate``: every committed object checked, one problem line each, never a traceback."""

from __future__ import annotations

import numpy as np

from featstore.errors import StoreError


class StoreChecks:
    """The checks half of :class:`featstore.store.Store` (mixed in; it reads through the store's backend)."""

    def validate(self, deep: bool = False) -> list[str]:
        """Check every object the store holds; return the list of problems, one line each naming the slide or
        table and the array (empty when the store is sound). Every object on disk is listed, those that lost
        their metadata and those a dead writer left aside included; every chunk must be on disk (Zarr);
        ``deep`` also re-hashes every array against the digest recorded at commit."""
        problems: list[str] = []
        dims: dict[str, int | None] = {}
        for kind, node, where in self.inventory(problems):
            try:
                if kind != "feature set":
                    problems += self._check_integrity(node, where, deep)
                if kind == "feature set":
                    info = self._backend.attrs(node)
                    problems += [f"{where}: attribute {key!r} missing" for key in ("config", "config_hash") if key not in info]
                    if why := self.interrupted_import(where.removeprefix("feature set "), running_too=False):
                        problems.append(why)
                elif kind == "slide":
                    fs = node.split("/")[1]
                    dims[fs] = self._check_slide(node, where, dims.get(fs), problems)
                elif kind == "table":
                    self._check_table(where.removeprefix("table "), node, problems)
            except Exception as exc:  # a decoder's error on a garbled chunk: a problem line, not a traceback
                problems.append(f"{where}: cannot be read ({type(exc).__name__}: {exc})")
        return list(dict.fromkeys(problems))

    def inventory(self, problems: list[str]) -> list[tuple[str, str, str]]:
        """Every object the store holds, as (kind, where it is read from, the words that name it): feature sets,
        slides, failure records, tables and views, those moved aside by a replacement included. The one
        place that lists the store from disk; a folder without its zarr.json, and an object a dead writer
        left aside, are added to ``problems``."""
        be = self._backend
        asides = self.asides()
        live = {path.split("/")[1] for path in asides.values() if self._owner_alive(path.split("/")[1])}
        out: list[tuple[str, str, str]] = []

        def walk(parent: str, kind: str, words: str, descend=None) -> None:
            names, lost = self._children(parent, asides)
            for name in lost:
                problems.append(f"{words}{name}: zarr.json missing, its metadata is lost (every reader refuses "
                                f"it; remove the folder {parent}/{name} and write it again)")
            for name in names:
                final = f"{parent}/{name}"
                node = asides.get(final, final) if not be.has(final) else final
                if node != final and node.split("/")[1] not in live:
                    problems.append(f"{words}{name}: a replacement was interrupted and left the old object aside "
                                    f"({node}); readers still find it there, and the next command that writes to "
                                    "this store puts it back")
                out.append((kind, node, f"{words}{name}"))
            if descend:
                for name in sorted({*names, *lost}):  # lost ones too: what they hold is still checked
                    descend(name)

        for top, node_type in be.entries("").items():
            if node_type is None:
                problems.append(f"group {top}: zarr.json missing, its metadata is lost")

        def feature_set(fs: str) -> None:
            walk(f"features/{fs}/slides", "slide", f"feature set {fs}, slide ")
            walk(f"features/{fs}/failed", "failure record", f"feature set {fs}, failure record ")

        walk("features", "feature set", "feature set ", feature_set)
        walk("tables", "table", "table ")
        walk("views", "view", "view ")
        return out

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
            lost = self._backend.lost_chunks(f"{node}/{array}")
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
        elif kind == "survival":
            n = be.shape(f"{base}/patient_ids")
            for col in ("time", "event"):
                if be.shape(f"{base}/{col}") != n:
                    problems.append(f"table {name}: {col} length differs from patient_ids")
            time = be.read(f"{base}/time")
            if not (np.isfinite(time) & (time >= 0)).all():
                problems.append(f"table {name}: a follow-up time that is negative or not finite")
        else:
            problems.append(f"table {name}: unknown kind {kind!r}")
