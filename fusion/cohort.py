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
    y: np.ndarray  # 1 = positive (minority) class; for survival, (event, time) records (fusion.survival.surv)
    classes: tuple[str, str]  # (negative, positive); for survival ("censored", "event")
    genes: np.ndarray | None  # (P, G) float32, NaN rows for patients without expression
    gene_ids: list[str]
    slides: dict[str, list[str]]  # patient -> slide ids in the feature set
    feature_set: str | None
    gene_table: str | None
    summary: dict = field(default_factory=dict)
    label_table: str | None = None  # the store's labels table, or None for a labels CSV
    target: str = "binary"  # or "survival"

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
        positive, negative, unit = "event", "censored", outcome.provenance.get("time_unit", "days")
    elif labels_csv is not None:
        table, _ = read_labels(labels_csv, id_column=label_id_column, label_column=label_column, label_map=label_map)
    else:
        if labels is None and not store.tables("labels") and store.tables("survival"):
            raise StoreError(f"store {store.path} has no labels table, and a survival table "
                             f"({', '.join(store.tables('survival'))}): train on it with --survival NAME")
        labels = store.resolve("labels", labels)
        table = store.read_labels(labels)
    if survival is None:
        label_of, positive, negative = _classes(table, positive)

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
        events = y["event"]
    else:
        y = events = np.array([label_of[p] == positive for p in kept], dtype=np.int64)
    summary = {
        "labelled_patients": len(patients),
        "patients": len(kept),
        "classes": {negative: int((events == 0).sum()), positive: int((events == 1).sum())},
        "positive_class": positive,
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
    return Cohort(kept, y, (negative, positive), genes_arr, gene_ids, {p: slides.get(p, []) for p in kept},
                  fs_name, gene_name, summary, None if labels_csv is not None else (survival or labels),
                  "binary" if survival is None else "survival")


def _classes(table, positive: str | None) -> tuple[dict, str, str]:
    """Each patient's class, and the (positive, negative) pair: the class asked for against the rest, else the
    table's two classes."""
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
    elif len(counts) != 2:
        example = min(counts, key=lambda c: (counts[c], c))
        raise ValueError(f"fusion trains two-class heads, and the labels have {len(counts)} classes {dict(counts)}: "
                         f"train one of them against the rest with --positive CLASS (e.g. --positive {example}), or "
                         "import the labels with a two-class --label-map (pam50-binary: Luminal vs Basal_Her2)")
    # The positive class is the one asked for, else the minority one (Basal_Her2 under pam50-binary); ties by name.
    positive = positive or table.provenance.get("positive_class") or min(counts, key=lambda c: (counts[c], c))
    negative = next(c for c in counts if c != positive)
    return label_of, positive, negative
