"""Patch grids at a physical resolution: which level to read, how big, and where."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Geometry:
    """How a patch of ``patch_size`` px at ``target_mpp`` is read from a slide of ``slide_mpp``."""

    target_mpp: float
    slide_mpp: float
    patch_size: int  # at target mpp
    patch_size_level0: int  # footprint in level-0 pixels (also the grid stride: no overlap)
    level: int  # pyramid level read
    read_size: int  # pixels read at that level, then resized to patch_size
    scale: int = 1  # the level decoded at 1/scale (JPEG scaled IDCT), so read_size / scale pixels come back

    @property
    def decoded_size(self) -> int:
        """Pixels a patch comes back at from the reader, before any resize to ``patch_size``."""
        return max(1, round(self.read_size / self.scale))

    @classmethod
    def for_slide(cls, target_mpp: float, patch_size: int, slide_mpp: float,
                  level_downsamples: tuple[float, ...]) -> Geometry:
        if target_mpp <= 0 or slide_mpp <= 0 or patch_size <= 0:
            raise ValueError(f"target mpp {target_mpp}, slide mpp {slide_mpp} and patch size {patch_size} must be > 0")
        factor = target_mpp / slide_mpp  # level-0 px per target px
        ok = [i for i, d in enumerate(level_downsamples) if d <= factor * 1.001]
        level = max(ok) if ok else 0
        return cls(
            target_mpp=target_mpp, slide_mpp=slide_mpp, patch_size=patch_size,
            patch_size_level0=max(1, round(patch_size * factor)), level=level,
            read_size=max(1, round(patch_size * factor / level_downsamples[level])),
        )


def grid(x0: int, y0: int, width: int, height: int, step: int) -> np.ndarray:
    """Top-left level-0 corners of the non-overlapping patches that lie wholly inside a region, row-major."""
    xs = np.arange(x0, x0 + width - step + 1, step, dtype=np.int64)
    ys = np.arange(y0, y0 + height - step + 1, step, dtype=np.int64)
    if not len(xs) or not len(ys):
        return np.empty((0, 2), np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def tissue_fractions(mask: np.ndarray, coords: np.ndarray, origin: tuple[int, int], downsample: float,
                     size_level0: int) -> np.ndarray:
    """Fraction of mask pixels under each patch (mask pixel = ``downsample`` level-0 px), via an integral image."""
    if not len(coords):
        return np.empty(0, np.float32)
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    h, w = mask.shape

    def to_mask(v: np.ndarray, limit: int) -> np.ndarray:
        return np.clip(np.round(v / downsample).astype(np.int64), 0, limit)

    x0 = to_mask(coords[:, 0] - origin[0], w)
    y0 = to_mask(coords[:, 1] - origin[1], h)
    x1 = np.maximum(to_mask(coords[:, 0] - origin[0] + size_level0, w), x0 + 1).clip(max=w)
    y1 = np.maximum(to_mask(coords[:, 1] - origin[1] + size_level0, h), y0 + 1).clip(max=h)
    area = np.maximum((x1 - x0) * (y1 - y0), 1)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return (inside / area).astype(np.float32)
