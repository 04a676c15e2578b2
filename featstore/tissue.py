"""Tissue detection on a low-resolution RGB image: Otsu on saturation, then hole and area filtering."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Saturation below this (0-255) is glass, whatever Otsu says: a blank tile has only noise to split.
MIN_SATURATION = 20


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of uint8 values (maximises between-class variance of the histogram)."""
    hist = np.bincount(values.ravel().astype(np.uint8), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0.0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(np.argmax(between))


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int16)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) * 255 // np.maximum(mx, 1), 0).astype(np.uint8)


def tissue_mask(rgb: np.ndarray, min_area_fraction: float = 0.0005, close_iterations: int = 2) -> np.ndarray:
    """Boolean tissue mask of an RGB uint8 thumbnail.

    Pixels with saturation above max(Otsu, MIN_SATURATION) that are neither near-white nor near-black
    (pen marks and dark debris), closed to bridge gaps, holes filled, and components smaller than
    ``min_area_fraction`` of the image removed.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"tissue_mask needs an H x W x 3 image, got shape {rgb.shape}")
    sat = ndimage.median_filter(saturation(rgb), size=3)
    thr = max(otsu_threshold(sat), MIN_SATURATION)
    brightness = rgb.mean(axis=-1)
    mask = (sat > thr) & (brightness > 20) & (brightness < 245)
    if close_iterations:
        mask = ndimage.binary_closing(mask, iterations=close_iterations, border_value=0)
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sizes >= min_area_fraction * mask.size])
        mask = keep[labels]
    return mask
