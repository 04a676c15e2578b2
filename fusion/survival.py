"""Survival targets: the outcome as scikit-survival holds it, and its metrics with patient-bootstrap CIs.

A survival outcome is a structured array with fields ``event`` (bool) and ``time`` (float), as
``sksurv.util.Surv`` makes; a head predicts a risk score per patient (higher: the event sooner).

The concordance index is computed as a bilinear form over the comparable pairs, ``c = n' (W * K) n /
n' W n`` with ``n`` a resample's count of each patient, ``W[i, j]`` the weight of the pair (i, j) when it is
comparable and ``K[i, j]`` 1, 1/2 or 0 as it is concordant, tied in risk or discordant. One matrix
product then scores every bootstrap resample at once; a resample holding a patient twice counts it as
scikit-survival does the same rows (``tests/test_survival.py`` holds both to it).
"""

from __future__ import annotations

import numpy as np

SURVIVAL_METRICS = ("c_index", "c_index_uno")
TIED_TOL = 1e-8  # scikit-survival's tolerance for a tie in risk


def surv(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    """The structured outcome array, as ``sksurv.util.Surv.from_arrays(event, time)``."""
    out = np.empty(len(time), dtype=[("event", bool), ("time", np.float64)])
    out["event"], out["time"] = np.asarray(event, bool), np.asarray(time, np.float64)
    return out


def is_survival(y: np.ndarray) -> bool:
    return y.dtype.names is not None and "time" in y.dtype.names


def strata(y: np.ndarray) -> np.ndarray:
    """What folds are stratified by: the class, or for survival the event."""
    return y["event"].astype(np.int64) if is_survival(y) else y


def _pairs(y: np.ndarray, risk: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W * K, W): pair weights of the comparable pairs (i had the event, and before j's time, or at j's time
    with j censored), times their concordance."""
    event, time = y["event"], y["time"]
    comparable = event[:, None] & ((time[:, None] < time[None, :]) | ((time[:, None] == time[None, :]) & ~event[None, :]))
    diff = risk[:, None] - risk[None, :]
    k = np.where(np.abs(diff) <= TIED_TOL, 0.5, (diff > 0).astype(float))
    w = comparable * weights[:, None]
    return w * k, w


def uno_weights(y: np.ndarray, tau: float | None = None) -> np.ndarray:
    """Uno's inverse-probability-of-censoring weights per patient (squared, as ``concordance_index_ipcw`` uses
    them), the censoring distribution estimated on ``y`` itself; 0 for times at or past ``tau``."""
    from sksurv.nonparametric import CensoringDistributionEstimator

    cens = CensoringDistributionEstimator().fit(y)
    tau = np.inf if tau is None else tau
    w = np.zeros(len(y))
    inside = y["time"] < tau
    w[inside] = np.square(cens.predict_ipcw(y[inside]))
    return w


def uno_tau(y: np.ndarray) -> float:
    """Where Uno's c-index is truncated: the largest time with an event, past which the censoring weights blow
    up (scikit-survival refuses a tau where the censoring survival reaches 0)."""
    return float(y["time"][y["event"]].max())


def concordance(y: np.ndarray, risk: np.ndarray, counts: np.ndarray | None = None, uno: bool = False) -> np.ndarray:
    """Harrell's (or Uno's) c-index of ``risk``, per row of ``counts`` (resamples, n): how often each patient is
    in a resample; one row of ones without. NaN where a resample holds no comparable pair."""
    counts = np.ones((1, len(y))) if counts is None else np.asarray(counts, float)
    if uno and not y["event"].any():
        return np.full(len(counts), np.nan)
    weights = uno_weights(y, uno_tau(y)) if uno else np.ones(len(y))
    wk, w = _pairs(y, np.asarray(risk, float), weights)
    num = ((counts @ wk) * counts).sum(1)
    den = ((counts @ w) * counts).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(resamples, n) counts of each patient from (resamples, n) bootstrap indices."""
    r = idx.shape[0]
    return np.bincount((np.arange(r)[:, None] * n + idx).ravel(), minlength=r * n).reshape(r, n).astype(float)


def survival_metric(y: np.ndarray, risk: np.ndarray, metric: str, counts: np.ndarray | None = None) -> np.ndarray:
    if metric not in SURVIVAL_METRICS:
        raise ValueError(f"{metric!r} is not a survival metric; they are {', '.join(SURVIVAL_METRICS)}")
    return concordance(y, risk, counts, uno=metric == "c_index_uno")


def risk_groups(y: np.ndarray, oof: np.ndarray, cut: np.ndarray) -> dict:
    """Kaplan-Meier curves of the patients each fold predicts above and below its own cut (the median risk of
    its inner-validation rows, fitted on the training part), first repeat, with the log-rank test."""
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    high = oof[0] > cut[0]
    out: dict = {"cut": "median predicted risk of each fold's inner-validation rows", "groups": {}}
    for name, rows in (("low risk", ~high), ("high risk", high)):
        if rows.sum() == 0:
            continue
        t, s = kaplan_meier_estimator(y["event"][rows], y["time"][rows])
        out["groups"][name] = {"patients": int(rows.sum()), "events": int(y["event"][rows].sum()),
                               "time": t.tolist(), "survival": s.tolist()}
    out["logrank_p"] = None
    if 0 < high.sum() < len(high):
        _, p = compare_survival(y, high.astype(int))
        out["logrank_p"] = float(p)
    return out


def time_dependent_auc(y: np.ndarray, oof: np.ndarray) -> dict | None:
    """Cumulative/dynamic ROC-AUC (scikit-survival's ``cumulative_dynamic_auc``) of the pooled out-of-fold risks at
    the quartiles of the event times: how well the risks separate the patients who had the event by then from
    those still without it, averaged over repeats. None where it is undefined (too few events)."""
    from sksurv.metrics import cumulative_dynamic_auc

    event_times = y["time"][y["event"]]
    times = np.unique(np.quantile(event_times, [0.25, 0.5, 0.75])) if len(event_times) >= 4 else np.array([])
    times = times[(times >= y["time"].min()) & (times < y["time"].max())]
    if not len(times):
        return None
    try:
        runs = [cumulative_dynamic_auc(y, y, oof[r], times) for r in range(oof.shape[0])]
    except ValueError:
        return None
    return {"times": times.tolist(), "auc": np.mean([a for a, _ in runs], axis=0).tolist(),
            "mean_auc": float(np.mean([m for _, m in runs])), "at": "quartiles of the event times"}


MAX_LOG_HAZARD = 50.0  # a risk past this is clipped before exp: its survival is 0 at any time with a hazard


def breslow(risk: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breslow's cumulative baseline hazard of risks ``risk`` (log hazard ratios) on the outcomes ``y`` they were
    fitted on: at each event time, the events over the sum of ``exp(risk)`` of those still at risk."""
    times = np.unique(y["time"][y["event"]])
    e = np.exp(np.clip(risk, -MAX_LOG_HAZARD, MAX_LOG_HAZARD))
    at_risk = (y["time"][None, :] >= times[:, None]) @ e
    events = (y["time"][None, :] == times[:, None]) @ y["event"].astype(float)
    return times, np.cumsum(events / at_risk)


def survival_at(risk: np.ndarray, hazard: tuple[np.ndarray, np.ndarray], grid: np.ndarray) -> np.ndarray:
    """(patients, times) survival probability ``exp(-H0(t) exp(risk))`` at the times of ``grid``."""
    times, cumhaz = hazard
    h0 = np.concatenate([[0.0], cumhaz])[np.searchsorted(times, grid, side="right")]
    return np.exp(-h0[None, :] * np.exp(np.clip(risk, -MAX_LOG_HAZARD, MAX_LOG_HAZARD))[:, None])


def integrated_brier(y: np.ndarray, oof: np.ndarray, fitted: list[dict]) -> dict | None:
    """The integrated Brier score (scikit-survival) of each patient's predicted survival curve (its fold model's
    risk through that model's Breslow baseline hazard, fitted on the fold's training part) over the 10th-90th
    percentiles of the event times, averaged over repeats; beside it the Kaplan-Meier curve of all patients, the
    no-model reference (lower is better; censoring weights from the pooled patients). None where undefined."""
    from sksurv.metrics import integrated_brier_score
    from sksurv.nonparametric import kaplan_meier_estimator

    event_times = y["time"][y["event"]]
    if len(event_times) < 4:
        return None
    grid = np.unique(np.percentile(event_times, np.arange(10, 91, 10)))
    grid = grid[(grid > y["time"].min()) & (grid < y["time"].max())]
    if len(grid) < 2:
        return None
    scores = []
    for r in range(oof.shape[0]):
        curves = np.zeros((len(y), len(grid)))
        for rec in fitted:
            if rec["repeat"] == r:
                curves[rec["test"]] = survival_at(oof[r, rec["test"]], rec["baseline_hazard"], grid)
        scores.append(integrated_brier_score(y, y, curves, grid))
    t, s = kaplan_meier_estimator(y["event"], y["time"])
    km = np.concatenate([[1.0], s])[np.searchsorted(t, grid, side="right")]
    reference = integrated_brier_score(y, y, np.tile(km, (len(y), 1)), grid)
    return {"ibs": float(np.mean(scores)), "ibs_kaplan_meier": float(reference), "times": grid.tolist(),
            "at": "10th-90th percentiles of the event times"}
