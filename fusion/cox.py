"""Penalised Cox models for survival targets (scikit-survival's Coxnet): the coxnet baselines and the stack of a
gene and an image model. Each penalty is chosen by inner CV on the rows being fitted, as ``fit_logistic``
chooses its own, and each fitted model is plain arrays (``Linear``), its risk ``x @ weights + intercept``."""

from __future__ import annotations

import warnings

import numpy as np

from fusion.baselines import LinearPredictor, _n_weights
from fusion.logistic import Linear, Stack
from fusion.memo import Memo, digest
from fusion.registry import GENES, IMAGE, register_head
from fusion.survival import concordance

# Elastic-net mixes searched (1.0: the lasso); each with its own path of strengths from the all-zero model down.
L1_RATIOS = (0.1, 0.5, 1.0)
N_ALPHAS = 25
ALPHA_MIN_RATIO = 0.02


def _coxnet(l1_ratio: float, alphas=None):
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    return CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas, n_alphas=N_ALPHAS, alpha_min_ratio=ALPHA_MIN_RATIO,
                                  max_iter=100000)


def _fit_path(x: np.ndarray, y: np.ndarray, l1_ratio: float, alphas=None) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (features, alphas) along the path, and the path. A strength at which coordinate descent
    does not converge is refitted by scikit-survival itself; its warning says nothing the choice needs. Coxnet
    stops a path early where the fit saturates; the strengths it skipped take its last coefficients, so a path
    given ``alphas`` always has one column per strength."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _coxnet(l1_ratio, alphas).fit(x, y)
    coef = model.coef_
    if alphas is not None and coef.shape[1] < len(alphas):
        coef = np.concatenate([coef, np.repeat(coef[:, -1:], len(alphas) - coef.shape[1], axis=1)], axis=1)
    return coef, model.alphas_


def _scaled(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x`` standardised by the mean and spread of ``rows`` only (a constant column keeps a spread of 1)."""
    mean, std = x[rows].mean(0), x[rows].std(0)
    std[std == 0] = 1.0
    return (x - mean) / std, mean, std


def _as_linear(coef: np.ndarray, mean: np.ndarray, std: np.ndarray, candidate: tuple) -> Linear:
    weights = coef / std
    return Linear(weights, float(-mean @ weights), candidate)


_FITTED = Memo(256)


def fit_coxnet(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int = 3) -> Linear | None:
    """A Cox model on ``rows``: its elastic-net mix (``L1_RATIOS``) and strength chosen by the mean Harrell's
    c-index over ``folds`` inner folds of those rows (stratified by event). None when the choice is the
    all-zero model: the input ranks nothing on held-out rows."""
    return _FITTED.get(digest(x, y, rows, seed, folds), lambda: _fit_coxnet(x, y, rows, seed, folds))


def _fit_coxnet(x: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int, folds: int) -> Linear | None:
    from sklearn.model_selection import StratifiedKFold

    xs, mean, std = _scaled(x, rows)
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(rows, y["event"][rows]))
    best = (0.5, None)  # to be chosen, a model must rank held-out patients better than one risk for all
    for l1_ratio in L1_RATIOS:
        try:
            _, alphas = _fit_path(xs[rows], y[rows], l1_ratio)
            scores = np.zeros(len(alphas))
            for a, b in splits:
                coef, _ = _fit_path(xs[rows[a]], y[rows[a]], l1_ratio, alphas)
                risk = xs[rows[b]] @ coef  # (rows, alphas)
                scores += np.nan_to_num([concordance(y[rows[b]], risk[:, k])[0] for k in range(len(alphas))], nan=0.5)
        except ArithmeticError:  # Coxnet's coordinate descent diverged on this mix: it is no candidate
            continue
        scores /= folds
        k = int(np.argmax(scores))  # the first best: the strongest penalty among equals
        if scores[k] > best[0]:
            best = (scores[k], (l1_ratio, tuple(map(float, alphas)), k))
    if best[1] is None:
        return None
    l1_ratio, alphas, k = best[1]
    coef, _ = _fit_path(xs[rows], y[rows], l1_ratio, np.array(alphas))
    if not np.any(coef[:, k]):
        return None
    return _as_linear(coef[:, k], mean, std, ("coxnet", l1_ratio, alphas, k))


def _refit(model: Linear, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> Linear:
    """``model``'s mix and strength, refitted on ``rows``."""
    _, l1_ratio, alphas, k = model.candidate
    xs, mean, std = _scaled(x, rows)
    coef, _ = _fit_path(xs[rows], y[rows], l1_ratio, np.array(alphas))
    return _as_linear(coef[:, k], mean, std, model.candidate)


_STACKED = Memo(64)


def fit_cox_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int, inner_folds: int = 5) -> Stack:
    """Stacking for survival on ``rows`` only: each input's ``fit_coxnet``, then a Cox meta-learner (lightly
    ridge-penalised) on the bases' out-of-fold risks from ``inner_folds``-fold CV on those rows."""
    return _STACKED.get(digest(*xs, y, rows, seed, inner_folds), lambda: _fit_cox_stack(xs, y, rows, seed, inner_folds))


def _fit_cox_stack(xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int, inner_folds: int) -> Stack:
    from sklearn.model_selection import StratifiedKFold
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    bases = [fit_coxnet(x, y, rows, seed) for x in xs]
    used = [j for j, b in enumerate(bases) if b is not None]
    coef = np.zeros(len(xs))
    if not used:
        return Stack(bases, coef, 0.0)
    oof = np.zeros((len(rows), len(used)))
    splits = StratifiedKFold(inner_folds, shuffle=True, random_state=seed).split(rows, y["event"][rows])
    for a, b in splits:
        for col, j in enumerate(used):
            oof[b, col] = _refit(bases[j], xs[j], y, rows[a]).decision_function(xs[j][rows[b]])
    meta = CoxPHSurvivalAnalysis(alpha=1e-2).fit(oof, y[rows])
    coef[used] = meta.coef_
    return Stack(bases, coef, 0.0)


class RiskPredictor(LinearPredictor):
    """Cox models as arrays: the predicted risk is the linear predictor itself (higher: the event sooner)."""

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.logit(inputs)


SURVIVAL = ("survival",)


@register_head("coxnet", {GENES}, "sklearn",
               "Penalised Cox regression on the fold-locally scaled genes (scikit-survival's Coxnet): the elastic-net "
               "mix and strength chosen by inner-CV c-index on the fold's training part.", targets=SURVIVAL)
def _coxnet_genes(*, seed: int, threads: int):
    return _single(GENES, seed)


@register_head("image_coxnet", {IMAGE}, "sklearn",
               "Penalised Cox regression on the bag mean of the fold-locally projected tokens: the survival bar "
               "for the image, as coxnet is for the genes.", targets=SURVIVAL)
def _coxnet_image(*, seed: int, threads: int):
    return _single(IMAGE, seed)


def _single(modality: str, seed: int):
    def fit(inputs, y, tr, val):
        model = fit_coxnet(inputs[modality], y, np.concatenate([tr, val]), seed)
        return (RiskPredictor.of([modality], [model], [inputs[modality].shape[1]]),
                0 if model is None else _n_weights(model))
    return fit


@register_head("stack_cox", {GENES, IMAGE}, "sklearn",
               "Stacking for survival, the simplest learned late fusion: a gene Coxnet and an image Coxnet, their "
               "inner-CV out-of-fold risks combined by a Cox meta-learner; everything fitted on the fold's "
               "training part.", targets=SURVIVAL)
def _stack_cox(*, seed: int, threads: int, inner_folds: int = 5):
    def fit(inputs, y, tr, val):
        stack = fit_cox_stack([inputs[GENES], inputs[IMAGE]], y, np.concatenate([tr, val]), seed, inner_folds)
        predictor = RiskPredictor.of([GENES, IMAGE], stack.bases, [inputs[GENES].shape[1], inputs[IMAGE].shape[1]],
                                     stack.meta_coef, stack.meta_intercept)
        return predictor, 2 + sum(_n_weights(b) for b in stack.bases if b is not None)
    return fit
