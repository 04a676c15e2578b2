"""Join a slide feature set, a gene table and labels by patient, and say what was joined and dropped."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.store import Store
from featstore.tables import patient_rows, read_labels
from fusion.survival import strata, surv


@dataclass
class Cohort:
    patient_ids: list[str]
    y: np.ndarray  # index into ``classes`` (1 = positive); for survival, (event, time) records (fusion.survival.surv)
    classes: tuple[str, ...]  # (negative, positive); C names for a multi-class target; for survival ("censored", "event")
    genes: np.ndarray | None  # (P, G) float32, NaN rows for patients without expression
    gene_ids: list[str]
    slides: dict[str, list[str]]  # patient -> slide ids in the feature set
    feature_set: str | None
    gene_table: str | None
    summary: dict = field(default_factory=dict)
    label_table: str | None = None  # the store's labels table, or None for a labels CSV
    target: str = "binary"  # "multiclass" (more than two classes) or "survival"

    @property
    def strata(self) -> np.ndarray:
        """What folds are stratified by: the class, or for survival the event."""
        return strata(self.y)

    @property
    def has_genes(self) -> np.ndarray:
        if self.genes is None:
            return np.zeros(len(self.patient_ids), bool)
        return ~np.isnan(self.genes).all(axis=1)

    @property
    def has_image(self) -> np.ndarray:
        return np.array([bool(self.slides.get(p)) for p in self.patient_ids])


def load_cohort(store: Store, features: str | None = None, genes: str | None = None,
                labels: str | None = None, label_map: str | None = "pam50-binary",
                use_genes: bool = True, use_image: bool = True, missing: str = "drop",
                label_id_column: str = "patient_id", label_column: str = "label",
                labels_csv: str | Path | None = None, positive: str | None = None,
                survival: str | None = None) -> Cohort:
    """Build the cohort for a head that uses ``use_genes``/``use_image``.

    ``labels`` names a labels table in the store (default: the only one); ``labels_csv`` reads a CSV
    instead, with ``label_map``. ``missing="drop"`` keeps patients with every modality the head uses;
    ``"mask"`` keeps patients with at least one, for modality-masked training. ``positive`` trains one class
    against all the others (one-vs-rest), for a label table of more than two classes. ``survival`` names a
    survival table (time, event) of the store to train on instead of labels.
    """
    if missing not in ("drop", "mask"):
        raise ValueError(f"missing must be 'drop' or 'mask', got {missing!r}")
    if labels is not None and labels_csv is not None:
        raise ValueError("give a labels table (--labels) or a labels CSV (--labels-csv), not both")
    if survival is not None:
        if labels is not None or labels_csv is not None or positive is not None:
            raise ValueError("--survival trains on a survival table; --labels, --labels-csv and --positive are for "
                             "class labels, give one or the other")
        survival = store.resolve("survival", survival)
        outcome = store.read_survival(survival)
        label_of = dict(zip(outcome.patient_ids, surv(outcome.event, outcome.time)))
        unit = outcome.provenance.get("time_unit", "days")
    else:
        labels, table = _label_table(store, labels, labels_csv, label_map, label_id_column, label_column)
        label_of, classes = _classes(table, positive)

    gene_values, gene_ids, gene_name, gene_index, sample_notes = None, [], None, {}, []
    if use_genes:
        gene_name = store.resolve("expression", genes)
        expr = store.read_expression(gene_name)
        gene_values, gene_ids = expr.values, expr.gene_ids
        gene_index, sample_notes = patient_rows(expr)
    slides: dict[str, list[str]] = defaultdict(list)
    fs_name = None
    if use_image:
        fs_name = store.resolve("features", features)
        if why := store.interrupted_import(fs_name):
            raise StoreError(why)
        for sid in store.slides(fs_name):
            slides[store.slide_attrs(fs_name, sid)["patient_id"]].append(sid)

    patients = sorted(label_of)
    has_g = np.array([p in gene_index for p in patients]) if use_genes else np.zeros(len(patients), bool)
    has_i = np.array([p in slides for p in patients]) if use_image else np.zeros(len(patients), bool)
    needed = [m for m, used in (("genes", use_genes), ("image", use_image)) if used]
    if missing == "drop":
        keep = np.ones(len(patients), bool)
        if use_genes:
            keep &= has_g
        if use_image:
            keep &= has_i
    else:
        keep = has_g | has_i
    kept = [p for p, k in zip(patients, keep) if k]
    if not kept:
        raise ValueError(f"no labelled patient has {' and '.join(needed)}; check that patient ids match "
                         f"(labels e.g. {patients[:3]}, slides e.g. {list(slides)[:3]}, genes e.g. {list(gene_index)[:3]})")
    genes_arr = None
    if use_genes:
        genes_arr = np.full((len(kept), len(gene_ids)), np.nan, np.float32)
        for i, p in enumerate(kept):
            if p in gene_index:
                genes_arr[i] = gene_values[gene_index[p]]
    if survival is not None:
        y = np.array([label_of[p] for p in kept], dtype=next(iter(label_of.values())).dtype)
        classes, events = ("censored", "event"), y["event"]
    else:
        index = {c: k for k, c in enumerate(classes)}
        y = events = np.array([index[label_of[p]] for p in kept], dtype=np.int64)
    target = "survival" if survival is not None else "multiclass" if len(classes) > 2 else "binary"
    summary = {
        "labelled_patients": len(patients),
        "patients": len(kept),
        "classes": {c: int((events == k).sum()) for k, c in enumerate(classes)},
        "positive_class": None if target == "multiclass" else classes[1],
        "with_genes": int(has_g.sum()) if use_genes else None,
        "with_image": int(has_i.sum()) if use_image else None,
        "dropped_missing_modality": int(len(patients) - keep.sum()),
        "missing_genes_kept": int((keep & ~has_g).sum()) if use_genes and missing == "mask" else 0,
        "missing_image_kept": int((keep & ~has_i).sum()) if use_image and missing == "mask" else 0,
        "excluded_labels": (outcome.provenance.get("left_out", {}) if survival is not None
                            else table.provenance.get("excluded", {})),
        "slides": int(sum(len(slides[p]) for p in kept)) if use_image else None,
        "missing": missing,
        "warnings": [f"expression table {gene_name}: {n}" for n in sample_notes],
    }
    if survival is not None:
        summary["survival"] = {"table": survival, "time_unit": unit, "events": int(events.sum()),
                               "median_follow_up": float(np.median(y["time"]))}
    return Cohort(kept, y, classes, genes_arr, gene_ids, {p: slides.get(p, []) for p in kept},
                  fs_name, gene_name, summary, None if labels_csv is not None else (survival or labels), target)


def _label_table(store: Store, labels: str | None, labels_csv, label_map: str | None, id_column: str = "patient_id",
                 label_column: str = "label"):
    """(the store's table name or None, the labels table): a labels CSV read with ``label_map``, else the store's
    table ``labels`` (default: its only one)."""
    if labels_csv is not None:
        return None, read_labels(labels_csv, id_column=id_column, label_column=label_column, label_map=label_map)[0]
    if labels is None and not store.tables("labels") and store.tables("survival"):
        raise StoreError(f"store {store.path} has no labels table, and a survival table "
                         f"({', '.join(store.tables('survival'))}): train on it with --survival NAME")
    labels = store.resolve("labels", labels)
    return labels, store.read_labels(labels)


def label_target(store: Store, labels: str | None = None, labels_csv=None, label_map: str | None = "pam50-binary",
                 positive: str | None = None, survival: str | None = None) -> str:
    """What a run on these labels trains: "survival", "binary" (two classes, or one against the rest) or
    "multiclass"; read before the cohort, since it decides which heads a bench runs."""
    if survival is not None:
        return "survival"
    classes = _classes(_label_table(store, labels, labels_csv, label_map)[1], positive)[1]
    return "multiclass" if len(classes) > 2 else "binary"


def _classes(table, positive: str | None) -> tuple[dict, tuple[str, ...]]:
    """Each patient's class, and the classes in the order of ``y``: (negative, positive) for the class asked for
    against the rest, or the table's two classes; the table's classes by name when it has more than two."""
    counts = Counter(table.labels)
    label_of = dict(zip(table.patient_ids, table.labels))
    if positive is not None:
        if positive not in counts:
            raise ValueError(f"--positive {positive!r} is not a class of the labels; their classes: {dict(counts)}")
        rest = f"not_{positive}"
        label_of = {p: positive if c == positive else rest for p, c in label_of.items()}
        counts = Counter(label_of.values())
        if len(counts) != 2:
            raise ValueError(f"--positive {positive!r}: every patient has that label, so there is no other class")
    elif len(counts) == 1:
        raise ValueError(f"every labelled patient has the class {next(iter(counts))!r}: there is nothing to tell apart")
    elif len(counts) > 2:
        return label_of, tuple(sorted(counts))
    # The positive class is the one asked for, else the minority one (Basal_Her2 under pam50-binary); ties by name.
    positive = positive or table.provenance.get("positive_class") or min(counts, key=lambda c: (counts[c], c))
    negative = next(c for c in counts if c != positive)
    return label_of, (negative, positive)
