"""Multinomial (softmax) logistic regression for targets of more than two classes, its penalty or gene screening
chosen by inner CV, and stacking of several inputs: the multi-class logreg, image_logreg and stack heads.

The two-class models of ``fusion.logistic`` carry one logit per patient; these carry one per class. The choice
works the same way: candidates scored by class-balanced log-loss over inner folds of the rows being fitted,
an input kept only when it beats the balanced prior (uniform probabilities) significantly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.logistic import _one_thread, significant_gain
from fusion.memo import Memo, digest

# L2 at several strengths, and L2 on the k genes of largest F statistic (fitted inside each inner fold). No L1:
# scikit-learn's multinomial lasso (saga) takes seconds per fit on thousands of genes, where these take tens of
# milliseconds.
CANDIDATES = (("l2", 1e-3), ("l2", 1e-2), ("l2", 0.1), ("l2", 1.0),
              *(("top", k, c) for k in (20, 50, 100, 200) for c in (0.1, 1.0)))
ABSENT = -30.0  # the logit of a class a model never saw in its rows, relative to the others


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@dataclass(frozen=True)
class Softmax:
    """A fitted multinomial logistic regression as arrays: ``x @ weights + intercept`` are its (n, C) logits."""

    weights: np.ndarray  # (d, C)
    intercept: np.ndarray  # (C,)
    candidate: tuple

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.intercept


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's ``class_weight="balanced"`` per row: n / (classes present * n of the row's class)."""
    counts = np.bincount(y, minlength=n_classes).astype(float)
    return len(y) / ((counts > 0).sum() * counts[y])


def _fit_one(candidate: tuple, x: np.ndarray, y: np.ndarray, n_classes: int, seed: int) -> Softmax:
    from sklearn.feature_selection import f_classif
    from sklearn.linear_model import LogisticRegression

    columns = np.arange(x.shape[1])
    if candidate[0] == "top":
        scores = np.nan_to_num(f_classif(x, y)[0], nan=-np.inf)
        columns = np.sort(np.argsort(scores, kind="mergesort")[-candidate[1]:])
    model = LogisticRegression(C=candidate[-1], class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(x[:, columns], y)
    weights, intercept = np.zeros((x.shape[1], n_classes)), np.full(n_classes, ABSENT)
    seen = model.classes_
    if len(seen) == 2:  # scikit-learn keeps one logit for two classes: the second's, against the first
        coef, b = np.stack([-model.coef_[0], model.coef_[0]]) / 2, np.array([-1, 1]) * model.intercept_[0] / 2
    else:
        coef, b = model.coef_, model.intercept_
    weights[np.ix_(columns, seen)] = coef.T
    intercept[seen] = b - b.mean()
    return Softmax(weights, intercept, candidate)


_FITTED = Memo(256)


def fit_multinomial(x: np.ndarray, y: np.ndarray, rows: np.ndarray, n_classes: int, seed: int,
                    folds: int = 3) -> Softmax | None:
    """A multinomial logistic regression on ``rows``, its candidate (``CANDIDATES``) chosen by class-balanced
    log-loss over stratified inner folds of those rows; None unless it beats the balanced prior (every class
    1/C) by more than 1.64 standard errors of the per-patient paired loss difference, as ``fit_logistic``."""
    return _FITTED.get(digest(x, y, rows, n_classes, seed, folds),
                       lambda: _one_thread(lambda: _fit_multinomial(x, y, rows, n_classes, seed, folds)))


def _inner_splits(yr: np.ndarray, folds: int, seed: int) -> list:
    import warnings

    from sklearn.model_selection import StratifiedKFold

    with warnings.catch_warnings():  # a class rarer than the folds: scikit-learn warns and still splits
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(yr, yr))


def _fit_multinomial(x, y, rows, n_classes, seed, folds):
    yr = y[rows]
    candidates = [c for c in CANDIDATES if c[0] != "top" or c[1] < x.shape[1]]
    oof = np.zeros((len(candidates), len(rows), n_classes))
    for a, b in _inner_splits(yr, folds, seed):
        for k, candidate in enumerate(candidates):
            model = _fit_one(candidate, x[rows[a]], yr[a], n_classes, seed)
            oof[k, b] = softmax(model.decision_function(x[rows[b]]))
    weight = balanced_weights(yr, n_classes)
    loss = -weight * np.log(np.clip(oof[:, np.arange(len(rows)), yr], 1e-7, 1))  # (candidates, rows)
    best = int(np.argmin(loss.mean(1)))
    if not significant_gain(weight * np.log(n_classes) - loss[best]):
        return None
    return _fit_one(candidates[best], x[rows], yr, n_classes, seed)


@dataclass
class SoftmaxStack:
    """Multinomial models of several inputs (None: an input that predicts nothing, its logits 0), combined by a
    multinomial meta-learner on their inner-CV out-of-fold logits."""

    bases: list
    meta: Softmax

    def decision_function(self, xs: list[np.ndarray]) -> np.ndarray:
        return _base_logits(self.bases, xs, self.meta.intercept.shape[0]) @ self.meta.weights + self.meta.intercept


def _base_logits(bases: list, xs: list[np.ndarray], n_classes: int) -> np.ndarray:
    return np.concatenate([np.zeros((len(x), n_classes)) if b is None else b.decision_function(x)
                           for b, x in zip(bases, xs)], axis=1)


_STACKED = Memo(64)


def fit_multinomial_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, n_classes: int, seed: int,
                          inner_folds: int = 5) -> SoftmaxStack:
    """Stacking on ``rows`` only, as ``fit_stack``: each input's ``fit_multinomial``, then a multinomial
    meta-learner (L2, C=1, balanced) on the bases' out-of-fold logits of ``inner_folds``-fold CV on those rows."""
    return _STACKED.get(digest(*xs, y, rows, n_classes, seed, inner_folds),
                        lambda: _one_thread(lambda: _fit_stack(xs, y, rows, n_classes, seed, inner_folds)))


def _fit_stack(xs, y, rows, n_classes, seed, inner_folds):
    bases = [fit_multinomial(x, y, rows, n_classes, seed) for x in xs]
    oof = np.zeros((len(rows), len(xs) * n_classes))
    for a, b in _inner_splits(y[rows], inner_folds, seed):
        refits = [None if base is None else _fit_one(base.candidate, x[rows[a]], y[rows[a]], n_classes, seed)
                  for base, x in zip(bases, xs)]
        oof[b] = _base_logits(refits, [x[rows[b]] for x in xs], n_classes)
    return SoftmaxStack(bases, _fit_one(("l2", 1.0), oof, y[rows], n_classes, seed))


class SoftmaxPredictor:
    """Multinomial models as arrays: per input ``modalities[j]`` weights ``w[j]`` (d, C) and intercepts ``b[j]``
    (C,), their logits concatenated and combined as ``logits @ coef + bias`` (one input: the identity)."""

    def __init__(self, modalities: list[str], w: list[np.ndarray], b: list[np.ndarray], coef: np.ndarray,
                 bias: np.ndarray):
        self.modalities, self.w, self.b = modalities, [np.asarray(v, float) for v in w], [np.asarray(v, float) for v in b]
        self.coef, self.bias = np.asarray(coef, float), np.asarray(bias, float)

    @classmethod
    def of(cls, modalities: list[str], models: list, dims: list[int], n_classes: int, meta: Softmax | None = None):
        w = [np.zeros((d, n_classes)) if m is None else m.weights for m, d in zip(models, dims)]
        b = [np.zeros(n_classes) if m is None else m.intercept for m in models]
        if meta is None:
            return cls(modalities, w, b, np.eye(n_classes), np.zeros(n_classes))
        return cls(modalities, w, b, meta.weights, meta.intercept)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        logits = np.concatenate([inputs[m] @ w + b for m, w, b in zip(self.modalities, self.w, self.b)], axis=1)
        return softmax(logits @ self.coef + self.bias)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"w_{m}": w for m, w in zip(self.modalities, self.w)},
                **{f"b_{m}": b for m, b in zip(self.modalities, self.b)}, "softmax_coef": self.coef, "bias": self.bias}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], modalities: list[str]) -> SoftmaxPredictor:
        order = sorted(modalities)
        return cls(order, [arrays[f"w_{m}"] for m in order], [arrays[f"b_{m}"] for m in order], arrays["softmax_coef"],
                   arrays["bias"])

    def n_weights(self) -> int:
        return int(sum(np.count_nonzero(w) + len(b) for w, b in zip(self.w, self.b)) + self.coef.size + self.bias.size)
