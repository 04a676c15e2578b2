"""Fold-local fitting: every statistic here is computed from the training rows of one fold and nothing else."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from featstore.barcodes import gene_symbol
from fusion.memo import Memo, digest


@dataclass
class GeneTransform:
    """Imputation means, kept gene columns and scaling, all fitted on one fold's training rows."""

    fitted_on: np.ndarray  # the training row indices used, recorded so leakage can be asserted
    columns: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def apply(self, genes: np.ndarray) -> np.ndarray:
        x = genes[:, self.columns]
        x = np.where(np.isnan(x), self.mean, x)
        return ((x - self.mean) / self.std).astype(np.float32)


def fit_gene_transform(genes: np.ndarray, train_idx: np.ndarray, top_k: int | None,
                       exclude: np.ndarray | None = None) -> GeneTransform:
    """Keep the ``top_k`` most variable genes of the training rows (after ``exclude``), impute and z-score."""
    train = genes[train_idx]
    candidates = np.arange(genes.shape[1]) if exclude is None else np.flatnonzero(~exclude)
    with np.errstate(all="ignore"):
        var = np.nanvar(train[:, candidates], axis=0)
    var = np.nan_to_num(var, nan=-1.0)
    if top_k is not None and top_k < len(candidates):
        order = np.argsort(-var, kind="stable")[:top_k]
        candidates = np.sort(candidates[order])
    x = train[:, candidates]
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(x, axis=0))
        std = np.nan_to_num(np.nanstd(x, axis=0))
    std[std < 1e-8] = 1.0
    return GeneTransform(np.asarray(train_idx), candidates, mean.astype(np.float32), std.astype(np.float32))


def gene_exclusion_mask(gene_ids: list[str], symbols: set[str]) -> np.ndarray:
    wanted = {s.upper() for s in symbols}
    return np.array([gene_symbol(g).upper() in wanted for g in gene_ids])


@dataclass
class TokenPCA:
    fitted_on: np.ndarray
    mean: np.ndarray
    components: np.ndarray  # (D, d)

    def apply(self, tokens: np.ndarray) -> np.ndarray:
        return ((tokens - self.mean) @ self.components).astype(np.float32)


def fit_token_pca(tokens: np.ndarray, mask: np.ndarray, train_idx: np.ndarray, dim: int, seed: int = 0) -> TokenPCA:
    """PCA of the real tokens of the training patients only (randomised, seeded)."""
    x = torch.from_numpy(tokens[train_idx][mask[train_idx]].astype(np.float32))
    mean = x.mean(0)
    dim = min(dim, x.shape[1], max(1, x.shape[0] - 1))
    with torch.random.fork_rng(devices=[]):  # seeded, leaving the caller's random state as it was
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(x - mean, q=dim, center=False, niter=4)
    return TokenPCA(np.asarray(train_idx), mean.numpy(), v[:, :dim].numpy())


_PROJECTED = Memo(16)  # (TokenPCA, projected tokens) by a digest of all the inputs


def project_tokens(tokens: np.ndarray, mask: np.ndarray, train_idx: np.ndarray, dim: int, seed: int = 0,
                   tokens_digest: str | None = None) -> tuple[TokenPCA, np.ndarray]:
    """The PCA fitted on ``train_idx`` and every patient's tokens projected with it (masked tokens 0).

    Shared by the heads of a bench (``fusion.memo``); ``tokens_digest`` (``digest(tokens, mask)``) saves
    hashing the same tokens once per fold."""
    key = digest(tokens_digest or digest(tokens, mask), train_idx, dim, seed)

    def fit() -> tuple[TokenPCA, np.ndarray]:
        pca = fit_token_pca(tokens, mask, train_idx, dim, seed)
        return pca, pca.apply(tokens) * mask[..., None]
    return _PROJECTED.get(key, fit)
