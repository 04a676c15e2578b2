"""Reading gene-expression and label tables into the store's records, with precise errors.

Parsing comes first and writing last: a complete record is handed to the store, which commits it in
one step, so a bad table never leaves anything partial behind.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

import numpy as np

from featstore.barcodes import SAMPLE_TYPES, parse_barcode, patient_of, strip_ensembl_version
from featstore.errors import InputError
from featstore.store import ExpressionTable, LabelTable, Store, now_iso

# Label maps turn raw calls into the classes the trainer sees; None means "exclude".
PAM50_CALLS = ("LumA", "LumB", "Basal", "Her2", "Normal")
LABEL_MAPS: dict[str, dict[str, str | None]] = {
    "pam50-binary": {"LumA": "Luminal", "LumB": "Luminal", "Basal": "Basal_Her2", "Her2": "Basal_Her2",
                     "Normal": None},
    "pam50": {c: c for c in PAM50_CALLS},  # the five calls, any spelling: a multi-class target (or --positive)
}
POSITIVE_CLASS = {"pam50-binary": "Basal_Her2"}


def _open_text(path: Path) -> io.TextIOBase:
    if not path.exists():
        raise InputError(f"{path}: no such file")
    # utf-8-sig: a byte-order mark (Excel's CSV export) is dropped, not read into the first header.
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open("r", encoding="utf-8-sig", newline="")


def _delimiter(path: Path, first_line: str) -> str:
    stem = path.name[:-3] if path.name.endswith(".gz") else path.name
    if stem.endswith((".tsv", ".txt", ".tab")):
        return "\t"
    if stem.endswith(".csv"):
        return ","
    return "\t" if first_line.count("\t") > first_line.count(",") else ","


def read_rows(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV/TSV (optionally gzipped) file."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                         "save it as UTF-8") from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(f"{path}: the gzip file is truncated or corrupt ({type(exc).__name__}: {exc})") from exc
    if not text.strip():
        raise InputError(f"{path}: the file is empty")
    delim = _delimiter(path, text.split("\n", 1)[0])
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if r and any(c.strip() for c in r)]
    header, body = rows[0], rows[1:]
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise InputError(f"{path}: line {i} has {len(row)} fields, the header has {len(header)}")
    return header, body


def _looks_like_sample(ids: list[str]) -> float:
    return sum(parse_barcode(i) is not None for i in ids) / max(len(ids), 1)


# Words in the id column's header that say what the rows are ("participant_code", "gene_symbol|entrez_id").
_SAMPLE_WORDS = {"sample", "samples", "patient", "participant", "case", "barcode", "aliquot", "subject", "donor",
                 "specimen", "submitter", "cell", "obs"}
_GENE_WORDS = {"gene", "genes", "symbol", "hugo", "ensembl", "entrez", "feature", "probe", "transcript", "var"}


def _rows_named_by(id_header: str) -> Literal["rows", "columns"] | None:
    """Where the samples are, from the id column's header, or None when it does not say."""
    words = set(re.split(r"[^a-z]+", id_header.lower()))
    sample, gene = bool(words & _SAMPLE_WORDS), bool(words & _GENE_WORDS)
    if sample == gene:
        return None
    return "rows" if sample else "columns"


def read_expression(
    path: str | Path,
    samples_as: Literal["auto", "rows", "columns"] = "auto",
    transform: Literal["none", "log2p1"] = "none",
    primary_only: bool = True,
) -> tuple[ExpressionTable, list[str]]:
    """Parse an expression table; return it and a list of human-readable notes on what was done.

    The first column (or first header field) holds ids. Orientation is detected from TCGA barcodes,
    else from the id column's header (``sample_id``, ``participant_code``: samples are rows;
    ``gene_symbol``, ``ensembl_id``: genes are rows), else samples are taken along the shorter axis
    (there are more genes than samples); ``samples_as`` forces it.
    """
    path = Path(path)
    header, body = read_rows(path)
    if len(header) < 2 or not body:
        raise InputError(f"{path}: need an id column and at least one data column and row")
    row_ids = [r[0].strip() for r in body]
    col_ids = [h.strip() for h in header[1:]]
    if "" in row_ids:  # an id is what joins a sample to its patient, or a gene to a model's: never blank
        raise InputError(f"{path}: row {row_ids.index('') + 2} has an empty id in its first column")
    if "" in col_ids:
        raise InputError(f"{path}: column {col_ids.index('') + 2} has an empty name in the header")
    notes: list[str] = []
    if samples_as == "auto":
        rows_bc, cols_bc = _looks_like_sample(row_ids), _looks_like_sample(col_ids)
        if rows_bc > 0.5 or cols_bc > 0.5:
            samples_as = "rows" if rows_bc >= cols_bc else "columns"
            why = "TCGA barcodes"
        elif named := _rows_named_by(header[0]):
            samples_as, why = named, f"the id column is called {header[0].strip()!r}"
        else:
            samples_as = "rows" if len(row_ids) <= len(col_ids) else "columns"
            why = "fewer samples than genes"
        notes.append(f"samples taken as {samples_as} ({why}; force with --samples-as rows|columns)")

    values = np.empty((len(body), len(col_ids)), dtype=np.float64)
    for i, row in enumerate(body):
        try:
            parsed = np.asarray(row[1:], dtype=np.float64)
        except ValueError:
            parsed = None
        if parsed is None or not np.isfinite(parsed).all():
            _raise_bad_cell(path, i, row, row_ids, col_ids)
        values[i] = parsed
    if samples_as == "columns":
        values, sample_ids, gene_ids, gene_axis = values.T, col_ids, row_ids, "row"
    else:
        sample_ids, gene_ids, gene_axis = row_ids, col_ids, "column"

    stripped = [strip_ensembl_version(g) for g in gene_ids]
    n_stripped = sum(a != b for a, b in zip(gene_ids, stripped))
    if n_stripped:
        notes.append(f"removed Ensembl version suffixes from {n_stripped} gene ids")
    _reject_duplicates(path, gene_ids, stripped, "gene", gene_axis)
    _reject_duplicates(path, sample_ids, sample_ids, "sample", "column" if gene_axis == "row" else "row")

    if transform == "log2p1":
        if (values < 0).any():
            raise InputError(f"{path}: log2(x+1) needs non-negative values; the table has negatives")
        values = np.log2(values + 1.0)
    elif transform != "none":
        raise ValueError(f"transform must be 'none' or 'log2p1', got {transform!r}")

    patients = [patient_of(s) for s in sample_ids]
    types = [(parse_barcode(s).sample_type or "") if parse_barcode(s) else "" for s in sample_ids]
    keep = one_sample_per_patient(sample_ids, patients, types, notes) if primary_only else list(range(len(sample_ids)))
    with np.errstate(over="ignore"):
        stored = values[keep].astype(np.float32)
    if not np.isfinite(stored).all():  # finite as parsed (float64), but beyond float32's range
        r, c = (int(v) for v in np.argwhere(~np.isfinite(stored))[0])
        raise InputError(f"{path}: value {float(values[keep[r], c])!r} of sample {sample_ids[keep[r]]!r}, gene {gene_ids[c]!r} "
                         "overflows float32, the stored type (beyond about ±3.4e38)")
    table = ExpressionTable(
        values=stored,
        sample_ids=[sample_ids[k] for k in keep],
        gene_ids=stripped,
        patient_ids=[patients[k] for k in keep],
        sample_types=[types[k] for k in keep],
        provenance={"source": str(path), "source_name": path.name, "imported": now_iso(),
                    "orientation": f"samples as {samples_as}", "transform": transform,
                    "notes": notes},
    )
    return table, notes


def _raise_bad_cell(path: Path, i: int, row: list[str], row_ids: list[str], col_ids: list[str]) -> None:
    """Find the first bad cell of a row that failed to parse and say exactly what is wrong with it."""

    def as_float(c: str) -> float | None:
        try:
            return float(c)
        except ValueError:
            return None

    cells = [c.strip() for c in row[1:]]
    if i == 0 and all(as_float(c) is None for c in cells):
        raise InputError(f"{path}: no numeric columns (row 2, {row_ids[0]!r}, has no number after the id column)")
    for j, c in enumerate(cells):
        where = f"row {i + 2} ({row_ids[i]!r}), column {j + 2} ({col_ids[j]!r})"
        v = as_float(c)
        if c == "" or c.lower() in ("na", "nan", "null", "none") or (v is not None and math.isnan(v)):
            raise InputError(f"{path}: empty or NaN cell at {where}; impute or drop it before import")
        if v is None:
            raise InputError(f"{path}: non-numeric cell {c!r} at {where}")
        if not math.isfinite(v):
            raise InputError(f"{path}: non-finite value {c!r} at {where}")


def _reject_duplicates(path: Path, raw: list[str], ids: list[str], what: str, axis: str) -> None:
    seen: dict[str, int] = {}
    for k, g in enumerate(ids):
        if g in seen:
            a, b = raw[seen[g]], raw[k]
            same = f"{a!r}" if a == b else f"{a!r} and {b!r} (the same id once Ensembl versions are removed)"
            # +2: 1-based, and the header (or id column) comes first.
            raise InputError(
                f"{path}: duplicate {what} id {same} in {axis}s {seen[g] + 2} and {k + 2}; "
                f"make {what} ids unique before import"
            )
        seen[g] = k


def _is_tumour(sample_type: str) -> bool:
    """TCGA sample types 01-09 are tumours, 10-19 normal tissue, 20-29 controls; an id without a barcode
    says nothing and is kept."""
    return not sample_type or (sample_type.isdigit() and 1 <= int(sample_type) <= 9)


def one_sample_per_patient(samples: list[str], patients: list[str], types: list[str], notes: list[str]) -> list[int]:
    """Keep one tumour sample per patient: the primary tumour (01) when there is one, else the lowest tumour
    type. A patient with only normal-tissue or control samples is dropped: its expression is not the
    tumour's, and it would carry the tumour's label."""
    by_patient: dict[str, list[int]] = defaultdict(list)
    for k, p in enumerate(patients):
        by_patient[p].append(k)
    keep, dropped, normal_only = [], [], []
    for patient, ks in by_patient.items():
        tumours = [k for k in ks if _is_tumour(types[k])]
        if not tumours:
            normal_only.append(patient)
            continue
        best = min(tumours, key=lambda k: (types[k] != "01", types[k] or "99", samples[k]))
        keep.append(best)
        dropped += [k for k in ks if k != best]
    if dropped:
        kinds = Counter(SAMPLE_TYPES.get(types[k], types[k] or "unknown") for k in dropped)
        notes.append(f"{len(dropped)} further samples of patients with a tumour sample dropped (one tumour sample "
                     f"per patient, the primary when there is one): {dict(kinds)}")
    if normal_only:
        notes.append(f"{len(normal_only)} patients dropped: they have only normal-tissue or control samples, never "
                     f"taken for a tumour ({', '.join(sorted(normal_only)[:5])}{', ...' if len(normal_only) > 5 else ''}; "
                     "--all-samples keeps every sample)")
    return sorted(keep)


def patient_rows(table: ExpressionTable) -> tuple[dict[str, int], list[str]]:
    """Each patient's row of an expression table: its one tumour sample, chosen by the rule import uses,
    where a table imported with ``--all-samples`` holds several (a normal sample is never taken for the
    tumour); and notes on what was passed over."""
    notes: list[str] = []
    keep = one_sample_per_patient(table.sample_ids, table.patient_ids, table.sample_types, notes)
    return {table.patient_ids[k]: k for k in keep}, notes


# PAM50 calls as the sources spell them (TCGA/PanCanAtlas, cBioPortal BRCA_LumA, genefu "Luminal A",
# "Basal-like", "HER2-enriched", "Normal-like"), keyed by their letters and digits in lower case.
_PAM50_SPELLINGS = {
    "luma": "LumA", "luminala": "LumA", "lumb": "LumB", "luminalb": "LumB",
    "basal": "Basal", "basallike": "Basal", "her2": "Her2", "her2enriched": "Her2", "her2e": "Her2",
    "normal": "Normal", "normallike": "Normal",
}


def normalise_pam50(call: str) -> str:
    """``BRCA.LumA`` / ``BRCA_LumA`` / ``Luminal A`` / ``HER2-enriched`` -> ``LumA`` / ``Her2``; anything
    else is returned stripped."""
    c = call.strip()
    key = re.sub(r"[^a-z0-9]", "", c.lower())
    if key.startswith("brca") and key[4:] in _PAM50_SPELLINGS:
        key = key[4:]
    return _PAM50_SPELLINGS.get(key, c)


def read_labels(
    path: str | Path,
    id_column: str = "patient_id",
    label_column: str = "label",
    label_map: str | None = "pam50-binary",
) -> tuple[LabelTable, list[str]]:
    """Parse a label table into one label per patient.

    Sample barcodes are reduced to patients (a primary-tumour row wins over other sample types);
    ``label_map`` maps raw calls to classes, and calls it maps to nothing are excluded and counted.
    """
    path = Path(path)
    header, body = read_rows(path)
    cols = [h.strip() for h in header]
    for c in (id_column, label_column):
        if c not in cols:
            raise InputError(f"{path}: no column {c!r}; columns are {cols}")
    mapping = None
    if label_map is not None:
        if label_map not in LABEL_MAPS:
            raise InputError(f"unknown --label-map {label_map!r}; known: {sorted(LABEL_MAPS)} or none")
        mapping = LABEL_MAPS[label_map]
    ci, cl = cols.index(id_column), cols.index(label_column)
    chosen: dict[str, tuple[bool, int, str]] = {}
    excluded: Counter = Counter()
    unknown: Counter = Counter()
    empty_ids: list[int] = []
    for i, row in enumerate(body, start=2):
        raw_id, raw = row[ci].strip(), row[cl].strip()
        if not raw_id:
            empty_ids.append(i)
            continue
        bc = parse_barcode(raw_id)
        if bc is not None and not _is_tumour(bc.sample_type or ""):
            excluded["normal_or_control_sample"] += 1  # a call made on normal tissue is not the tumour's
            continue
        patient = bc.patient if bc else raw_id
        primary = bc is None or bc.sample_type in (None, "01")
        if raw == "" or raw.upper() == "NA":
            excluded["missing"] += 1
            continue
        call = normalise_pam50(raw) if label_map and label_map.startswith("pam50") else raw
        if mapping is not None and call not in mapping:
            unknown[raw] += 1
            continue
        prev = chosen.get(patient)
        if prev is not None:
            if prev[0] == primary and prev[2] != call:  # two rows of one rank: never whichever came last
                raise InputError(
                    f"{path}: patient {patient} has conflicting labels {prev[2]!r} (row {prev[1]}) and "
                    f"{call!r} (row {i})"
                )
            if prev[0] or not primary:
                continue
        chosen[patient] = (primary, i, call)
    if unknown:
        raise InputError(f"{path}: column {label_column!r} has values the label map {label_map!r} does not know, "
                         f"with their counts: {dict(unknown.most_common())}; known: {sorted(mapping)} "
                         "(or import with --label-map none)")
    patients, labels, raws = [], [], []
    for patient, (_, _, call) in sorted(chosen.items()):
        mapped = mapping.get(call) if mapping is not None else call
        if mapped is None:
            excluded[call] += 1
            continue
        patients.append(patient)
        labels.append(mapped)
        raws.append(call)
    _check_classes(path, label_column, labels)
    notes = [f"{len(patients)} patients labelled: {dict(Counter(labels))}"]
    if empty_ids:
        notes.append(f"WARNING: {len(empty_ids)} rows with an empty {id_column!r} skipped (rows "
                     f"{', '.join(map(str, empty_ids[:10]))}{', ...' if len(empty_ids) > 10 else ''})")
    if excluded:
        notes.append(f"excluded: {dict(excluded)}")
    if not patients:
        raise InputError(f"{path}: no usable labels (excluded: {dict(excluded)})")
    table = LabelTable(
        patient_ids=patients, labels=labels, raw_labels=raws,
        provenance={"source": str(path), "source_name": path.name, "imported": now_iso(),
                    "id_column": id_column, "label_column": label_column, "label_map": label_map,
                    "positive_class": POSITIVE_CLASS.get(label_map or ""), "excluded": dict(excluded),
                    "notes": notes},
    )
    return table, notes


MAX_CLASSES = 10


def _check_classes(path: Path, column: str, labels: list[str]) -> None:
    """Labels are classes: a column of many distinct numbers (days to death, an age, a score) is a quantity
    read as hundreds of one-patient classes, refused by name."""
    counts = Counter(labels)
    if len(counts) <= MAX_CLASSES:
        return
    numeric = all(_is_number(c) for c in counts)
    single = sum(v == 1 for v in counts.values())
    raise InputError(f"{path}: column {column!r} holds {len(counts)} distinct values ({single} of them for one patient "
                     f"only{', all numbers' if numeric else ''}), not classes" +
                     (": a time or a measurement, not a class; a follow-up time is imported as a survival table "
                      "(--time-column and --event-column)"
                      if numeric else f"; fusion trains up to {MAX_CLASSES} classes (all at once, or one against the rest with "
                      "--positive), so give a column of classes"))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def import_genes(store: Store, path: str | Path, name: str = "expression", overwrite: bool = False,
                 **kwargs) -> tuple[ExpressionTable, list[str]]:
    """Parse an expression table (see :func:`read_expression`) and commit it to ``store``."""
    table, notes = read_expression(path, **kwargs)
    store.write_expression(name, table, overwrite=overwrite)
    return table, notes


def import_labels(store: Store, path: str | Path, name: str = "labels", overwrite: bool = False,
                  **kwargs) -> tuple[LabelTable, list[str]]:
    """Parse a label table (see :func:`read_labels`) and commit it to ``store``."""
    table, notes = read_labels(path, **kwargs)
    store.write_labels(name, table, overwrite=overwrite)
    return table, notes
