"""Heads in a registry: fold-batched torch modules with one call signature, plus sklearn/XGBoost baselines.

Every neural head maps ``(genes (M,B,G), tokens (M,B,K,D), mask (M,B,K), weights (M,B,K))`` to logits
``(M,B)`` (``(M,B,C)`` for a target of C > 2 classes), where M is the number of models trained together
(folds x repeats), B patients, K tokens per patient (patches or prototypes), and ``weights`` the share of the
patient's patches each token stands for (so a weighted mean of prototypes is the exact mean of the patches).
"""

from __future__ import annotations

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
from fusion.logistic import fit_logistic, fit_stack, linear_weights
from fusion.multinomial import fit_multinomial_stack
from fusion.registry import GENES, HEADS, IMAGE, TORCH_TARGETS, HeadSpec, get_head, list_heads, register_head
from fusion.survival import is_survival

__all__ = ["GENES", "HEADS", "IMAGE", "HeadSpec", "fit_logistic", "get_head", "list_heads", "register_head",
           "weighted_mean"]


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


def _logits(out: torch.Tensor) -> torch.Tensor:
    """The unimodal heads end in one logit for two classes, C for C > 2 (``outputs``, a softmax over them)."""
    return out.squeeze(-1) if out.shape[-1] == 1 else out


@register_head("gene_mlp", {GENES}, "torch",
               "Dense gene encoder of the original study (two ELU layers with dropout; --snn: SELU + AlphaDropout "
               "as in MCAT/PORPOISE), then a linear classifier.", TORCH_TARGETS)
class GeneMLP(nn.Module):
    def __init__(self, models, gene_dim, token_dim, *, hidden=256, dropout=0.25, snn=False, outputs=1):
        super().__init__()
        self.enc = FoldMLP(models, [gene_dim, hidden, 64], dropout, snn)
        self.out = FoldLinear(models, 64, outputs)

    def forward(self, genes, tokens, mask, weights):
        return _logits(self.out(self.enc(genes)))


@register_head("image_mean", {IMAGE}, "torch",
               "Mean of the patch embeddings (exact, via prototype weights), then an MLP.", TORCH_TARGETS)
class ImageMean(nn.Module):
    def __init__(self, models, gene_dim, token_dim, *, hidden=128, dropout=0.25, snn=False, outputs=1):
        super().__init__()
        self.mlp = FoldMLP(models, [token_dim, hidden], dropout)
        self.out = FoldLinear(models, hidden, outputs)

    def forward(self, genes, tokens, mask, weights):
        return _logits(self.out(self.mlp(weighted_mean(tokens, weights))))


@register_head("image_abmil", {IMAGE}, "torch",
               "Gated attention MIL (Ilse, Tomczak & Welling, ICML 2018): per-token MLP, gated attention "
               "pooling, linear classifier.", TORCH_TARGETS)
class ImageABMIL(nn.Module):
    def __init__(self, models, gene_dim, token_dim, *, hidden=128, dropout=0.25, snn=False, outputs=1):
        super().__init__()
        self.enc = _ImageEncoder(models, token_dim, hidden, with_mean=False)
        self.out = FoldLinear(models, hidden, outputs)

    def forward(self, genes, tokens, mask, weights):
        return _logits(self.out(self.enc(tokens, mask, weights)))


# ---- fusion heads: two unimodal paths that stand alone, plus a fusion term that starts switched off ----


class _GenePath(nn.Module):
    """A linear gene logit (logistic regression inside the network) and a gene embedding for the fusion term.

    The linear logit is what lets a fusion head fall back on the genes: on a few informative genes
    among thousands, a linear model is the bar (logreg), and an MLP alone falls below it."""

    def __init__(self, models: int, gene_dim: int, dim: int, dropout: float, snn: bool, outputs: int = 1):
        super().__init__()
        self.logit = FoldLinear(models, gene_dim, outputs)
        self.embed = FoldMLP(models, [gene_dim, 64, dim], dropout, snn)

    def forward(self, genes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _logits(self.logit(genes)), self.embed(genes)


class _FusionHead(nn.Module):
    """``logit = gene_logit + image_logit + gate * fused_logit``, starting from two unimodal linear models.

    The gene logit is linear in the genes and the image logit linear in the bag mean plus an attention
    branch that starts at 0; ``warm_start`` fits both linear logits as logistic regressions on each
    model's inner-training rows, weighted by a logistic meta-learner on their out-of-fold logits (the
    ``stack`` baseline, fitted on those rows), and the gate of the fusion term starts at 0. So every head
    starts as the stacked late fusion of two fitted unimodal models, and early stopping (which scores the
    warm start too) keeps that unless training improves the inner-validation loss. In training, modality
    dropout removes one modality from a share of the patients (its logit and the fusion term), so each path
    learns to predict alone and neither can lean on the other (modality competition). Subclasses define
    ``fuse``; one that does not is a pure late-fusion head.
    """

    # 40% of patients per step lose their genes (the image path predicts alone), 40% their image, 20% keep both:
    # with fewer, the attention branch trains mostly on the gene logit's residual and rarely earns its keep
    # where the image is the weaker input (docs/heads.md, "Measurements behind the code").
    modality_dropout = 0.4

    def __init__(self, models: int, gene_dim: int, token_dim: int, *, hidden: int = 128, dropout: float = 0.25,
                 snn: bool = False, dim: int = 32, outputs: int = 1):
        super().__init__()
        self.outputs = outputs  # 1 logit for two classes, C for a softmax over C classes
        self.genes = _GenePath(models, gene_dim, dim, dropout, snn, outputs)
        self.image = _ImageEncoder(models, token_dim, hidden)
        self.image_linear = FoldLinear(models, token_dim, outputs)
        self.image_logit = FoldLinear(models, hidden, outputs)
        self.gate = nn.Parameter(torch.zeros(models, 1))

    def warm_start(self, genes: list[np.ndarray], bag_means: list[np.ndarray], y: np.ndarray,
                   train: list[np.ndarray], seed: int) -> None:
        """Set the two linear logits of each model to the stacked logistic regressions fitted on its
        inner-training rows (``fit_stack``; zero where a modality predicts nothing there)."""
        # Per model, whether neither linear model was fitted: the warm start then predicts a constant.
        self.warm_constant = [self._set_linear(i, self._stack([genes[i], bag_means[i]], y, tr, seed))
                              for i, tr in enumerate(train)]
        with torch.no_grad():
            # The attention branch's logit starts at 0 (its gradient still flows), so the starting point is
            # exactly the stacked linear models, the fallback the trainer compares the trained head with.
            self.image_logit.weight.zero_()
            self.image_logit.bias.zero_()
        # The fitted linear logits stay as fitted (their strength was chosen by CV); training learns what they
        # miss: the attention branch and the fusion term.
        for layer in (self.genes.logit, self.image_linear):
            layer.requires_grad_(False)

    def refit_linear(self, genes: list[np.ndarray], bag_means: list[np.ndarray], y: np.ndarray,
                     rows: list[np.ndarray], seed: int) -> None:
        """Once training is done, refit each model's stacked linear logits on its ``rows`` (the fold's whole
        training part). They were fitted on the inner-training rows so that the validation rows could judge
        training; the baselines use all of them (at 200 patients 160 rows, not 136). A model that is still its
        warm start then is the ``stack`` baseline."""
        for i, r in enumerate(rows):
            self._set_linear(i, self._stack([genes[i], bag_means[i]], y, r, seed))

    def _stack(self, xs: list[np.ndarray], y: np.ndarray, rows: np.ndarray, seed: int):
        """The stacked linear models the head starts from: logistic, multinomial, or Cox for a survival outcome
        (its linear predictor is the risk; the two-class arithmetic of ``_set_linear`` holds for it)."""
        if is_survival(y):
            from fusion.cox import fit_cox_stack  # here: fusion.cox imports the baselines, which import this module

            return fit_cox_stack(xs, y, rows, seed)
        if self.outputs > 1:
            return fit_multinomial_stack(xs, y, rows, self.outputs, seed)
        return fit_stack(xs, y, rows, seed)

    def _set_linear(self, i: int, stack) -> bool:
        """Model ``i``'s two linear logits from a fitted stack; returns whether both are zero (a constant)."""
        if self.outputs > 1:
            return self._set_softmax(i, stack)
        constant = True
        with torch.no_grad():
            for j, (layer, model) in enumerate(zip((self.genes.logit, self.image_linear), stack.bases)):
                layer.weight[i] = 0.0
                layer.bias[i] = 0.0
                if model is not None:
                    constant = False
                    # Each logit weighted as the meta-learner weighs it: summed with unit weights, two
                    # separately penalised models are mixed in whatever ratio their penalties left
                    # (measured: stack beat every fusion head on the split cells of fusion_gain).
                    a = float(stack.meta_coef[j])
                    weights, intercept = linear_weights(model)
                    layer.weight[i, :, 0] = a * torch.from_numpy(weights).float()
                    layer.bias[i, 0, 0] = a * intercept
            if not constant:
                self.genes.logit.bias[i, 0, 0] += stack.meta_intercept
        return constant

    def _set_softmax(self, i: int, stack) -> bool:
        """The multinomial stack's logits ``[L_genes, L_image] @ M + m`` as the two linear layers: each base model's
        weights times its block of the meta-learner's matrix (``W_g M_g`` and ``W_i M_i``), ``m`` in the gene bias."""
        c = self.outputs
        meta = stack.meta
        with torch.no_grad():
            for j, (layer, model) in enumerate(zip((self.genes.logit, self.image_linear), stack.bases)):
                layer.weight[i] = 0.0
                layer.bias[i] = 0.0
                if model is not None:
                    block = meta.weights[j * c:(j + 1) * c]
                    layer.weight[i] = torch.from_numpy(model.weights @ block).float()
                    layer.bias[i, 0] = torch.from_numpy(model.intercept @ block).float()
            constant = all(b is None for b in stack.bases)
            if not constant:
                self.genes.logit.bias[i, 0] += torch.from_numpy(meta.intercept).float()
        return constant

    def stages(self) -> list:
        """Train the unimodal branches first, the fusion gate held at 0, then open the gate: trained together
        from the start, the fusion term fits noise in one modality before the other's branch has learned
        anything alone (measured: the attention branch on minority-patch bags never started)."""
        self.gate.requires_grad_(False)
        fused = type(self).fuse is not _FusionHead.fuse
        return [None, lambda: self.gate.requires_grad_(True)] if fused else [None]

    def fuse(self, g: torch.Tensor, i: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
             weights: torch.Tensor) -> torch.Tensor | None:
        """The fusion term's logit, or None for no fusion term."""
        return None

    def forward(self, genes, tokens, mask, weights):
        lg, g = self.genes(genes)
        i = self.image(tokens, mask, weights)
        li = _logits(self.image_linear(weighted_mean(tokens, weights)) + self.image_logit(i))
        lf = self.fuse(g, i, tokens, mask, weights)
        lf = torch.zeros_like(lg) if lf is None else self.gate.view(-1, *[1] * (lf.dim() - 1)) * lf
        if self.training and self.modality_dropout > 0:
            # One draw per patient (all its class logits share it): for two classes, as many draws as before.
            u = torch.rand(lg.shape[:2], device=lg.device).view(lg.shape[:2] + (1,) * (lg.dim() - 2))
            keep_g = (u >= self.modality_dropout).float()
            keep_i = ((u < self.modality_dropout) | (u >= 2 * self.modality_dropout)).float()
            return keep_g * lg + keep_i * li + keep_g * keep_i * lf
        return lg + li + lf


@register_head("late", {GENES, IMAGE}, "torch",
               "Late fusion: a linear gene logit plus an attention-MIL image logit, trained together with "
               "modality dropout so each stands alone.", TORCH_TARGETS)

class Late(_FusionHead):
    """The two unimodal logits, summed: ``_FusionHead`` without a fusion term."""


@register_head("concat", {GENES, IMAGE}, "torch",
               "Gene and image embeddings concatenated into an MLP, added through a zero-initialised gate to "
               "the two unimodal logits (both branches wired in, unlike the original study's code).", TORCH_TARGETS)

class Concat(_FusionHead):
    def __init__(self, models, gene_dim, token_dim, *, hidden=128, dropout=0.25, snn=False, dim=32, outputs=1):
        super().__init__(models, gene_dim, token_dim, hidden=hidden, dropout=dropout, snn=snn, dim=dim, outputs=outputs)
        self.mlp = FoldMLP(models, [dim + hidden, 64], dropout)
        self.out = FoldLinear(models, 64, outputs)

    def fuse(self, g, i, tokens, mask, weights):
        return _logits(self.out(self.mlp(torch.cat([g, i], dim=-1))))


@register_head("bilinear", {GENES, IMAGE}, "torch",
               "Gated Kronecker fusion (PathomicFusion, Chen et al. 2020; PORPOISE): each modality gated by the "
               "other, a 1 appended, outer product, then an MLP; added to the two unimodal logits.", TORCH_TARGETS)

class Bilinear(_FusionHead):
    def __init__(self, models, gene_dim, token_dim, *, hidden=128, dropout=0.25, snn=False, dim=16, outputs=1):
        super().__init__(models, gene_dim, token_dim, hidden=hidden, dropout=dropout, snn=snn, dim=dim, outputs=outputs)
        self.image_proj = FoldLinear(models, hidden, dim)
        self.gate_g = FoldLinear(models, 2 * dim, dim)
        self.gate_i = FoldLinear(models, 2 * dim, dim)
        self.h_g = FoldLinear(models, dim, dim)
        self.h_i = FoldLinear(models, dim, dim)
        self.mlp = FoldMLP(models, [(dim + 1) ** 2, 64], dropout)
        self.out = FoldLinear(models, 64, outputs)

    def fuse(self, g, i, tokens, mask, weights):
        i = torch.relu(self.image_proj(i))
        both = torch.cat([g, i], dim=-1)
        g = torch.sigmoid(self.gate_g(both)) * torch.relu(self.h_g(g))
        i = torch.sigmoid(self.gate_i(both)) * torch.relu(self.h_i(i))
        one = torch.ones_like(g[..., :1])
        g, i = torch.cat([g, one], -1), torch.cat([i, one], -1)
        return _logits(self.out(self.mlp((g.unsqueeze(-1) * i.unsqueeze(-2)).flatten(-2))))


@register_head("cross_attn", {GENES, IMAGE}, "torch",
               "The study's head, built so it uses both inputs: co-attention both ways (gene tokens query the "
               "patch tokens and the bag mean, as MCAT; patch tokens query the gene tokens), each pooled by "
               "gated attention, into an MLP; added to the two unimodal logits, so the gene path stays intact.", TORCH_TARGETS)

class CrossAttention(_FusionHead):
    def __init__(self, models, gene_dim, token_dim, *, hidden=128, dropout=0.25, snn=False, dim=32, gene_tokens=8,
                 heads=4, outputs=1):
        super().__init__(models, gene_dim, token_dim, hidden=hidden, dropout=dropout, snn=snn, dim=dim, outputs=outputs)
        self.t, self.dim = gene_tokens, dim
        self.gene_tokens = FoldLinear(models, dim, gene_tokens * dim)
        self.patches = nn.Sequential(FoldLinear(models, token_dim, dim), nn.ReLU(), nn.Dropout(dropout))
        self.g2p = FoldMultiheadCrossAttention(models, dim, heads)
        self.p2g = FoldMultiheadCrossAttention(models, dim, heads)
        self.norm_g, self.norm_p = FoldLayerNorm(models, dim), FoldLayerNorm(models, dim)
        self.pool_g, self.pool_p = GatedAttentionPool(models, dim, dim // 2), GatedAttentionPool(models, dim, dim // 2)
        self.mlp = FoldMLP(models, [2 * dim, 64], dropout)
        self.out = FoldLinear(models, 64, outputs)

    def fuse(self, g, i, tokens, mask, weights):
        m, b = g.shape[:2]
        q = self.gene_tokens(g).view(m, b, self.t, self.dim)
        # The bag mean joins the patch tokens as one more key, with the weight of the whole bag, so what is
        # spread over the bag is as easy to attend to as a single telling patch.
        kv = self.patches(torch.cat([tokens, weighted_mean(tokens, weights).unsqueeze(-2)], dim=-2))
        kmask = torch.cat([mask, mask.any(-1, keepdim=True)], dim=-1)
        prior = log_prior(torch.cat([weights, weights.sum(-1, keepdim=True)], dim=-1))
        zg = self.norm_g(q + self.g2p(q, kv, kmask, prior))
        zp = self.norm_p(kv + self.p2g(kv, q, torch.ones(q.shape[:-1], dtype=torch.bool, device=q.device)))
        pg, _ = self.pool_g(zg, torch.ones(zg.shape[:-1], dtype=torch.bool, device=zg.device))
        pp, _ = self.pool_p(zp, kmask, prior)
        return _logits(self.out(self.mlp(torch.cat([pg, pp], dim=-1))))


# The baselines register after the torch heads (the order `fusion heads` and `bench` use).
from fusion import baselines  # noqa: E402, F401
