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


# Above this many columns an L2 candidate goes to scikit-learn's lbfgs: a Newton step costs columns^2 x rows
# there, and lbfgs on the full gene matrix was already quick; the batched solver is for the many small models.
NEWTON_MAX_COLUMNS = 128


def _candidates(n_features: int) -> list[tuple]:
    return [p for p in CANDIDATES if p[0] != "top" or p[1] < n_features]


@dataclass(frozen=True)
class Linear:
    """A fitted logistic regression as arrays: one weight per input column (0 for a column screened out or
    shrunk to 0) and an intercept; ``candidate`` is the penalty it was fitted with."""

    weights: np.ndarray
    intercept: float
    candidate: tuple

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weights + self.intercept


def linear_weights(model: Linear) -> tuple[np.ndarray, float]:
    """A fitted ``fit_logistic`` model as one weight per input column and an intercept: ``x @ weights +
    intercept`` is its logit."""
    return model.weights.copy(), model.intercept


def _sklearn(candidate: tuple, x: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    kind, c = candidate[0], candidate[-1]
    # liblinear for L1, as before: its intercept is penalised like a weight (intercept_scaling=1).
    model = LogisticRegression(l1_ratio=1.0 if kind == "l1" else 0.0, C=c, solver="liblinear" if kind == "l1" else "lbfgs",
                               max_iter=3000, class_weight="balanced", random_state=seed).fit(x, y)
    return model.coef_[0], float(model.intercept_[0])


def _screen_order(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Columns by rising univariate F statistic, as ``SelectKBest(f_classif)`` ranks them (its last k are kept)."""
    from sklearn.feature_selection import f_classif

    scores = f_classif(x, y)[0]
    scores[np.isnan(scores)] = np.finfo(scores.dtype).min  # a constant column ranks last, as SelectKBest has it
    return np.argsort(scores, kind="mergesort")


def fit_candidates(x: np.ndarray, y: np.ndarray, problems: list[tuple[tuple, np.ndarray]], seed: int) -> list[Linear]:
    """One model per (candidate, rows) on ``x[rows]``: the L2 and screened candidates on at most
    ``NEWTON_MAX_COLUMNS`` columns as batched Newton problems (``fusion.newton``), the rest through
    scikit-learn. Each is scikit-learn's model for that candidate: ``LogisticRegression(class_weight=
    "balanced")``, behind ``SelectKBest(f_classif, k)`` for the screened ones."""
    from fusion.newton import balanced_weights, fit_l2

    out: list[Linear | None] = [None] * len(problems)
    orders: dict[bytes, np.ndarray] = {}
    groups: dict[int, list[tuple[int, np.ndarray, np.ndarray, float]]] = {}  # columns -> (problem, rows, columns, C)
    for i, (candidate, rows) in enumerate(problems):
        columns = np.arange(x.shape[1])
        if candidate[0] == "top":
            key = rows.tobytes()
            if key not in orders:
                orders[key] = _screen_order(x[rows], y[rows])
            columns = np.sort(orders[key][-candidate[1]:])
        if candidate[0] == "l1" or len(columns) > NEWTON_MAX_COLUMNS:
            out[i] = Linear(*_sklearn(candidate, x[rows], y[rows], seed), candidate)
        else:
            groups.setdefault(len(columns), []).append((i, rows, columns, candidate[-1]))
    for k, group in groups.items():
        n = max(len(rows) for _, rows, _, _ in group)
        z, yy, sw = np.zeros((len(group), n, k)), np.zeros((len(group), n)), np.zeros((len(group), n))
        for j, (_, rows, columns, _) in enumerate(group):
            z[j, :len(rows)] = x[np.ix_(rows, columns)]
            yy[j, :len(rows)], sw[j, :len(rows)] = y[rows], balanced_weights(y[rows])
        w, b = fit_l2(z, yy, sw, np.array([c for *_, c in group]))
        for j, (i, _, columns, _) in enumerate(group):
            weights = np.zeros(x.shape[1])
            weights[columns] = w[j]
            out[i] = Linear(weights, float(b[j]), problems[i][0])
    return out


_FITTED = Memo(256)  # fit_logistic's results by a digest of all its inputs


def _one_thread(fit):
    """``fit()`` with BLAS and torch on one thread. These fits are small (hundreds of rows), where threads cost
    more than they give (docs/heads.md, "Measurements behind the code"); and one thread sums in one order, so
    the fitted models are the same on any number of cores."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            return fit()
    finally:
        torch.set_num_threads(threads)


def fit_logistic(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int = 3) -> Linear | None:
    """A logistic regression on ``rows``, its penalty or gene screening (``CANDIDATES``) chosen by stratified CV
    log-loss on those rows only.

    Returns None unless the chosen model beats the intercept alone (the balanced class prior) by more
    than 1.64 standard errors of the per-patient paired log-loss difference (one-sided 95%): an input
    that predicts nothing on held-out rows is left out rather than fitted to noise.

    A pure function of its inputs, so its results are kept by a digest of them (``fusion.memo``): the
    fusion heads of a bench warm-start from the same fold inputs, and each would otherwise refit the same
    72 models.
    """
    return _FITTED.get(digest(x, y, rows, seed, folds), lambda: _one_thread(lambda: _fit_logistic(x, y, rows, seed, folds)))


def _fit_logistic(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int) -> Linear | None:
    from sklearn.model_selection import StratifiedKFold

    from fusion.newton import balanced_weights

    yr = y[rows]
    candidates = _candidates(x.shape[1])
    oof = np.zeros((len(candidates), len(rows)))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, yr))
    fits = fit_candidates(x, y, [(candidate, rows[a]) for a, _ in splits for candidate in candidates], seed)
    for f, (_, b) in enumerate(splits):
        for k in range(len(candidates)):
            oof[k, b] = _sigmoid(fits[f * len(candidates) + k].decision_function(x[rows[b]]))
    p = np.clip(oof, 1e-7, 1 - 1e-7)
    # Per-patient log-loss with balanced class weights, the loss the models were fitted with.
    weight = balanced_weights(yr)
    loss = -weight * (yr * np.log(p) + (1 - yr) * np.log(1 - p))  # (candidates, rows)
    best = int(np.argmin(loss.mean(1)))
    gain = weight * np.log(2.0) - loss[best]  # against the balanced intercept-only model, p = 0.5
    if not significant_gain(gain):
        return None
    return fit_candidates(x, y, [(candidates[best], rows)], seed)[0]


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


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
                        lambda: _one_thread(lambda: _fit_stack(xs, y, rows, seed, inner_folds)))


def _fit_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int, inner_folds: int) -> Stack:
    from sklearn.model_selection import StratifiedKFold

    bases = [fit_logistic(x, y, rows, seed) for x in xs]
    oof = np.zeros((len(rows), len(xs)))
    splits = list(StratifiedKFold(inner_folds, shuffle=True, random_state=seed).split(rows, y[rows]))
    for j, (base, x) in enumerate(zip(bases, xs)):
        if base is None:
            continue
        refits = fit_candidates(x, y, [(base.candidate, rows[a]) for a, _ in splits], seed)
        for refit, (_, b) in zip(refits, splits):
            oof[b, j] = refit.decision_function(x[rows[b]])
    meta = fit_candidates(oof, y[rows], [(("l2", 1.0), np.arange(len(rows)))], seed)[0]
    return Stack(bases, meta.weights, meta.intercept)
