"""The loss a torch head minimises, per target, with what each fitted on the model's own inner-training rows.

- two classes: the logistic loss, the positives weighted by negatives/positives;
- C classes: the softmax cross-entropy, each class weighted as scikit-learn's ``class_weight="balanced"``;
- survival: the negative Cox partial log-likelihood (Breslow's handling of ties), each event's risk set taken
  among the rows of the same batch (DeepSurv's minibatch estimate), so it needs no baseline hazard.

Each gives ``(M, B)`` per-row losses for a batch of row indices ``idx`` (M models, B rows); the trainer sums
them, and early stopping and the fallback rules score the validation rows with the same loss.
"""

from __future__ import annotations

import numpy as np
import torch

from fusion.survival import is_survival


class BinaryLoss:
    def __init__(self, y: np.ndarray, train: list[np.ndarray]):
        self.y = torch.from_numpy(y).float()
        self.pos_weight = torch.tensor([(len(r) - y[r].sum()) / max(y[r].sum(), 1) for r in train]).float()[:, None]

    def weight(self, idx: torch.Tensor) -> torch.Tensor:
        """(M, B) weight of each row of ``idx`` in its model's loss."""
        return torch.where(self.y[idx] > 0, self.pos_weight, torch.ones_like(self.pos_weight))

    def targets(self, idx: torch.Tensor):
        """What the fallback rules compare predictions of rows ``idx`` with."""
        return self.y[idx]

    def per_row(self, logits: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """(M, B) unweighted loss of each row (``valid``: False for padding)."""
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, self.y[idx], reduction="none")

    def training(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(M, B) weighted loss of a training step."""
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, self.y[idx], pos_weight=self.pos_weight.expand_as(logits), reduction="none")


class SoftmaxLoss(BinaryLoss):
    def __init__(self, y: np.ndarray, train: list[np.ndarray], n_classes: int):
        self.y = torch.from_numpy(y).long()
        counts = np.stack([np.bincount(y[r], minlength=n_classes) for r in train]).astype(np.float64)
        present = (counts > 0).sum(1, keepdims=True)
        self.class_weight = torch.from_numpy(
            np.where(counts > 0, counts.sum(1, keepdims=True) / (present * np.maximum(counts, 1)), 0.0)).float()

    def weight(self, idx):
        return self.class_weight.gather(1, self.y[idx])

    def per_row(self, logits, idx, valid=None):
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), self.y[idx], reduction="none")

    def training(self, logits, idx):
        return self.per_row(logits, idx) * self.weight(idx)


class CoxLoss(BinaryLoss):
    def __init__(self, y: np.ndarray):
        self.y = y
        self.time = torch.from_numpy(np.ascontiguousarray(y["time"])).double()
        self.event = torch.from_numpy(np.ascontiguousarray(y["event"]))

    def weight(self, idx):
        return torch.ones(idx.shape)

    def targets(self, idx):
        return self.y[idx.numpy()]

    def per_row(self, logits, idx, valid=None):
        """Each event's ``log sum_{j at risk} exp(risk_j) - risk_i`` over the valid rows still at risk at its time
        (ties at risk: Breslow); 0 for a censored or padded row."""
        valid = torch.ones(idx.shape, dtype=torch.bool) if valid is None else valid
        t = self.time[idx]
        at_risk = (t.unsqueeze(-2) >= t.unsqueeze(-1)) & valid.unsqueeze(-2)  # [m, i, j]: j at risk when i has it
        scores = logits.unsqueeze(-2).expand_as(at_risk).masked_fill(~at_risk, float("-inf"))
        loss = torch.logsumexp(scores, -1) - logits
        return torch.where(self.event[idx] & valid, loss, torch.zeros_like(loss))

    def training(self, logits, idx):
        return self.per_row(logits, idx)


def head_loss(y: np.ndarray, train: list[np.ndarray], n_classes: int = 2) -> BinaryLoss:
    """The loss of a target: a survival outcome, C > 2 classes, or two classes."""
    if is_survival(y):
        return CoxLoss(y)
    return SoftmaxLoss(y, train, n_classes) if n_classes > 2 else BinaryLoss(y, train)
