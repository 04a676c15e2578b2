"""Patient-level folds: label-stratified, or site-preserved (no TCGA tissue source site on both sides)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from featstore.barcodes import site_of


def make_splits(patient_ids: list[str], y: np.ndarray, folds: int = 5, repeats: int = 1, seed: int = 0,
                by: str = "patient") -> np.ndarray:
    """Fold number of every patient for every repeat: an ``(repeats, patients)`` int array."""
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    counts = np.bincount(y, minlength=2)
    if counts.min() < folds:
        raise ValueError(f"the smaller class has {counts.min()} patients, fewer than {folds} folds")
    out = np.empty((repeats, len(patient_ids)), np.int64)
    if by == "site":
        sites = [site_of(p) for p in patient_ids]
        if any(s is None for s in sites):
            bad = [p for p, s in zip(patient_ids, sites) if s is None][:3]
            raise ValueError(f"--split site needs TCGA patient barcodes; these are not: {bad}")
        if len(set(sites)) < folds:
            raise ValueError(f"{len(set(sites))} tissue source sites cannot fill {folds} site-preserved folds")
    elif by != "patient":
        raise ValueError(f"split must be 'patient' or 'site', got {by!r}")
    for r in range(repeats):
        if by == "site":
            splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r)
            parts = splitter.split(np.zeros(len(y)), y, groups=sites)
        else:
            parts = StratifiedKFold(folds, shuffle=True, random_state=seed + r).split(np.zeros(len(y)), y)
        for f, (_, test) in enumerate(parts):
            out[r, test] = f
    return out


def split_balance(assign: np.ndarray, y: np.ndarray) -> list[dict]:
    """Per repeat and fold: test size and positive share (for more than two classes, the test patients of each
    class), to report how well a split kept class balance."""
    def balance(rows: np.ndarray) -> dict:
        if y.max() > 1:
            return {"class_counts": np.bincount(y[rows], minlength=int(y.max()) + 1).tolist()}
        return {"positive_share": float(y[rows].mean())}
    return [{"repeat": r, "fold": int(f), "n_test": int((assign[r] == f).sum()), **balance(assign[r] == f)}
            for r in range(assign.shape[0]) for f in np.unique(assign[r])]


def write_splits(path: str | Path, patient_ids: list[str], assign: np.ndarray) -> None:
    with Path(path).open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "repeat", "fold"])
        for r in range(assign.shape[0]):
            for p, f in zip(patient_ids, assign[r]):
                w.writerow([p, r, int(f)])


def read_splits(path: str | Path, patient_ids: list[str]) -> np.ndarray:
    """Read ``splits.csv``; every cohort patient must have a fold in every repeat."""
    with Path(path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"patient_id", "repeat", "fold"} <= set(rows[0]):
        raise ValueError(f"{path}: a splits file has columns patient_id, repeat, fold")
    repeats = max(int(r["repeat"]) for r in rows) + 1
    index = {p: i for i, p in enumerate(patient_ids)}
    out = np.full((repeats, len(patient_ids)), -1, np.int64)
    for row in rows:
        if row["patient_id"] in index:
            out[int(row["repeat"]), index[row["patient_id"]]] = int(row["fold"])
    missing = [(r, patient_ids[i]) for r, i in zip(*np.nonzero(out < 0))]
    if missing:
        raise ValueError(f"{path}: {len(missing)} cohort patients have no fold (e.g. repeat {missing[0][0]}, "
                         f"patient {missing[0][1]})")
    return out


def _inner_split_fits(counts: np.ndarray, inner_val: float) -> bool:
    """Whether a training part with these class counts can give a stratified inner-validation split."""
    n = int(counts.sum())
    n_val = int(np.ceil(inner_val * n))
    return counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts)


def check_inner_split(y: np.ndarray, assign: np.ndarray, inner_val: float) -> None:
    """Refuse, with the counts and the smallest K that works, a cohort too small for its folds' inner split."""
    classes = np.unique(y)
    for r in range(assign.shape[0]):
        for f in np.unique(assign[r]):
            counts = np.array([(y[assign[r] != f] == c).sum() for c in classes])
            if _inner_split_fits(counts, inner_val):
                continue
            total = np.array([(y == c).sum() for c in classes])
            k_ok = next((k for k in range(int(assign.max()) + 2, 21)
                         if _inner_split_fits(np.floor(total * (k - 1) / k).astype(int), inner_val)), None)
            hint = (f"the smallest K that works is {k_ok} (--folds {k_ok})" if k_ok else
                    "no K up to 20 works: label more patients")
            raise ValueError(
                f"cohort too small for {int(assign.max()) + 1} folds with an inner validation split of "
                f"{inner_val:.0%}: fold {int(f)}'s training part has {int(counts.sum())} patients "
                f"({dict(zip(classes.tolist(), counts.tolist()))} per class): its validation part would hold "
                f"{int(np.ceil(inner_val * counts.sum()))} patient(s), and a stratified split needs one of each class "
                f"on both sides; {hint}")


def model_rows(assign: np.ndarray, y: np.ndarray, inner_val: float,
               seed: int) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(repeat, fold, inner-training rows, inner-validation rows, test rows) of every fold model: each fold's
    training part split, stratified by label, into the rows a model trains on and those it stops and
    calibrates on."""
    check_inner_split(y, assign, inner_val)
    out = []
    for r in range(assign.shape[0]):
        for f in np.unique(assign[r]):
            test = np.flatnonzero(assign[r] == f)
            train_all = np.flatnonzero(assign[r] != f)
            tr, val = train_test_split(train_all, test_size=inner_val, stratify=y[train_all],
                                       random_state=seed + 1000 * r + int(f))
            out.append((r, int(f), np.sort(tr), np.sort(val), test))
    return out
