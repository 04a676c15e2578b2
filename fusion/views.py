"""Compact per-patient bags: K prototypes (K-means within the patient) or K sampled patches, cached in the store.

A view depends only on one patient's own patches, never on labels or other patients, so computing it
once for everyone leaks nothing across folds; anything fitted across patients (PCA) happens per fold
in :mod:`fusion.preprocess`. Views are cached; results never are.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from featstore.provenance import config_hash
from featstore.store import Store, StoreError


@dataclass
class View:
    patient_ids: list[str]
    tokens: np.ndarray  # (P, K, D) float32
    mask: np.ndarray  # (P, K) bool: real token or padding
    weights: np.ndarray  # (P, K) share of the patient's patches each token stands for
    key: str
    cached: bool

    def for_patients(self, patients: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tokens, mask and weights in the order of ``patients``; patients without slides get empty bags."""
        index = {p: i for i, p in enumerate(self.patient_ids)}
        k, d = self.tokens.shape[1:]
        tokens = np.zeros((len(patients), k, d), np.float32)
        mask = np.zeros((len(patients), k), bool)
        weights = np.zeros((len(patients), k), np.float32)
        for i, p in enumerate(patients):
            if p in index:
                j = index[p]
                tokens[i], mask[i], weights[i] = self.tokens[j], self.mask[j], self.weights[j]
        return tokens, mask, weights


def _kmeans(x: torch.Tensor, k: int, rng: np.random.Generator, iters: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """K-means++ seeded by ``rng``; returns centres (k, D) and the share of points in each."""
    n = x.shape[0]
    first = int(rng.integers(n))
    centres = [x[first]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        p = (d2 / d2.sum()).double().numpy() if float(d2.sum()) > 0 else np.full(n, 1.0 / n)
        nxt = int(rng.choice(n, p=p / p.sum()))
        centres.append(x[nxt])
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        counts = torch.bincount(assign, minlength=k).float()
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        new = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if torch.allclose(new, c):
            break
        c = new
    counts = torch.bincount(torch.cdist(x, c).argmin(1), minlength=k).float()
    return c, counts / n


def build_view(store: Store, feature_set: str, slides_by_patient: dict[str, list[str]], k: int = 16,
               method: str = "kmeans", seed: int = 0, cache: bool = True) -> View:
    """Compact bags for every patient in ``slides_by_patient`` (read from the cache when present)."""
    if method not in ("kmeans", "sample"):
        raise ValueError(f"view method must be 'kmeans' or 'sample', got {method!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    patients = sorted(p for p, s in slides_by_patient.items() if s)
    # The key changes whenever a slide is added, redone or removed, so a stale view is never reused.
    identity = {p: [(s, store.slide_attrs(feature_set, s).get("committed")) for s in sorted(slides_by_patient[p])]
                for p in patients}
    key = f"{feature_set}.{method}.k{k}.s{seed}.{config_hash(identity)}"
    hit = store.read_view(key) if cache else None
    if hit is not None:
        arrays, _ = hit
        return View(arrays["patient_ids"].tolist(), arrays["tokens"].astype(np.float32), arrays["mask"].astype(bool),
                    arrays["weights"].astype(np.float32), key, True)
    dim = int(store.feature_set_info(feature_set).get("config", {}).get("dim") or 0)
    tokens, mask, weights = None, np.zeros((len(patients), k), bool), np.zeros((len(patients), k), np.float32)
    for i, p in enumerate(patients):
        feats = np.concatenate([store.read_slide(feature_set, s).features for s in sorted(slides_by_patient[p])])
        feats = feats.astype(np.float32)
        if tokens is None:
            dim = feats.shape[1]
            tokens = np.zeros((len(patients), k, dim), np.float32)
        rng = np.random.default_rng([seed, zlib.crc32(p.encode())])
        n = len(feats)
        if n <= k:
            tokens[i, :n], mask[i, :n], weights[i, :n] = feats, True, 1.0 / n
        elif method == "sample":
            pick = np.sort(rng.choice(n, k, replace=False))
            tokens[i], mask[i], weights[i] = feats[pick], True, 1.0 / k
        else:
            c, share = _kmeans(torch.from_numpy(feats), k, rng)
            tokens[i], mask[i], weights[i] = c.numpy(), share.numpy() > 0, share.numpy()
    if tokens is None:
        tokens = np.zeros((0, k, dim), np.float32)
    # Tokens are kept as float16; use the rounded values now too, so a cached rerun is bit-identical.
    tokens = tokens.astype(np.float16).astype(np.float32)
    view = View(patients, tokens, mask, weights, key, False)
    if cache:
        try:
            store.write_view(key, {"patient_ids": np.asarray(patients, dtype=str), "tokens": tokens.astype(np.float16),
                                   "mask": mask, "weights": weights},
                             {"feature_set": feature_set, "method": method, "k": k, "seed": seed})
        except StoreError:
            pass  # a read-only store still trains; it just cannot keep the view
    return view
