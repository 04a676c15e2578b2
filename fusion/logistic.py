"""Penalised logistic regression, its penalty (or gene screening) chosen by inner CV: the logreg and stack
baselines, and the fitted linear logits the fusion heads start from."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.memo import Memo, digest

# The candidates fit_logistic chooses among by inner CV: on every input, L1 (sparse: a few informative genes
# among thousands) or L2 (dense signal) at several strengths; and on inputs wider than k, the k inputs with
# the largest univariate F statistic (fitted on the rows being fitted, so inside each inner fold too) under a
# light L2 penalty. The lasso shrinks a few strong genes while it lets noise genes in, and fell well behind
# XGBoost where a few of thousands of genes are informative (docs/heads.md, "Measurements behind the code").
CANDIDATES = (("l1", 0.01), ("l1", 0.03), ("l1", 0.1), ("l1", 0.3), ("l1", 1.0),
              ("l2", 1e-3), ("l2", 1e-2), ("l2", 0.1), ("l2", 1.0),
              *(("top", k, c) for k in (10, 20, 50, 100, 200) for c in (0.01, 0.1, 1.0)))


def _candidates(n_features: int) -> list[tuple]:
    return [p for p in CANDIDATES if p[0] != "top" or p[1] < n_features]


def _logistic(candidate: tuple, seed: int):
    from sklearn.linear_model import LogisticRegression

    kind, c = candidate[0], candidate[-1]
    model = LogisticRegression(l1_ratio=1.0 if kind == "l1" else 0.0, C=c, solver="liblinear" if kind == "l1" else "lbfgs",
                               max_iter=3000, class_weight="balanced", random_state=seed)
    if kind != "top":
        return model
    from sklearn.feature_selection import SelectKBest, f_classif
    from sklearn.pipeline import make_pipeline

    return make_pipeline(SelectKBest(f_classif, k=candidate[1]), model)


def linear_weights(model) -> tuple[np.ndarray, float]:
    """A fitted ``fit_logistic`` model as one weight per input column (0 for a column it does not use) and an
    intercept: ``x @ weights + intercept`` is its logit."""
    if hasattr(model, "coef_"):
        return model.coef_[0].copy(), float(model.intercept_[0])
    select, logistic = model[0], model[-1]
    weights = np.zeros(len(select.get_support()))
    weights[select.get_support()] = logistic.coef_[0]
    return weights, float(logistic.intercept_[0])


_FITTED = Memo(256)  # fit_logistic's results by a digest of all its inputs


def _one_blas_thread(fit):
    """``fit()`` with BLAS on one thread. These fits are small (hundreds of rows, one model at a time), where
    OpenBLAS's threads cost more than they give (docs/heads.md, "Measurements behind the code"); and one
    thread sums in one order, so the fitted models are the same on any number of cores."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        return fit()


def fit_logistic(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int = 3):
    """A logistic regression on ``rows``, its penalty or gene screening (``CANDIDATES``) chosen by stratified CV
    log-loss on those rows only.

    Returns None unless the chosen model beats the intercept alone (the balanced class prior) by more
    than 1.64 standard errors of the per-patient paired log-loss difference (one-sided 95%): an input
    that predicts nothing on held-out rows is left out rather than fitted to noise.

    A pure function of its inputs, so its results are kept by a digest of them (``fusion.memo``): the
    fusion heads of a bench warm-start from the same fold inputs, and each would otherwise refit the same
    72 models.
    """
    return _FITTED.get(digest(x, y, rows, seed, folds), lambda: _one_blas_thread(lambda: _fit_logistic(x, y, rows, seed, folds)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int):
    from sklearn.model_selection import StratifiedKFold

    yr = y[rows]
    candidates = _candidates(x.shape[1])
    oof = np.zeros((len(candidates), len(rows)))
    for a, b in StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, yr):
        for k, candidate in enumerate(candidates):
            oof[k, b] = _logistic(candidate, seed).fit(x[rows[a]], yr[a]).predict_proba(x[rows[b]])[:, 1]
    p = np.clip(oof, 1e-7, 1 - 1e-7)
    # Per-patient log-loss with balanced class weights, the loss the models were fitted with.
    weight = len(yr) / (2 * np.bincount(yr, minlength=2).clip(1))[yr]
    loss = -weight * (yr * np.log(p) + (1 - yr) * np.log(1 - p))  # (candidates, rows)
    best = int(np.argmin(loss.mean(1)))
    gain = weight * np.log(2.0) - loss[best]  # against the balanced intercept-only model, p = 0.5
    if not significant_gain(gain):
        return None
    return _logistic(candidates[best], seed).fit(x[rows], yr)


def significant_gain(gain: np.ndarray) -> bool:
    """Whether per-patient gains (paired loss differences) are above 0 by more than 1.64 standard errors of
    their mean: one-sided 95%, the bar an input (``fit_logistic``) and a trained head (the trainer's warm-start
    rule) must clear."""
    return len(gain) > 1 and bool(gain.mean() > 1.64 * gain.std(ddof=1) / np.sqrt(len(gain)))


def _logit(model, x: np.ndarray) -> np.ndarray:
    return np.zeros(len(x)) if model is None else model.decision_function(x)


@dataclass
class Stack:
    """Logistic regressions of several inputs (None: an input that predicts nothing), combined by a logistic
    meta-learner on their inner-CV out-of-fold logits: ``meta_coef @ [logit_1, ...] + meta_intercept``."""

    bases: list
    meta_coef: np.ndarray
    meta_intercept: float

    def decision_function(self, xs: list[np.ndarray]) -> np.ndarray:
        return np.stack([_logit(b, x) for b, x in zip(self.bases, xs)], axis=1) @ self.meta_coef + self.meta_intercept


_STACKED = Memo(64)  # fit_stack's results by a digest of all its inputs


def fit_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int, inner_folds: int = 5) -> Stack:
    """Stacking on ``rows`` only: each input's ``fit_logistic``, then a logistic meta-learner (L2, C=1, balanced)
    on the bases' out-of-fold logits from ``inner_folds``-fold CV on those rows.

    Each base model's penalty is chosen once, on ``rows`` (fit_logistic's own inner CV); the out-of-fold logits
    are refits of that model on the inner folds. Choosing it again inside every inner fold (nested) cost 5x
    the time for the same penalties."""
    return _STACKED.get(digest(*xs, y, rows, seed, inner_folds),
                        lambda: _one_blas_thread(lambda: _fit_stack(xs, y, rows, seed, inner_folds)))


def _fit_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int, inner_folds: int) -> Stack:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    bases = [fit_logistic(x, y, rows, seed) for x in xs]
    oof = np.zeros((len(rows), len(xs)))
    for a, b in StratifiedKFold(inner_folds, shuffle=True, random_state=seed).split(rows, y[rows]):
        for j, (base, x) in enumerate(zip(bases, xs)):
            refit = None if base is None else clone(base).fit(x[rows[a]], y[rows[a]])
            oof[b, j] = _logit(refit, x[rows[b]])
    meta = _logistic(("l2", 1.0), seed).fit(oof, y[rows])
    return Stack(bases, meta.coef_[0].copy(), float(meta.intercept_[0]))
