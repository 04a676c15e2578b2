"""Planning a slide (tissue mask, patch grid at the target mpp) and reading one patch (in reader workers)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from featstore.extract.config import ExtractConfig, RunConfig, SlideSpec
from featstore.resample import like_bilinear, resize_rgb
from featstore.slides import SlideError
from featstore.tiling import Geometry, grid, tissue_fractions
from featstore.tissue import tissue_mask


@dataclass
class SlidePlan:
    coords: np.ndarray
    tissue_fraction: np.ndarray
    geometry: Geometry
    mpp_source: str
    info: dict


def plan_slide(reader, cfg: ExtractConfig, spec: SlideSpec, mpp_default: float | None,
               run: RunConfig = RunConfig()) -> SlidePlan:
    """Tissue mask and patch grid of one slide; raises SlideError for no mpp or no tissue. ``run``: how patches
    are brought down to the patch size (``downscale``) and the patch budget (``max_patches``)."""
    mpp, source = reader.mpp, reader.mpp_source
    if mpp is None:
        if mpp_default is None:
            raise SlideError(f"{spec.slide_id}: no mpp in the slide's metadata; give one in a manifest 'mpp' "
                             "column or with --mpp-default")
        mpp, source = mpp_default, "default"
    if not math.isfinite(mpp) or mpp <= 0:
        raise SlideError(f"{spec.slide_id}: mpp {mpp!r} ({source}) is not a finite number > 0")
    geom = Geometry.for_slide(cfg.target_mpp, cfg.patch_size, mpp, reader.level_downsamples)
    if geom.read_size == geom.patch_size:
        downscale = "none (read at the target resolution)"
    elif run.downscale == "resize":
        downscale = "resize (antialiased bilinear, --downscale resize)"
    else:
        scale, downscale = reader.scaled_decoding(geom.level, geom.read_size / geom.patch_size)
        geom = dataclasses.replace(geom, scale=scale)
    # Bounds before any pixel is read: a declared size is checked against the patch budget and, for
    # directly decoded TIFFs, against the bytes the file holds.
    width, height = reader.level_dimensions[0]
    planned = sum(-(-r.width // geom.patch_size_level0) * -(-r.height // geom.patch_size_level0)
                  for r in reader.regions())
    if planned > run.max_patches:
        raise SlideError(f"{spec.slide_id}: declares {width} x {height} px, a grid of {planned:,} patches at "
                         f"{cfg.target_mpp} µm/px, over the limit of {run.max_patches:,} per slide (--max-patches)")
    if getattr(reader, "declared_bytes", None) == 0:
        raise SlideError(f"{spec.slide_id}: declares {width} x {height} px but its tiles hold no data "
                         "(every tile byte count is 0): the file is truncated or not what it says")
    coords, fractions = [], []
    for region in reader.regions():
        thumb, ds = reader.thumbnail(region, cfg.thumbnail_side)
        mask = tissue_mask(thumb)
        c = grid(region.x, region.y, region.width, region.height, geom.patch_size_level0)
        coords.append(c)
        fractions.append(tissue_fractions(mask, c, (region.x, region.y), ds, geom.patch_size_level0))
    coords_a, frac = np.concatenate(coords), np.concatenate(fractions)
    keep = frac >= cfg.min_tissue if cfg.min_tissue > 0 else np.ones(len(frac), bool)
    keep &= frac > 0
    if not keep.any():
        raise SlideError(f"{spec.slide_id}: no tissue (no patch has tissue fraction >= {cfg.min_tissue})")
    info = {"level_dimensions": [list(d) for d in reader.level_dimensions],
            "level_downsamples": list(reader.level_downsamples), "regions": len(reader.regions()),
            "grid_patches": int(len(coords_a)), "pixels": reader.pixel_source, "downscale": downscale}
    if hasattr(reader, "files"):
        info["tiles"] = [{"file": f.name, "x_offset": int(o)} for f, o in zip(reader.files, reader.offsets)]
    return SlidePlan(coords_a[keep], frac[keep], geom, source, info)


def read_patch(reader, geom: Geometry, x: int, y: int) -> np.ndarray:
    img = reader.read(x, y, geom.level, geom.read_size, geom.read_size, scale=geom.scale)
    if geom.scale > 1:
        img = like_bilinear(img, geom.scale)
    if geom.decoded_size == geom.patch_size:
        return img
    return resize_rgb(img, geom.patch_size)
