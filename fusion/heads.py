"""Heads in a registry: fold-batched torch modules with one call signature, plus sklearn/XGBoost baselines.

Every neural head maps ``(genes (M,B,G), tokens (M,B,K,D), mask (M,B,K), weights (M,B,K))`` to logits
``(M,B)``, where M is the number of models trained together (folds x repeats), B patients, K tokens
per patient (patches or prototypes), and ``weights`` the share of the patient's patches each token
stands for (so a weighted mean of prototypes is the exact mean of the patches).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fusion.layers import (
    FoldLayerNorm,
    FoldLinear,
    FoldMLP,
    FoldMultiheadCrossAttention,
    GatedAttentionPool,
    log_prior,
)

GENES, IMAGE = "genes", "image"


@dataclass(frozen=True)
class HeadSpec:
    name: str
    modalities: frozenset[str]
    kind: str  # "torch" or "sklearn"
    build: Callable
    summary: str

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1


HEADS: dict[str, HeadSpec] = {}


def register_head(name: str, modalities: set[str], kind: str, summary: str):
    def deco(build):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = HeadSpec(name, frozenset(modalities), kind, build, summary)
        return build
    return deco


def list_heads() -> list[str]:
    return list(HEADS)


def get_head(name: str) -> HeadSpec:
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; registered: {', '.join(HEADS)}")
    return HEADS[name]


def weighted_mean(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (tokens * weights.unsqueeze(-1)).sum(-2) / weights.sum(-1, keepdim=True).clamp_min(1e-8)


class _ImageEncoder(nn.Module):
    """One vector per patient: gated attention pooling of projected tokens, plus a projection of the bag mean.

    Attention finds a few telling patches; the mean branch keeps what is spread over the whole bag,
    which attention over noisy tokens recovers poorly (measured on simulated bags, see tests).
    """

    def __init__(self, models: int, token_dim: int, hidden: int, with_mean: bool = True):
        super().__init__()
        self.proj = nn.Sequential(FoldLinear(models, token_dim, hidden), nn.ReLU())
        self.pool = GatedAttentionPool(models, hidden, hidden // 2)
        self.mean = nn.Sequential(FoldLinear(models, token_dim, hidden), nn.ReLU()) if with_mean else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.proj(tokens), mask, log_prior(weights))[0]
        return pooled if self.mean is None else pooled + self.mean(weighted_mean(tokens, weights))


@register_head("gene_mlp", {GENES}, "torch",
               "Dense gene encoder of the original study (two ELU layers with dropout; --snn: SELU + AlphaDropout "
               "as in MCAT/PORPOISE), then a linear classifier.")
class GeneMLP(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=256, dropout=0.25, snn=False):
        super().__init__()
        self.enc = FoldMLP(models, [gene_dim, hidden, 64], dropout, snn)
        self.out = FoldLinear(models, 64, 1)

    def forward(self, genes, tokens, mask, weights):
        return self.out(self.enc(genes)).squeeze(-1)


@register_head("image_mean", {IMAGE}, "torch",
               "Mean of the patch embeddings (exact, via prototype weights), then an MLP.")
class ImageMean(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False):
        super().__init__()
        self.mlp = FoldMLP(models, [token_dim, hidden], dropout)
        self.out = FoldLinear(models, hidden, 1)

    def forward(self, genes, tokens, mask, weights):
        return self.out(self.mlp(weighted_mean(tokens, weights))).squeeze(-1)


@register_head("image_abmil", {IMAGE}, "torch",
               "Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018): per-token MLP, gated attention "
               "pooling, linear classifier.")
class ImageABMIL(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False):
        super().__init__()
        self.enc = _ImageEncoder(models, token_dim, hidden, with_mean=False)
        self.out = FoldLinear(models, hidden, 1)

    def forward(self, genes, tokens, mask, weights):
        return self.out(self.enc(tokens, mask, weights)).squeeze(-1)


@register_head("concat", {GENES, IMAGE}, "torch",
               "Gene embedding and attention-pooled image embedding concatenated, then an MLP "
               "(both branches wired in, unlike the original study's code).")
class Concat(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False):
        super().__init__()
        self.genes = FoldMLP(models, [gene_dim, 64, 32], dropout, snn)
        self.image = _ImageEncoder(models, token_dim, hidden)
        self.mlp = FoldMLP(models, [32 + hidden, 64], dropout)
        self.out = FoldLinear(models, 64, 1)

    def forward(self, genes, tokens, mask, weights):
        z = torch.cat([self.genes(genes), self.image(tokens, mask, weights)], dim=-1)
        return self.out(self.mlp(z)).squeeze(-1)


@register_head("late", {GENES, IMAGE}, "torch",
               "Late fusion: a gene MLP and an attention-MIL image model, logits mixed with a learned weight.")
class Late(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False):
        super().__init__()
        self.gene = GeneMLP(models, gene_dim, token_dim, 64, dropout, snn)
        self.image = ImageABMIL(models, gene_dim, token_dim, hidden, dropout)
        self.alpha = nn.Parameter(torch.zeros(models, 1))

    def forward(self, genes, tokens, mask, weights):
        a = torch.sigmoid(self.alpha)
        return a * self.gene(genes, tokens, mask, weights) + (1 - a) * self.image(genes, tokens, mask, weights)


@register_head("bilinear", {GENES, IMAGE}, "torch",
               "Gated Kronecker fusion (PathomicFusion, Chen et al. 2020; PORPOISE): each modality gated by the "
               "other, a 1 appended, outer product, then an MLP.")
class Bilinear(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False, dim=16):
        super().__init__()
        self.genes = FoldMLP(models, [gene_dim, 64, dim], dropout, snn)
        self.image_enc = _ImageEncoder(models, token_dim, hidden)
        self.image_proj = FoldLinear(models, hidden, dim)
        self.gate_g = FoldLinear(models, 2 * dim, dim)
        self.gate_i = FoldLinear(models, 2 * dim, dim)
        self.h_g = FoldLinear(models, dim, dim)
        self.h_i = FoldLinear(models, dim, dim)
        self.mlp = FoldMLP(models, [(dim + 1) ** 2, 64], dropout)
        self.out = FoldLinear(models, 64, 1)

    def forward(self, genes, tokens, mask, weights):
        g = self.genes(genes)
        i = torch.relu(self.image_proj(self.image_enc(tokens, mask, weights)))
        both = torch.cat([g, i], dim=-1)
        g = torch.sigmoid(self.gate_g(both)) * torch.relu(self.h_g(g))
        i = torch.sigmoid(self.gate_i(both)) * torch.relu(self.h_i(i))
        one = torch.ones_like(g[..., :1])
        g, i = torch.cat([g, one], -1), torch.cat([i, one], -1)
        fused = (g.unsqueeze(-1) * i.unsqueeze(-2)).flatten(-2)
        return self.out(self.mlp(fused)).squeeze(-1)


@register_head("cross_attn", {GENES, IMAGE}, "torch",
               "The study's head, built so it uses both inputs: gene tokens (queries) attend over patch tokens "
               "(keys and values) as in MCAT's genomic-guided co-attention, multi-head, residual + layer norm, "
               "then gated attention pooling over the gene tokens.")
class CrossAttention(nn.Module):
    def __init__(self, models, gene_dim, token_dim, hidden=128, dropout=0.25, snn=False, dim=64, gene_tokens=8,
                 heads=4):
        super().__init__()
        self.t, self.dim = gene_tokens, dim
        self.genes = FoldMLP(models, [gene_dim, 64, gene_tokens * dim], dropout, snn)
        self.patches = nn.Sequential(FoldLinear(models, token_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.attn = FoldMultiheadCrossAttention(models, dim, heads)
        self.norm = FoldLayerNorm(models, dim)
        self.pool = GatedAttentionPool(models, dim, dim // 2)
        self.out = FoldLinear(models, dim, 1)

    def forward(self, genes, tokens, mask, weights):
        m, b = genes.shape[:2]
        q = self.genes(genes).view(m, b, self.t, self.dim)
        kv = self.patches(tokens)
        z = self.norm(q + self.attn(q, kv, mask, log_prior(weights)))
        pooled, _ = self.pool(z, torch.ones(z.shape[:-1], dtype=torch.bool, device=z.device))
        return self.out(pooled).squeeze(-1)


# ---- sklearn / XGBoost baselines: fit on one fold's training part, predict probabilities for all -----


@register_head("logreg", {GENES}, "sklearn",
               "L2-regularised logistic regression on the fold-locally scaled genes (scikit-learn).")
def _logreg(seed: int, threads: int):
    from sklearn.linear_model import LogisticRegression

    def fit_predict(x_tr, y_tr, x_val, y_val, x_all):
        x = np.concatenate([x_tr, x_val])
        y = np.concatenate([y_tr, y_val])
        model = LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced", random_state=seed)
        return model.fit(x, y).predict_proba(x_all)[:, 1], int(np.prod(model.coef_.shape) + 1)
    return fit_predict


@register_head("xgboost", {GENES}, "sklearn",
               "Gradient-boosted trees (XGBoost) with early stopping on the inner validation split.")
def _xgboost(seed: int, threads: int):
    from xgboost import XGBClassifier

    def fit_predict(x_tr, y_tr, x_val, y_val, x_all):
        pos = max(y_tr.sum(), 1)
        model = XGBClassifier(n_estimators=400, learning_rate=0.05, max_depth=3, subsample=0.8,
                              colsample_bytree=0.5, early_stopping_rounds=30, eval_metric="logloss",
                              scale_pos_weight=(len(y_tr) - pos) / pos, random_state=seed, n_jobs=threads,
                              tree_method="hist")
        model.fit(x_tr, y_tr, eval_set=[(x_val, y_val)], verbose=False)
        # Parameters of a tree ensemble: its nodes (split or leaf), counted from the text dump.
        n_nodes = sum(tree.count("\n") for tree in model.get_booster().get_dump())
        return model.predict_proba(x_all)[:, 1], n_nodes
    return fit_predict
