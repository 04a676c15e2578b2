"""Pure functions under extraction: tissue masks on real tiles, grids, tissue fractions, levels, compositing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from featstore.slides import _to_rgb_on_white
from featstore.tiling import Geometry, grid, tissue_fractions
from featstore.tissue import otsu_threshold, tissue_mask

from .conftest import TILES


@pytest.mark.parametrize("name, lo, hi", [("no-tissue.png", 0.0, 0.0), ("almost-white-2.png", 0.0, 0.05),
                                          ("tcga-lung-rgb.png", 0.3, 1.0), ("high-nuclei-score-level0.png", 0.5, 1.0)])
def test_tissue_mask_on_real_tiles(name, lo, hi):
    rgb = np.asarray(Image.open(TILES / name).convert("RGB"))
    mask = tissue_mask(rgb)
    assert mask.shape == rgb.shape[:2]
    assert lo <= mask.mean() <= hi, mask.mean()


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(500, 30), np.full(500, 200)]).astype(np.uint8)
    assert 30 <= otsu_threshold(values) < 200


def test_grid_covers_whole_patches_only_row_major():
    coords = grid(10, 20, 100, 50, 30)
    assert coords.tolist() == [[10, 20], [40, 20], [70, 20]]
    assert grid(0, 0, 20, 20, 30).shape == (0, 2)


def test_tissue_fractions_from_integral_image():
    mask = np.zeros((10, 10), bool)
    mask[:, :5] = True  # left half is tissue; each mask pixel is 4 level-0 px
    coords = np.array([[0, 0], [20, 0], [8, 0]])
    np.testing.assert_allclose(tissue_fractions(mask, coords, (0, 0), 4.0, 20), [1.0, 0.0, 0.6])


def test_geometry_reads_the_best_level_at_physical_resolution():
    g = Geometry.for_slide(0.5, 224, 0.25, (1.0, 4.0, 16.0))  # 40x slide, 20x patches: level 0, 448 px read
    assert (g.level, g.read_size, g.patch_size_level0) == (0, 448, 448)
    g = Geometry.for_slide(2.0, 224, 0.25, (1.0, 4.0003, 16.0))  # 8 level-0 px per patch px: level 1
    assert (g.level, g.read_size, g.patch_size_level0) == (1, 448, 1792)
    g = Geometry.for_slide(0.5, 224, 0.499, (1.0,))  # true mpp is kept, never rounded to 0.5
    assert g.patch_size_level0 == 224 and g.slide_mpp == 0.499
    with pytest.raises(ValueError):
        Geometry.for_slide(0.5, 224, 0.0, (1.0,))


def test_transparent_pixels_are_composited_onto_white_like_pil():
    rgba = np.random.default_rng(0).integers(0, 256, (40, 50, 4), dtype=np.uint8)
    img = Image.fromarray(rgba, "RGBA")
    reference = np.asarray(Image.alpha_composite(Image.new("RGBA", img.size, (255,) * 4), img).convert("RGB"))
    np.testing.assert_array_equal(_to_rgb_on_white(img), reference)
    rgba[..., 3] = 255
    np.testing.assert_array_equal(_to_rgb_on_white(Image.fromarray(rgba, "RGBA")), rgba[..., :3])
