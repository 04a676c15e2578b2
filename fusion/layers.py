"""Layers whose parameters carry a leading model axis, so every fold (and repeat) trains in one step.

A ``FoldLinear`` with ``models=M`` is M independent linear layers: input ``(M, ..., in)``, weight
``(M, in, out)``. Adam is elementwise, so stacking models changes nothing about how each one learns;
it only turns M small problems into one batched one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class FoldLinear(nn.Module):
    def __init__(self, models: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1.0 / math.sqrt(d_in)  # torch.nn.Linear's default initialisation, per model
        self.weight = nn.Parameter(torch.empty(models, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(models, 1, d_out).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1, shape[-1])
        return torch.baddbmm(self.bias, flat, self.weight).reshape(*shape[:-1], self.weight.shape[-1])


class FoldLayerNorm(nn.Module):
    def __init__(self, models: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(models, 1, dim))
        self.bias = nn.Parameter(torch.zeros(models, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = F.layer_norm(x, shape[-1:]).reshape(shape[0], -1, shape[-1])
        return (y * self.weight + self.bias).reshape(shape)


class FoldMLP(nn.Module):
    """Linear -> activation -> dropout blocks; ``snn`` uses SELU with AlphaDropout (as in MCAT/PORPOISE)."""

    def __init__(self, models: int, dims: list[int], dropout: float = 0.25, snn: bool = False,
                 last_activation: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(FoldLinear(models, a, b))
            if i < len(dims) - 2 or last_activation:
                layers += [nn.SELU(), nn.AlphaDropout(dropout)] if snn else [nn.ELU(), nn.Dropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)


def log_prior(weights: torch.Tensor) -> torch.Tensor:
    """Log of the share of the bag each token stands for.

    Added to attention scores, it makes attention over K prototypes equal attention over all the
    patches, with each patch scored like its prototype: sum over a cluster of exp(s) = n_k exp(s_k).
    """
    return torch.log(weights.clamp_min(1e-8))


class GatedAttentionPool(nn.Module):
    """Gated attention pooling (Ilse et al. 2018): weights from tanh(Vh) * sigmoid(Uh), softmax over tokens."""

    def __init__(self, models: int, dim: int, hidden: int = 64):
        super().__init__()
        self.v = FoldLinear(models, dim, hidden)
        self.u = FoldLinear(models, dim, hidden)
        self.w = FoldLinear(models, hidden, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor,
                prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(torch.tanh(self.v(h)) * torch.sigmoid(self.u(h))).squeeze(-1)
        if prior is not None:
            scores = scores + prior
        attn = masked_softmax(scores, mask, dim=-1)
        return (attn.unsqueeze(-1) * h).sum(-2), attn


class FoldMultiheadCrossAttention(nn.Module):
    """Queries attend over keys/values, ``heads`` heads, with a key padding mask."""

    def __init__(self, models: int, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.q, self.k, self.v, self.o = (FoldLinear(models, dim, dim) for _ in range(4))

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, key_mask: torch.Tensor,
                key_prior: torch.Tensor | None = None) -> torch.Tensor:
        m, b, t, d = queries.shape
        k_len, h = keys.shape[2], self.heads
        q = self.q(queries).view(m, b, t, h, d // h).transpose(2, 3)  # (M, B, H, T, dh)
        k = self.k(keys).view(m, b, k_len, h, d // h).transpose(2, 3)
        v = self.v(keys).view(m, b, k_len, h, d // h).transpose(2, 3)
        # Scores keys-first, (M, B, H, K, T), normalised over dim -2: torch's softmax along a last dimension of a
        # few keys (8 gene tokens) took longer than the rest of the layer.
        scores = k @ q.transpose(-1, -2) / math.sqrt(d // h)
        if key_prior is not None:
            scores = scores + key_prior[:, :, None, :, None]
        attn = masked_softmax(scores, key_mask[:, :, None, :, None], dim=-2)
        out = (attn.transpose(-1, -2) @ v).transpose(2, 3).reshape(m, b, t, d)
        return self.o(out)
