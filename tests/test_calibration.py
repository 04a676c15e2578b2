"""Calibration and the operating point: fitted on validation rows, checked on rows they never saw."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from fusion.calibration import choose_threshold, fit_calibrator, reliability


def _overconfident(n: int, seed: int):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return 1 / (1 + np.exp(-4 * z)), y  # the right ranking, four times too sure


def test_platt_and_isotonic_calibrate_an_overconfident_head_on_rows_they_never_saw():
    p_val, y_val = _overconfident(400, 0)
    p_test, y_test = _overconfident(4000, 1)
    raw = reliability(y_test, p_test)
    for method in ("platt", "isotonic"):
        cal = fit_calibrator(p_val, y_val, method)
        after = reliability(y_test, cal(p_test))
        assert after["ece"] < raw["ece"] / 2 and after["brier"] < raw["brier"], (method, raw, after)
    iso = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p_val, y_val)
    np.testing.assert_allclose(fit_calibrator(p_val, y_val, "isotonic")(p_test), iso.predict(p_test))
    np.testing.assert_array_equal(fit_calibrator(p_val, y_val, "none")(p_test), p_test)
    with pytest.raises(ValueError, match="calibration must be one of none, platt, isotonic"):
        fit_calibrator(p_val, y_val, "beta")


def test_platt_never_turns_a_ranking_round_and_the_threshold_maximises_youden_on_validation():
    p, y = _overconfident(200, 2)
    backwards = fit_calibrator(p, 1 - y, "platt")  # validation rows ranked backwards: a < 0 would invert
    np.testing.assert_array_equal(backwards(p), p)
    t = choose_threshold(p, y)
    sens, spec = ((p >= t) & (y == 1)).sum() / y.sum(), ((p < t) & (y == 0)).sum() / (1 - y).sum()
    for other in np.linspace(0.01, 0.99, 99):
        s2 = ((p >= other) & (y == 1)).sum() / y.sum() + ((p < other) & (y == 0)).sum() / (1 - y).sum()
        assert sens + spec >= s2 - 1e-12
    assert choose_threshold(p, np.ones_like(y)) == 0.5


def test_each_operating_point_picks_its_own_threshold_and_f1_is_scored_at_each_folds_threshold():
    from fusion.metrics import summarise

    p, y = _overconfident(200, 3)
    t = choose_threshold(p, y, "f1")
    f1 = lambda cut: 2 * ((p >= cut) & (y == 1)).sum() / ((p >= cut).sum() + y.sum())  # noqa: E731
    assert all(f1(t) >= f1(other) - 1e-12 for other in np.linspace(0.01, 0.99, 99))
    assert choose_threshold(p, y, "prior") == y.mean() and choose_threshold(p, y, "0.5") == 0.5
    with pytest.raises(ValueError, match="operating point must be one of youden, f1, prior, 0.5"):
        choose_threshold(p, y, "max")
    # Two folds cut at different thresholds: F1 and the accuracies are those of each fold's own cut.
    assign = (np.arange(200) % 2)[None]
    thresholds = np.array([[0.3, 0.7]])
    folds, summary = summarise(y, p[None], assign, resamples=50, thresholds=thresholds)
    pred = p >= np.where(assign[0] == 0, 0.3, 0.7)
    tp, fp, fn = (pred & (y == 1)).sum(), (pred & (y == 0)).sum(), (~pred & (y == 1)).sum()
    assert summary["f1"]["pooled"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary["accuracy"]["pooled"] == pytest.approx((pred == (y == 1)).mean())
    fold0 = assign[0] == 0
    assert folds[0]["accuracy"] == pytest.approx((pred[fold0] == (y[fold0] == 1)).mean())
    assert summary["roc_auc"]["pooled"] == summarise(y, p[None], assign, resamples=50)[1]["roc_auc"]["pooled"]
