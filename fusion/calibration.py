"""Calibration and the operating point, both fitted on a fold's inner validation rows, never its test fold."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from fusion.multiclass import apply_temperature, fit_temperature

CALIBRATIONS = ("none", "platt", "isotonic")
MULTICLASS_ISOTONIC = ("--calibrate isotonic fits one curve to two classes; for more than two use platt (temperature "
                       "scaling) or none")


@dataclass
class Calibrator:
    """A monotone map from a head's probabilities to calibrated ones, kept as plain numbers (model.json)."""

    method: str = "none"
    a: float = 1.0  # platt: sigmoid(a * logit(p) + b); temperature (C classes): softmax(a * log p)
    b: float = 0.0
    x: list[float] = field(default_factory=list)  # isotonic: piecewise-linear through (x, y), clipped
    y: list[float] = field(default_factory=list)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, float)
        if self.method == "platt":
            return expit(self.a * logit(p) + self.b)  # scipy's: no overflow warning for a far-out logit
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        if self.method == "temperature":
            return apply_temperature(p, self.a)
        return p


def fit_calibrator(p_val: np.ndarray, y_val: np.ndarray, method: str) -> Calibrator:
    """Fitted on inner-validation rows. ``platt``: logistic regression on the logit (two parameters,
    stable on the few rows an inner split has); ``isotonic``: scikit-learn's isotonic regression
    (free-form, needs more rows); ``none``: the identity. For (n, C) class probabilities ``platt`` is
    temperature scaling, its one-parameter multi-class analogue; isotonic is refused."""
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {method!r}")
    if method == "none" or len(np.unique(y_val)) < 2:
        return Calibrator()
    if np.ndim(p_val) == 2:
        if method == "isotonic":
            raise ValueError(MULTICLASS_ISOTONIC)
        return Calibrator("temperature", a=fit_temperature(p_val, y_val))
    if method == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p_val, y_val)
        return Calibrator("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4).fit(logit(p_val)[:, None], y_val)  # nearly unpenalised: two parameters
    if lr.coef_[0, 0] <= 0:  # a few validation rows ranked backwards must not turn the head's ranking round
        return Calibrator()
    return Calibrator("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))


def logit(p: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)), with p clipped away from 0 and 1."""
    p = np.clip(np.asarray(p, float), 1e-12, 1 - 1e-12)
    return np.log(p / (1 - p))


# How each fold's threshold is chosen on its inner-validation rows (calibrated probabilities), by name.
OPERATING_POINTS = {
    "youden": "Youden's J (sensitivity + specificity - 1) at its maximum",
    "f1": "F1 of the positive class at its maximum",
    "prior": "the positive class's share of the rows (for calibrated probabilities, the cut that treats both "
             "classes' errors alike)",
    "0.5": "0.5, fixed",
}


def choose_threshold(p_val: np.ndarray, y_val: np.ndarray, rule: str = "youden") -> float:
    """The threshold ``rule`` (``OPERATING_POINTS``) picks on inner-validation rows, placed midway between
    neighbouring scores; 0.5 when the rows hold one class only."""
    if rule not in OPERATING_POINTS:
        raise ValueError(f"operating point must be one of {', '.join(OPERATING_POINTS)}, got {rule!r}")
    y_val = np.asarray(y_val).astype(bool)
    if rule == "0.5" or y_val.all() or not y_val.any():
        return 0.5
    if rule == "prior":
        return float(y_val.mean())
    cuts = np.unique(p_val)
    cands = np.concatenate([[cuts[0] - 1e-9], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1e-9]]) if len(cuts) > 1 else cuts
    pred = p_val[None, :] >= cands[:, None]
    tp = (pred & y_val).sum(1)
    if rule == "f1":
        score = 2 * tp / (tp + pred.sum(1) + y_val.sum())
    else:
        score = tp / y_val.sum() + (~pred & ~y_val).sum(1) / (~y_val).sum()
    return float(cands[int(np.argmax(score))])


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict:
    """Brier score, expected calibration error over equal-width bins, and the bins themselves."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            conf, freq = float(p[sel].mean()), float(y[sel].mean())
            ece += sel.mean() * abs(conf - freq)
            rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(sel.sum()),
                         "mean_predicted": conf, "observed": freq})
    return {"brier": float(((p - y) ** 2).mean()), "ece": float(ece), "bins": rows}


def operating_point(y: np.ndarray, oof: np.ndarray, thresholds: np.ndarray, assign: np.ndarray,
                    rule: str = "youden") -> dict:
    """Confusion matrix, sensitivity and specificity of the out-of-fold predictions, each fold cut at the
    threshold chosen on its own inner validation (``thresholds``: (R, folds)); pooled over repeats."""
    y = np.asarray(y).astype(bool)
    tp = fp = tn = fn = 0
    for r in range(oof.shape[0]):
        cut = thresholds[r, assign[r]]
        pred = oof[r] >= cut
        tp += int((pred & y).sum())
        fp += int((pred & ~y).sum())
        tn += int((~pred & ~y).sum())
        fn += int((~pred & y).sum())
    return {"thresholds": np.round(thresholds, 6).tolist(), "rule": rule,
            "chosen_on": f"inner validation: {OPERATING_POINTS[rule]}",
            "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
            "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1)}
