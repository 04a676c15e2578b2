"""--downscale dct: JPEG tiles decoded at 1/2 or 1/4 by libjpeg-turbo's scaled IDCT, checked per slide, filtered
to match the antialiased resize; --downscale resize: today's full decode and resize."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import featstore
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides, read_patch
from featstore.extract.config import SlideSpec
from featstore.extract.plan import plan_slide
from featstore.resample import like_bilinear, resize_rgb
from featstore.slides import OpenSlideReader
from featstore.tifftiles import TiffTiles

from .conftest import CMU

SPEC = SlideSpec(str(CMU), "CMU-1-Small-Region", "CMU-1")


def _block_means(img: np.ndarray, s: int) -> np.ndarray:
    h, w = img.shape[0] // s, img.shape[1] // s
    return img[:h * s, :w * s].reshape(h, s, w, s, 3).mean(axis=(1, 3), dtype=np.float32)


@pytest.fixture(scope="module")
def cmu_pixels() -> np.ndarray:
    with OpenSlideReader(CMU) as r:
        return r.read(0, 0, 0, *r.dimensions)


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("path", ["aperio", "tifffile-rgb-jpeg"])
def test_scaled_rgb_tiles_are_block_means_of_the_full_decode(tmp_path, cmu_pixels, scale, path):
    """RGB-stored JPEG tiles (Aperio's; the Adobe marker tells libjpeg-turbo): every tile decoded at 1/scale is
    the full decode's block means, under a grey level on average."""
    if path == "aperio":
        path = CMU
    else:
        path = tmp_path / "rgb.tif"
        tifffile.imwrite(path, cmu_pixels, tile=(256, 256), compression="jpeg", photometric="rgb", subsampling=(1, 1),
                         compressionargs={"outcolorspace": "rgb"})
    with TiffTiles(path, ((2220, 2967),)) as tiles:
        full = tiles.levels[0]
        scaled = full.scaled(scale)
        assert (scaled.tile_w, scaled.tile_h) == (full.tile_w // scale, full.tile_h // scale)
        diffs = [np.abs(scaled._tile(i) - _block_means(full._tile(i), scale)).mean()
                 for i in range(len(full.page.dataoffsets))]
    assert max(diffs) < 1.0, max(diffs)


@pytest.mark.parametrize("subsampling", [(1, 1), (2, 2)], ids=["444", "420"])
def test_ycbcr_tiles_are_resized(tmp_path, cmu_pixels, subsampling):
    """YCbCr tiles decoded at a scale take their chroma as stored where the full decode interpolates it (up to
    ~3 grey levels per tile at 4:4:4, ~8 at 4:2:0 on this tissue): such slides keep the full decode and resize."""
    path = tmp_path / "ycbcr.tif"
    tifffile.imwrite(path, cmu_pixels, tile=(256, 256), compression="jpeg", photometric="ycbcr", subsampling=subsampling)
    with OpenSlideReader(path, mpp=0.499) as r:
        assert r.direct_level(0).page.photometric == 6
        scale, note = r.scaled_decoding(0, 2.0)
    assert scale == 1 and "not RGB-stored JPEG tiles" in note, note


def test_rgb_tiles_read_as_ycbcr_fail_the_per_slide_check():
    """The check can fail: Aperio's RGB tiles decoded as YCbCr (no Adobe marker, as nvJPEG does) are tens
    of grey levels off, so the slide is resized after a full decode, and its note says why."""
    with OpenSlideReader(CMU) as r:
        assert r.scaled_decoding(0, 2.0)[0] == 2
    with OpenSlideReader(CMU) as r:
        r._scaled_level(0, 2)._rgb = False  # the colour mistake the check exists for, before any tile is cached
        scale, note = r.scaled_decoding(0, 2.0)
    assert scale == 1
    assert note.startswith("resize (antialiased bilinear: scaled decoding differs by") and "block means" in note


def test_plan_picks_the_scale_and_says_so_in_provenance():
    cases = [(1.0, 224, 2, "jpeg-dct-1/2"), (2.0, 64, 4, "jpeg-dct-1/4"), (0.5, 224, 1, "none (read at the target"),
             (0.8, 224, 1, "resize (antialiased bilinear: a reduction of 1.60 has no JPEG scale")]
    for mpp, size, scale, note in cases:
        with OpenSlideReader(CMU) as r:
            plan = plan_slide(r, ExtractConfig(target_mpp=mpp, patch_size=size), SPEC, None)
        assert plan.geometry.scale == scale and plan.info["downscale"].startswith(note), (mpp, plan.info["downscale"])
    with OpenSlideReader(CMU) as r:
        plan = plan_slide(r, ExtractConfig(target_mpp=1.0), SPEC, None, RunConfig(downscale="resize"))
    assert plan.geometry.scale == 1 and plan.info["downscale"].startswith("resize (antialiased bilinear, --downscale")
    with OpenSlideReader(CMU, direct=False) as r:  # every pixel through OpenSlide: nothing to decode at a scale
        plan = plan_slide(r, ExtractConfig(target_mpp=1.0), SPEC, None)
    assert plan.geometry.scale == 1 and "not RGB-stored JPEG tiles read directly" in plan.info["downscale"]


def test_dct_patches_match_the_resize_and_each_tile_is_decoded_once():
    """Every patch of the slide at 1.0 µm/px (192 level-0 px to 96): the scaled decode plus the 3-tap filter
    is within 2 grey levels on average of today's resize (the filter alone: within 1.5 of it and 4 levels
    apart without it), and no tile is decoded twice."""
    cfg = ExtractConfig(target_mpp=1.0, patch_size=96, min_tissue=0.0)
    with OpenSlideReader(CMU) as r:
        resize_plan = plan_slide(r, cfg, SPEC, None, RunConfig(downscale="resize"))
        resized = np.stack([read_patch(r, resize_plan.geometry, x, y) for x, y in resize_plan.coords]).astype(int)
    with OpenSlideReader(CMU) as r:
        plan = plan_slide(r, cfg, SPEC, None)
        geom = plan.geometry
        dct = np.stack([read_patch(r, geom, x, y) for x, y in plan.coords]).astype(int)
        raw = np.stack([r.read(x, y, 0, geom.read_size, geom.read_size, scale=2) for x, y in plan.coords]).astype(int)
        level = r._scaled_level(0, 2)
        assert level.decoded <= len(level.page.dataoffsets)
    inner = (slice(None), slice(2, -2), slice(2, -2))
    assert np.abs(dct - resized)[inner].mean() < 2.0
    assert np.abs(raw - resized)[inner].mean() > 3.0  # block means alone are sharper than the resize


def test_like_bilinear_is_the_documented_filter():
    """[1, a, 1] / (a + 2) along rows then columns, edges repeated, rounded: checked against float math."""
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    for scale, a in ((2, 10), (4, 12)):
        p = np.pad(img.astype(float), ((1, 1), (1, 1), (0, 0)), mode="edge")
        rows = (p[:, :-2] + a * p[:, 1:-1] + p[:, 2:]) / (a + 2)
        want = (rows[:-2] + a * rows[1:-1] + rows[2:]) / (a + 2)
        assert np.abs(like_bilinear(img, scale) - want).max() <= 0.5 + 1e-9
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert (like_bilinear(flat, 2) == 77).all()
    assert resize_rgb(np.zeros((10, 10, 3), np.uint8), 5).shape == (5, 5, 3)


def test_downscale_is_a_run_choice_recorded_per_slide(tmp_path):
    """Both methods extract into one feature set (as the decoders do: about a grey level apart), each slide's
    provenance naming its method; a bad value is refused by name."""
    with pytest.raises(ValueError, match="downscale must be one of dct, resize, got 'lanczos'"):
        RunConfig(downscale="lanczos")
    store = tmp_path / "s.zarr"
    cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", patch_size=64, target_mpp=2.0)
    for method in ("dct", "resize"):
        report = extract(find_slides([CMU]), store, cfg, name=method, run=RunConfig(downscale=method, num_workers=0))
        assert report.done == ["CMU-1-Small-Region"]
    with featstore.open(store) as s:
        dct, resize = (s.read_slide(m, "CMU-1-Small-Region") for m in ("dct", "resize"))
        assert dct.attrs["provenance"]["downscale"].startswith("jpeg-dct-1/4")
        assert resize.attrs["provenance"]["downscale"].startswith("resize (antialiased bilinear, --downscale")
        np.testing.assert_array_equal(dct.coords, resize.coords)
        a, b = (np.asarray(f.features, np.float64) for f in (dct, resize))
        a, b = a - (a + b).mean(0) / 2, b - (a + b).mean(0) / 2  # centred: a random network's raw cosines are all ~1
        def cosine(u, v):
            return (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))

        same, neighbours = np.median(cosine(a, b)), np.median(cosine(b[1:], b[:-1]))
        assert same > 0.95 and same > neighbours + 0.5, (same, neighbours)
