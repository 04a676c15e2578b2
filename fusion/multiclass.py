"""Multi-class targets: metrics over bootstrap resamples, temperature calibration, the confusion matrix.

A multi-class head predicts ``(P, C)`` class probabilities (each row sums to 1); the out-of-fold predictions are
``(R, P, C)``. Every metric is a function of the resample's count of each patient (``counts``, (B, P)), so one
pass scores every bootstrap resample: ROC-AUC one-vs-rest as a weighted Mann-Whitney statistic over the groups
of tied scores, the class decisions (argmax) through one (B, P) x (P, C*C) product giving each resample's
confusion matrix. ``tests/test_multiclass.py`` holds each to scikit-learn's on the resampled rows.
"""

from __future__ import annotations

import numpy as np

from fusion.survival import resample_counts

# The headline first: ROC-AUC is the macro average of the one-vs-rest ROC-AUCs (scikit-learn's
# roc_auc_score(multi_class="ovr", average="macro")), F1 the macro average; the class decision is the argmax.
MULTICLASS_METRICS = ("roc_auc", "f1", "balanced_accuracy", "accuracy", "brier")
DECISION = "the class of highest calibrated probability (argmax)"


def is_multiclass(p: np.ndarray) -> bool:
    """Whether predictions are class probabilities, (..., P, C), rather than one score per patient."""
    return p.ndim == 3


def _counts(n: int, counts: np.ndarray | None) -> np.ndarray:
    return np.ones((1, n)) if counts is None else counts


def ovr_roc_auc(y: np.ndarray, p: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """(B, C) one-vs-rest ROC-AUC of each class per resample (ties count one half); NaN where a resample lacks
    the class or holds nothing else."""
    w = _counts(len(y), counts)
    out = np.full((w.shape[0], p.shape[1]), np.nan)
    for k in range(p.shape[1]):
        order = np.argsort(p[:, k], kind="mergesort")
        s = p[order, k]
        group = np.concatenate([[0], np.cumsum(s[1:] != s[:-1])])  # tied scores share a group
        onehot = np.zeros((len(s), group[-1] + 1))
        onehot[np.arange(len(s)), group] = 1.0
        pos = y[order] == k
        wp, wn = (w[:, order] * pos) @ onehot, (w[:, order] * ~pos) @ onehot  # (B, groups)
        below = np.cumsum(wn, axis=1) - wn
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, k] = (wp * (below + 0.5 * wn)).sum(1) / (wp.sum(1) * wn.sum(1))
    return out


def confusion(y: np.ndarray, p: np.ndarray, counts: np.ndarray | None = None) -> np.ndarray:
    """(B, C, C) confusion matrices of the argmax decisions (rows: true class, columns: predicted)."""
    c = p.shape[1]
    pair = np.zeros((len(y), c * c))
    pair[np.arange(len(y)), y * c + p.argmax(1)] = 1.0
    return (_counts(len(y), counts) @ pair).reshape(-1, c, c)


def decision_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy (mean recall over the classes present) and macro-F1 (over the classes present
    or predicted, as scikit-learn's default labels) of (B, C, C) confusion matrices."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true, pred = cm.sum(2), cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true > 0, tp / true, np.nan)
        f1 = np.where(true + pred > 0, 2 * tp / (true + pred), np.nan)
        return {"accuracy": tp.sum(1) / cm.sum((1, 2)), "balanced_accuracy": _nanmean(recall, 1),
                "f1": _nanmean(f1, 1)}


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    """The mean over ``axis`` of the defined values; NaN, without a warning, where none is."""
    n = np.isfinite(a).sum(axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(np.isfinite(a), a, 0).sum(axis) / n, np.nan)


def multiclass_metrics(y: np.ndarray, p: np.ndarray, counts: np.ndarray | None = None,
                       metrics: tuple[str, ...] = MULTICLASS_METRICS) -> dict[str, np.ndarray]:
    """``metrics`` per resample (one row without ``counts``); ``roc_auc[k]`` names class k's one-vs-rest ROC-AUC."""
    w = _counts(len(y), counts)
    out: dict[str, np.ndarray] = {}
    if any(m.startswith("roc_auc") for m in metrics):
        auc = ovr_roc_auc(y, p, w)
        out["roc_auc"] = _nanmean(auc, 1)
        out |= {f"roc_auc[{k}]": auc[:, k] for k in range(p.shape[1])}
    if {"f1", "balanced_accuracy", "accuracy"} & set(metrics):
        out |= decision_metrics(confusion(y, p, w))
    if "brier" in metrics:
        onehot = np.eye(p.shape[1])[y]
        out["brier"] = (w @ ((p - onehot) ** 2).sum(1)) / w.sum(1)
    return {m: out[m] for m in metrics}


def pooled_bootstrap(y: np.ndarray, oof: np.ndarray, idx: np.ndarray, metrics: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Each metric per resample (``idx``: (B, P) patient indices) of the pooled out-of-fold predictions, averaged
    over repeats."""
    counts = resample_counts(idx, len(y))
    per_repeat = [multiclass_metrics(y, oof[r], counts, metrics) for r in range(oof.shape[0])]
    return {k: _nanmean(np.stack([m[k] for m in per_repeat]), 0) for k in metrics}


def pooled_metric(y: np.ndarray, oof: np.ndarray, metric: str) -> float:
    return float(_nanmean(np.array([multiclass_metrics(y, oof[r], metrics=(metric,))[metric][0]
                                    for r in range(oof.shape[0])]), 0))


def class_metrics(n_classes: int) -> tuple[str, ...]:
    """The summary's metrics: the macro ones, then each class's one-vs-rest ROC-AUC."""
    return MULTICLASS_METRICS + tuple(f"roc_auc[{k}]" for k in range(n_classes))


def operating_point(y: np.ndarray, oof: np.ndarray, classes: tuple[str, ...]) -> dict:
    """The confusion matrix of the argmax decisions, pooled over repeats, with each class's recall and
    precision."""
    cm = sum(confusion(y, oof[r])[0] for r in range(oof.shape[0])).astype(int)
    true, pred = cm.sum(1), cm.sum(0)
    return {"rule": "argmax", "chosen_on": DECISION, "classes": list(classes), "confusion": cm.tolist(),
            "recall": {c: float(cm[k, k] / true[k]) if true[k] else None for k, c in enumerate(classes)},
            "precision": {c: float(cm[k, k] / pred[k]) if pred[k] else None for k, c in enumerate(classes)}}


def fit_temperature(p_val: np.ndarray, y_val: np.ndarray) -> float:
    """The inverse temperature ``a`` minimising the validation log-loss of ``softmax(a * log p)``: one parameter,
    the multi-class analogue of Platt's sigmoid (Guo et al., 2017), stable on the few rows an inner split has.
    It rescales confidence and keeps every patient's ranking of the classes."""
    from scipy.optimize import minimize_scalar

    logp = np.log(np.clip(p_val, 1e-12, 1))

    def loss(log_a: float) -> float:
        z = np.exp(log_a) * logp
        z -= z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y_val)), y_val] - np.log(np.exp(z).sum(1))).mean())

    return float(np.exp(minimize_scalar(loss, bounds=(np.log(0.05), np.log(20.0)), method="bounded").x))


def apply_temperature(p: np.ndarray, a: float) -> np.ndarray:
    z = a * np.log(np.clip(p, 1e-12, 1))
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reliability_per_class(y: np.ndarray, p: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Each class's reliability (P(class) against the share of that class), pooled over repeats."""
    from fusion.calibration import reliability

    y = np.tile(y, p.shape[0])
    flat = p.reshape(-1, p.shape[-1])
    return {c: reliability((y == k).astype(float), flat[:, k]) for k, c in enumerate(classes)}
