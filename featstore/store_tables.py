"""Gene-expression and label tables of a store."""

from __future__ import annotations

import numpy as np

from featstore.errors import NodeExistsError, StoreError
from featstore.names import check_name
from featstore.records import ExpressionTable, LabelTable, SurvivalTable


class StoreTables:
    """The tables of :class:`featstore.store.Store` (a mixin: it uses the store's backend and commits)."""

    def _check_table_name(self, name: str, kind: str, overwrite: bool) -> None:
        check_name(name, "table name")
        path = f"tables/{name}"
        if self._locate(path):
            if not overwrite:
                raise StoreError(self._taken(name))
            if self._attrs(path).get("kind") != kind:
                raise StoreError(f"table {name!r} in {self.path} is not a {kind} table; refusing to replace it")

    def _taken(self, name: str) -> str:
        return f"store {self.path} already has a table {name!r}; pass --overwrite to replace it"

    def _commit_table(self, name: str, arrays: dict, attrs: dict, overwrite: bool) -> None:
        try:
            self._commit_arrays(f"tables/{name}", arrays, attrs, replace=overwrite)
        except NodeExistsError:  # another run committed one under this name since we checked
            raise StoreError(self._taken(name)) from None

    def write_expression(self, name: str, table: ExpressionTable, overwrite: bool = False) -> None:
        self._check_table_name(name, "expression", overwrite)
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
        self._commit_table(name, {
            "values": values,
            "sample_ids": np.asarray(table.sample_ids, dtype=str),
            "gene_ids": np.asarray(table.gene_ids, dtype=str),
            "patient_ids": np.asarray(table.patient_ids, dtype=str),
            "sample_types": np.asarray(table.sample_types, dtype=str),
        }, {"kind": "expression", "provenance": table.provenance, "shape": [n, g]}, overwrite)

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
            provenance=self._attrs(base).get("provenance", {}),
        )

    def write_labels(self, name: str, table: LabelTable, overwrite: bool = False) -> None:
        self._check_table_name(name, "labels", overwrite)
        if not len(table.patient_ids) == len(table.labels) == len(table.raw_labels):
            raise ValueError(f"labels {name!r}: patient_ids, labels and raw_labels differ in length")
        self._commit_table(name, {
            "patient_ids": np.asarray(table.patient_ids, dtype=str),
            "labels": np.asarray(table.labels, dtype=str),
            "raw_labels": np.asarray(table.raw_labels, dtype=str),
        }, {"kind": "labels", "provenance": table.provenance, "shape": [len(table.patient_ids)]}, overwrite)

    def read_labels(self, name: str | None = None) -> LabelTable:
        name = self.resolve("labels", name)
        base = f"tables/{name}"

        def read(array: str) -> np.ndarray:
            return self._read(base, array, f"table {name}")
        return LabelTable(
            patient_ids=read("patient_ids").tolist(),
            labels=read("labels").tolist(),
            raw_labels=read("raw_labels").tolist(),
            provenance=self._attrs(base).get("provenance", {}),
        )

    def write_survival(self, name: str, table: SurvivalTable, overwrite: bool = False) -> None:
        self._check_table_name(name, "survival", overwrite)
        n = len(table.patient_ids)
        if not len(table.time) == len(table.event) == n:
            raise ValueError(f"survival {name!r}: patient_ids, time and event differ in length")
        self._commit_table(name, {
            "patient_ids": np.asarray(table.patient_ids, dtype=str),
            "time": np.asarray(table.time, dtype=np.float64),
            "event": np.asarray(table.event, dtype=np.int8),
        }, {"kind": "survival", "provenance": table.provenance, "shape": [n]}, overwrite)

    def read_survival(self, name: str | None = None) -> SurvivalTable:
        name = self.resolve("survival", name)
        base = f"tables/{name}"

        def read(array: str) -> np.ndarray:
            return self._read(base, array, f"table {name}")
        return SurvivalTable(read("patient_ids").tolist(), read("time").astype(np.float64),
                             read("event").astype(bool), self._attrs(base).get("provenance", {}))

    def table_info(self, name: str) -> dict:
        if name not in self.tables():
            raise StoreError(f"store {self.path} has no table {name!r}")
        return self._attrs(f"tables/{name}")
