"""Binary metrics, vectorised over bootstrap resamples, with patient-level CIs and paired comparisons; a survival
outcome (``fusion.survival``) is scored by its concordance indices, and class probabilities of more than two
classes (``fusion.multiclass``) by the multi-class metrics, through the same functions.

scikit-learn computes one metric for one sample; a CI needs thousands, so the metrics are written
here as array operations over a ``(resamples, n)`` matrix and checked against scikit-learn in tests.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from fusion import multiclass
from fusion.multiclass import MULTICLASS_METRICS, class_metrics
from fusion.survival import SURVIVAL_METRICS, is_survival, resample_counts, survival_metric

METRICS = ("f1", "pr_auc", "roc_auc", "accuracy", "balanced_accuracy", "brier")


def _rows(a: np.ndarray) -> np.ndarray:
    return a[None] if a.ndim == 1 else a


def roc_auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC per row (ties count one half); NaN where a row has one class only."""
    y, p = _rows(y), _rows(p)
    ranks = rankdata(p, axis=1)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_precision(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """PR-AUC as average precision (step-wise, ties grouped as scikit-learn does)."""
    y, p = _rows(y).astype(float), _rows(p)
    order = np.argsort(-p, axis=1, kind="stable")
    ys = np.take_along_axis(y, order, 1)
    ps = np.take_along_axis(p, order, 1)
    tp = ys.cumsum(1)
    # Only the last position of each group of tied scores is a threshold.
    last = np.ones_like(ps, bool)
    last[:, :-1] = ps[:, :-1] != ps[:, 1:]
    k = np.arange(1, ys.shape[1] + 1)
    precision = tp / k
    n_pos = ys.sum(1, keepdims=True)
    # Recall gained at each threshold: true positives since the previous threshold.
    at_threshold = np.where(last, tp, 0.0)
    prev = np.zeros_like(at_threshold)
    prev[:, 1:] = np.maximum.accumulate(at_threshold, axis=1)[:, :-1]
    recall_gain = np.where(last, tp - prev, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (recall_gain * precision).sum(1) / n_pos[:, 0]


def threshold_metrics(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray = 0.5) -> dict[str, np.ndarray]:
    """F1, accuracy and balanced accuracy at ``threshold`` (one, or each patient's: its fold's), and Brier."""
    y, p = _rows(y).astype(bool), _rows(p)
    pred = p >= threshold
    tp = (pred & y).sum(1).astype(float)
    fp = (pred & ~y).sum(1)
    fn = (~pred & y).sum(1)
    tn = (~pred & ~y).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        sens = tp / (tp + fn)
        spec = tn / (tn + fp)
    return {"f1": f1, "accuracy": (tp + tn) / y.shape[1], "balanced_accuracy": (sens + spec) / 2,
            "brier": ((p - y) ** 2).mean(1)}


def all_metrics(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray = 0.5,
                metrics: tuple[str, ...] = METRICS) -> dict[str, np.ndarray]:
    """``metrics`` per row; the ranking metrics are computed only when asked for (a bootstrap of one metric
    was mostly spent on the others)."""
    out = threshold_metrics(y, p, threshold) if set(metrics) - {"roc_auc", "pr_auc"} else {}
    if "roc_auc" in metrics:
        out["roc_auc"] = roc_auc(y, p)
    if "pr_auc" in metrics:
        out["pr_auc"] = average_precision(y, p)
    return {k: out[k] for k in metrics}


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def metrics_for(y: np.ndarray, p: np.ndarray | None = None) -> tuple[str, ...]:
    """The metrics of a target: the binary ones, the concordance indices of a survival outcome, or for class
    probabilities ``p`` (..., C) the multi-class (macro) ones."""
    if is_survival(y):
        return SURVIVAL_METRICS
    return MULTICLASS_METRICS if p is not None and multiclass.is_multiclass(p) else METRICS


def headline(y: np.ndarray) -> str:
    """The metric a leaderboard ranks by and a modality check is measured in (for C classes, ``roc_auc`` is the
    macro average of the one-vs-rest ROC-AUCs)."""
    return "c_index" if is_survival(y) else "roc_auc"


def pooled_bootstrap(y: np.ndarray, oof: np.ndarray, resamples: int = 1000, seed: int = 0,
                     idx: np.ndarray | None = None, cut: np.ndarray | None = None,
                     metrics: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Metric per patient-level resample of the pooled out-of-fold predictions, averaged over repeats;
    ``cut`` (R, P): each patient's threshold (its fold's), else 0.5."""
    metrics = metrics_for(y, oof) if metrics is None else metrics
    idx = bootstrap_indices(len(y), resamples, seed) if idx is None else idx
    if multiclass.is_multiclass(oof):
        return multiclass.pooled_bootstrap(y, oof, idx, metrics)
    if is_survival(y):
        counts = resample_counts(idx, len(y))
        return {k: np.nanmean([survival_metric(y, oof[r], k, counts) for r in range(oof.shape[0])], axis=0)
                for k in metrics}
    cut = np.full(oof.shape, 0.5) if cut is None else cut
    per_repeat = [all_metrics(y[idx], oof[r][idx], cut[r][idx], metrics) for r in range(oof.shape[0])]
    return {k: np.nanmean([m[k] for m in per_repeat], axis=0) for k in metrics}


def summarise(y: np.ndarray, oof: np.ndarray, assign: np.ndarray, resamples: int = 1000, seed: int = 0,
              thresholds: np.ndarray | None = None) -> tuple[list[dict], dict]:
    """Per-fold metrics and a summary per metric: ``pooled`` (all patients' out-of-fold predictions, averaged
    over repeats) with its patient-bootstrap ``ci95``, so the point estimate is the one its CI is about, and
    ``fold_mean``/``fold_std`` over the folds as a separate description of fold-to-fold spread. F1 and the
    accuracies cut each fold at its own threshold (``thresholds``: (R, folds), chosen on its inner
    validation; 0.5 without), the cut of the confusion matrix."""
    # For C classes the summary holds each class's one-vs-rest ROC-AUC too (``roc_auc[k]``).
    names = class_metrics(oof.shape[-1]) if multiclass.is_multiclass(oof) else metrics_for(y)
    cut = (np.full(oof.shape[:2], 0.5) if thresholds is None or multiclass.is_multiclass(oof)
           else np.take_along_axis(thresholds, assign, 1))
    folds = []
    for r in range(assign.shape[0]):
        for f in np.unique(assign[r]):
            rows = assign[r] == f
            if is_survival(y):
                m = {k: survival_metric(y[rows], oof[r, rows], k) for k in names}
            elif multiclass.is_multiclass(oof):
                m = multiclass.multiclass_metrics(y[rows], oof[r, rows], metrics=names)
            else:
                m = all_metrics(y[rows], oof[r, rows], cut[r, rows])
            folds.append({"repeat": r, "fold": int(f), "n_test": int(rows.sum()),
                          **{k: _f(v[0]) for k, v in m.items()}})
    boot = pooled_bootstrap(y, oof, resamples, seed, cut=cut, metrics=names)
    summary = {}
    for k in names:
        vals = np.array([f[k] for f in folds], float)
        lo, hi = np.nanpercentile(boot[k], [2.5, 97.5])
        summary[k] = {"pooled": _f(pooled_metric(y, oof, k, cut)), "ci95": [_f(lo), _f(hi)],
                      "fold_mean": _f(np.nanmean(vals)),
                      "fold_std": _f(np.nanstd(vals, ddof=1) if len(vals) > 1 else 0.0)}
    return folds, summary


def paired_difference(y: np.ndarray, oof_a: np.ndarray, oof_b: np.ndarray, metric: str = "roc_auc",
                      resamples: int = 1000, seed: int = 0) -> dict:
    """metric(a) - metric(b) on the pooled predictions, with a CI from resampling the same patients for both."""
    idx = bootstrap_indices(len(y), resamples, seed)
    a = pooled_bootstrap(y, oof_a, idx=idx, metrics=(metric,))[metric]
    b = pooled_bootstrap(y, oof_b, idx=idx, metrics=(metric,))[metric]
    lo, hi = np.nanpercentile(a - b, [2.5, 97.5])
    return {"metric": metric, "difference": _f(pooled_metric(y, oof_a, metric) - pooled_metric(y, oof_b, metric)),
            "ci95": [_f(lo), _f(hi)], "within_noise": bool(lo <= 0 <= hi)}


def _f(v) -> float | None:
    """Full precision for JSON (tables round to 3 decimals); NaN as None."""
    v = float(v)
    return None if np.isnan(v) else v


def pooled_metric(y: np.ndarray, oof: np.ndarray, metric: str = "roc_auc", cut: np.ndarray | None = None) -> float:
    """The metric on all patients' pooled out-of-fold predictions, averaged over repeats (``cut``: as in
    :func:`pooled_bootstrap`)."""
    if is_survival(y):
        return float(np.nanmean([survival_metric(y, oof[r], metric)[0] for r in range(oof.shape[0])]))
    if multiclass.is_multiclass(oof):
        return multiclass.pooled_metric(y, oof, metric)
    cut = np.full(oof.shape, 0.5) if cut is None else cut
    return float(np.nanmean([all_metrics(y, oof[r], cut[r], (metric,))[metric][0] for r in range(oof.shape[0])]))


def permutation_importance(y: np.ndarray, oof: np.ndarray, permuted: np.ndarray, metric: str = "roc_auc",
                           resamples: int = 1000, seed: int = 0) -> dict:
    """Drop in ``metric`` when one input is shuffled within each test fold, with a paired patient bootstrap.

    ``permuted`` holds ``(permutations, R, P)`` predictions; the drop is the intact metric minus the mean
    over permutations. Each bootstrap resample scores the intact predictions and *one* permutation drawn
    at random on the same patients, so the CI carries both the patients' sampling and the shuffle's own
    randomness (a mean over a few shuffles alone would make the CI too narrow and call noise informative).
    The input is *informative* when the lower CI bound is above 0: a head that ignores an input, or whose
    use of it does not help, gets a CI that covers 0.
    """
    idx = bootstrap_indices(len(y), resamples, seed)
    intact = pooled_bootstrap(y, oof, idx=idx, metrics=(metric,))[metric]
    shuffled = np.stack([pooled_bootstrap(y, p, idx=idx, metrics=(metric,))[metric] for p in permuted])  # (permutations, resamples)
    pick = np.random.default_rng([seed, 1]).integers(0, len(permuted), size=resamples)
    drop = pooled_metric(y, oof, metric) - float(np.mean([pooled_metric(y, p, metric) for p in permuted]))
    lo, hi = np.nanpercentile(intact - shuffled[pick, np.arange(resamples)], [2.5, 97.5])
    return {f"{metric}_drop": _f(drop), "ci95": [_f(lo), _f(hi)], "informative": bool(lo > 0),
            "permutations": int(len(permuted))}
