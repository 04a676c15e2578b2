"""Bringing a patch read at a finer resolution down to the patch size: the antialiased bilinear resize, and the
3-tap filter that gives a patch decoded at a reduced JPEG scale the same softness (--downscale dct)."""

from __future__ import annotations

import numpy as np
import torch


def resize_rgb(img: np.ndarray, size: int) -> np.ndarray:
    """An RGB uint8 image resized to ``size`` x ``size``: antialiased bilinear, PIL's filter (to within one grey
    level) at a quarter of PIL's cost, as torch has a vectorised uint8 kernel for it."""
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0)
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return t[0].permute(1, 2, 0).numpy()


# Centre weight a of the 3-tap filter [1, a, 1] / (a + 2) that, applied at the reduced scale, turns the
# scaled IDCT's block means into what the antialiased bilinear resize gives (fitted on the real CMU slide:
# within about 1.2 grey levels at 1/2, 1.7 at 1/4; docs/extract.md), so the two --downscale methods make
# the same features.
SMOOTHING = {2: 10, 4: 12}


def like_bilinear(img: np.ndarray, scale: int) -> np.ndarray:
    """A patch decoded at 1/``scale`` (block means) filtered to match the antialiased bilinear resize: the
    3-tap filter along rows, then columns, edges repeated. In place in uint16 ((a + 2)^2 x 255 fits):
    numpy does this several times faster than a torch conv2d on one patch."""
    a = SMOOTHING[scale]
    x = img.astype(np.uint16)
    rows = x * np.uint16(a)
    rows[:, 1:] += x[:, :-1]
    rows[:, :-1] += x[:, 1:]
    rows[:, 0] += x[:, 0]
    rows[:, -1] += x[:, -1]
    out = rows * np.uint16(a)
    out[1:] += rows[:-1]
    out[:-1] += rows[1:]
    out[0] += rows[0]
    out[-1] += rows[-1]
    d = (a + 2) ** 2
    out += d // 2
    out //= d
    return out.astype(np.uint8)
