"""The batched Newton solver behind fit_logistic: the same models, and the same choice, as scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline

from fusion.logistic import _candidates, fit_candidates, fit_logistic
from fusion.newton import balanced_weights, fit_l2


def _data(n: int = 240, d: int = 60, informative: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = (x[:, :informative].sum(1) / np.sqrt(informative) + rng.standard_normal(n) > 0.3).astype(int)
    return x, y


def _reference(candidate: tuple, x: np.ndarray, y: np.ndarray):
    """scikit-learn's model for a candidate, solved far past its default tolerance."""
    kind, c = candidate[0], candidate[-1]
    model = LogisticRegression(C=c, l1_ratio=1.0 if kind == "l1" else 0.0, solver="liblinear" if kind == "l1" else "lbfgs",
                               class_weight="balanced", tol=1e-6 if kind == "l1" else 1e-10, max_iter=10_000,
                               random_state=0)
    return make_pipeline(SelectKBest(f_classif, k=candidate[1]), model) if kind == "top" else model


def _as_weights(model, d: int) -> tuple[np.ndarray, float]:
    if hasattr(model, "coef_"):
        return model.coef_[0], float(model.intercept_[0])
    weights = np.zeros(d)
    weights[model[0].get_support()] = model[-1].coef_[0]
    return weights, float(model[-1].intercept_[0])


def test_newton_reaches_scikit_learns_optimum_with_sample_weights_and_padding():
    x, y = _data()
    rows = [np.arange(0, 240, 2), np.arange(240)]  # two sizes: the shorter one padded with weight-0 rows
    cs = [0.01, 1.0]
    z, yy, sw = np.zeros((2, 240, 60)), np.zeros((2, 240)), np.zeros((2, 240))
    for i, r in enumerate(rows):
        z[i, :len(r)], yy[i, :len(r)], sw[i, :len(r)] = x[r], y[r], balanced_weights(y[r])
    z[0, len(rows[0]):] = 99.0  # padding must not count, whatever it holds
    w, b = fit_l2(z, yy, sw, np.array(cs))
    for i, (r, c) in enumerate(zip(rows, cs)):
        ref = _reference(("l2", c), x[r], y[r]).fit(x[r], y[r])
        np.testing.assert_allclose(w[i], ref.coef_[0], atol=1e-6)
        assert abs(b[i] - ref.intercept_[0]) < 1e-6


@pytest.mark.parametrize("candidate", [("l2", 1e-3), ("l2", 1.0), ("top", 10, 0.1), ("top", 50, 1.0), ("l1", 0.1)])
def test_every_candidate_is_scikit_learns_model(candidate):
    x, y = _data()
    rows = np.arange(30, 240)
    fitted = fit_candidates(x, y, [(candidate, rows)], seed=0)[0]
    ref = _reference(candidate, x[rows], y[rows]).fit(x[rows], y[rows])
    weights, intercept = _as_weights(ref, x.shape[1])
    # liblinear (the L1 candidates) stops at its default tolerance in fit_logistic, as before.
    tol = 1e-2 if candidate[0] == "l1" else 1e-4
    np.testing.assert_allclose(fitted.weights, weights, atol=tol)
    assert abs(fitted.intercept - intercept) < tol
    assert fitted.candidate == candidate


def test_fit_logistic_chooses_the_candidate_scikit_learn_would_and_fits_it_on_every_row():
    """The inner-CV choice made with scikit-learn's models (tight tolerance) is the one fit_logistic makes."""
    x, y = _data(n=300, d=150, informative=5, seed=3)
    rows = np.arange(300)
    candidates = _candidates(x.shape[1])
    oof = np.zeros((len(candidates), len(rows)))
    for a, b in StratifiedKFold(3, shuffle=True, random_state=0).split(rows, y):
        for k, candidate in enumerate(candidates):
            oof[k, b] = _reference(candidate, x[a], y[a]).fit(x[a], y[a]).predict_proba(x[b])[:, 1]
    p = np.clip(oof, 1e-7, 1 - 1e-7)
    weight = balanced_weights(y)
    loss = (-weight * (y * np.log(p) + (1 - y) * np.log(1 - p))).mean(1)
    chosen = fit_logistic(x, y, rows, seed=0)
    assert chosen.candidate == candidates[int(np.argmin(loss))]
    assert sorted(loss)[1] - sorted(loss)[0] > 1e-3, "the data must not make this a near tie"
    weights, intercept = _as_weights(_reference(chosen.candidate, x, y).fit(x, y), x.shape[1])
    tol = 1e-2 if chosen.candidate[0] == "l1" else 1e-4
    np.testing.assert_allclose(chosen.weights, weights, atol=tol)
    assert abs(chosen.intercept - intercept) < tol

