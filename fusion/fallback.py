"""The trainer's fallback rules: what a fusion head's training has to show on the inner-validation patients
before it is kept (``TrainConfig.fallback``).

- ``fusion`` (the default): the unimodal branches are kept as early stopping picks them; the fusion term (the
  second stage, gate open) only where it ranks the patients significantly better than those branches alone.
- ``significant``: all training must rank them significantly better than the warm start (the stacked unimodal
  linear models), or the fold goes back to it.
- ``never``: what early stopping picks, always (the ablation).

``benchmarks/keep_test.py`` measures them against each other; docs/heads.md says why the default is what it is."""

from __future__ import annotations

import numpy as np
import torch

from fusion.logistic import significant_gain
from fusion.survival import is_survival

_SIGNIFICANT = "by > 1.64 SE of the per-patient loss on the inner validation rows, both recalibrated (Platt) on them"
# Each rule in the words metrics.json gives it.
FALLBACKS = {
    "fusion": "the unimodal branches kept as early stopping picks them; the fusion term kept only where it beats "
              "those branches alone " + _SIGNIFICANT,
    "significant": "training kept only where it beats the warm start (the stacked linear models) " + _SIGNIFICANT
                   + ", or where the warm start is a constant (neither linear model fitted)",
    "never": "training kept as early stopping picks it",
}


def copy_models(dst: dict[str, torch.Tensor], src: dict[str, torch.Tensor], which: torch.Tensor) -> None:
    """Copy the models picked by the boolean ``which`` (M,) from one state dict into another, in place: every
    tensor with a leading model axis holds one slice per model."""
    for k, v in dst.items():
        if v.dim() and v.shape[0] == len(which):
            v[which] = src[k][which]


def back_to_warm_start_unless_significant(model, start_state: dict, start_logits: torch.Tensor,
                                           trained_logits: torch.Tensor, y: torch.Tensor,
                                           weight: torch.Tensor) -> list[bool]:
    """Per model, go back to the warm start (the fitted unimodal linear models) unless the trained weights rank
    the inner-validation patients significantly better (``significant_gain`` on the per-patient losses: the bar
    ``fit_logistic`` puts an input to). Logits and labels are (M, V); ``weight`` is each patient's class
    weight, 0 for padding. Returns which models kept training.

    Early stopping picks the best of tens of epochs on the same few validation patients, so the loss it
    keeps is biased low: measured on null image bags (1,000 patients), fusion heads kept an attention branch
    fitted to noise and fell 0.006-0.019 ROC-AUC below the gene model they started from.

    Both are compared after each is recalibrated on those patients (``recalibrated_losses``): the penalised
    linear models of the warm start are shrunk, so training lowered the validation loss by sharpening the
    gene logit alone, in every fold of the null-image cell, and that passed the test while the ranking got
    worse (concat, fold 0: test ROC-AUC 0.782 -> 0.739). Calibration is fitted afterwards anyway; what
    training must add is discrimination.

    A model whose warm start is a constant (neither linear model beat the intercept) keeps its training
    whatever the test says: a constant ranks nothing, so there is no ranking to protect, and the bar is
    hardest to clear exactly where the signal needs a non-linear model (patterns in a minority of patches)
    and the validation part is small (24 patients in a 200-patient cohort)."""
    keep = significantly_better(start_logits, trained_logits, y, weight)
    keep |= torch.tensor(getattr(model, "warm_constant", [False] * len(keep)))
    copy_models(model.state_dict(), start_state, ~keep)
    return keep.tolist()


def significantly_better(before: torch.Tensor, after: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(M,) whether the logits ``after`` rank the validation patients better than ``before`` by more than 1.64
    SE of the per-patient difference of recalibrated losses; (M, V) inputs, ``weight`` 0 for padding."""
    keep = []
    for b, a, yy, w in zip(before, after, y, weight):
        v = (w > 0).numpy()
        args = (yy.numpy() if isinstance(yy, torch.Tensor) else yy)[v], w.double().numpy()[v]
        gain = recalibrated_losses(b.double().numpy()[v], *args) - recalibrated_losses(a.double().numpy()[v], *args)
        if is_survival(args[0]):  # the censored add no term (their losses are 0), only their place in risk sets
            gain = gain[args[0]["event"]]
        keep.append(significant_gain(gain))
    return torch.tensor(keep, dtype=torch.bool)


def recalibrated_losses(logits: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Per-patient weighted log-loss of ``sigmoid(a * logit + b)``, with a and b fitted to these patients by
    weighted maximum likelihood (Platt scaling): what is left is the ranking's loss, not the scale's. For (V, C)
    logits of C classes, of ``softmax(a * logits + b)`` (a temperature and a bias per class); for the risks of a
    survival outcome, each event's Cox partial-likelihood term of ``a * risk`` (0 for the censored)."""
    from sklearn.linear_model import LogisticRegression

    if logits.ndim == 2:
        return _recalibrated_softmax_losses(logits, y, weight)
    if is_survival(y):
        return _recalibrated_cox_losses(logits, y, weight)
    x = logits[:, None]
    if np.ptp(logits) == 0:
        x = np.zeros_like(x)  # a constant ranks nothing: intercept only
    fit = LogisticRegression(C=np.inf).fit(x, y, sample_weight=weight)
    p = np.clip(fit.predict_proba(x)[:, 1], 1e-12, 1 - 1e-12)
    return -weight * (y * np.log(p) + (1 - y) * np.log(1 - p))


def _recalibrated_softmax_losses(logits: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize

    rows = np.arange(len(y))

    def losses(theta: np.ndarray) -> np.ndarray:
        z = np.exp(theta[0]) * logits + theta[1:]
        z = z - z.max(1, keepdims=True)
        return -weight * (z[rows, y] - np.log(np.exp(z).sum(1)))

    theta = minimize(lambda t: losses(t).sum(), np.zeros(1 + logits.shape[1]), method="L-BFGS-B",
                     bounds=[(-6, 6)] + [(-30, 30)] * logits.shape[1]).x
    return losses(theta)


def _recalibrated_cox_losses(risk: np.ndarray, y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    from scipy.optimize import minimize_scalar

    from fusion.losses import CoxLoss

    terms, idx = CoxLoss(y), torch.arange(len(y))[None]

    def losses(a: float) -> np.ndarray:  # each event's partial-likelihood term of ``a * risk``, the trainer's loss
        return weight * terms.per_row(torch.from_numpy(a * risk)[None], idx)[0].numpy()

    if np.ptp(risk) == 0:
        return losses(0.0)
    return losses(minimize_scalar(lambda a: losses(a).sum(), bounds=(-20.0, 20.0), method="bounded").x)
