"""Direct TIFF tile decoding against OpenSlide and against known pixels: same pixels, clean failures."""

from __future__ import annotations

import shutil

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

import featstore
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides, read_patch
from featstore.slides import OpenSlideReader, SlideError
from featstore.tifftiles import TiffTiles, TileCache, TileReadError, open_direct
from featstore.tiling import Geometry

from .conftest import CMU, TCGA_NO_MPP, TILES


@pytest.fixture(scope="module")
def cmu_pixels() -> np.ndarray:
    with openslide.OpenSlide(str(CMU)) as s:
        return np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))


def _random_regions(reader, n, seed=0):
    rng = np.random.default_rng(seed)
    w, h = reader.dimensions
    for _ in range(n):
        # Some regions hang over the right or bottom edge: both readers must fill that with white.
        yield int(rng.integers(0, w - 50)), int(rng.integers(0, h - 50)), int(rng.integers(1, 400)), int(rng.integers(1, 400))


@pytest.mark.parametrize("path", [CMU, TCGA_NO_MPP], ids=["aperio-jpeg", "aperio-jpeg2000"])
def test_direct_tiles_equal_openslide_at_level0(path):
    with OpenSlideReader(path, mpp=0.5) as fast, OpenSlideReader(path, mpp=0.5, direct=False) as ref:
        assert fast.pixel_source.startswith("tifffile"), fast.pixel_source
        assert ref.pixel_source == "openslide"
        for x, y, w, h in _random_regions(fast, 25):
            np.testing.assert_array_equal(fast.read(x, y, 0, w, h), ref.read(x, y, 0, w, h), err_msg=f"{(x, y, w, h)}")


@pytest.mark.parametrize("codec", [{"compression": "jpeg", "photometric": "ycbcr"},  # 2x2 chroma subsampling
                                   {"compression": "jpeg", "photometric": "ycbcr", "subsampling": (1, 1)},
                                   {"compression": "lzw", "photometric": "rgb"}], ids=["jpeg-ycbcr-420", "jpeg-ycbcr-444", "lzw"])
def test_direct_tiles_equal_openslide_on_generic_tiff_codecs(tmp_path, codec, cmu_pixels):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, cmu_pixels, tile=(256, 256), **codec)
    with OpenSlideReader(path, mpp=0.5) as fast, OpenSlideReader(path, mpp=0.5, direct=False) as ref:
        assert fast.pixel_source.startswith("tifffile"), fast.pixel_source
        for x, y, w, h in _random_regions(fast, 10):
            np.testing.assert_array_equal(fast.read(x, y, 0, w, h), ref.read(x, y, 0, w, h), err_msg=f"{(x, y, w, h)}")


def test_direct_tiles_equal_known_pixels_at_every_level(tmp_path, cmu_pixels):
    """A lossless (zlib) 3-level pyramid written from known arrays: each level reads back exactly,
    at the level pixel nearest to x / downsample."""
    path = tmp_path / "pyramid.tif"
    levels = [np.ascontiguousarray(cmu_pixels[::f, ::f]) for f in (1, 4, 16)]
    with tifffile.TiffWriter(path) as tif:
        for i, lv in enumerate(levels):
            tif.write(lv, tile=(128, 128), compression="zlib", photometric="rgb", subfiletype=0 if i == 0 else 1)
    with OpenSlideReader(path, mpp=0.5) as r:
        assert r.pixel_source.startswith("tifffile") and len(r.level_dimensions) == 3
        for level, truth in enumerate(levels):
            ds = r.level_downsamples[level]
            for x, y, w, h in _random_regions(r, 15, seed=level):
                got = r.read(x, y, level, w, h)
                px, py = round(x / ds), round(y / ds)
                want = np.full((h, w, 3), 255, np.uint8)
                crop = truth[py:py + h, px:px + w]
                want[:crop.shape[0], :crop.shape[1]] = crop
                np.testing.assert_array_equal(got, want, err_msg=f"level {level} {(x, y, w, h)}")


def test_sparse_tiles_are_background_as_in_openslide(tmp_path):
    """A tile the file declares empty (byte count 0) is white, as OpenSlide paints it; the others are read."""
    img = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    path = tmp_path / "sparse.tif"
    tifffile.imwrite(path, (None if i == 1 else img for i in range(4)), shape=(256, 256, 3), dtype="uint8",
                     tile=(128, 128), photometric="rgb", compression="zlib")
    with OpenSlideReader(path, mpp=0.5) as fast, OpenSlideReader(path, mpp=0.5, direct=False) as ref:
        assert fast.pixel_source.startswith("tifffile")
        got = fast.read(64, 0, 0, 192, 192)
        np.testing.assert_array_equal(got, ref.read(64, 0, 0, 192, 192))
        assert (got[:128, 64:] == 255).all() and (got[:128, :64] == img[:, 64:]).all()


def test_thumbnail_is_block_means_read_in_strips(tmp_path, cmu_pixels):
    """A slide with no pyramid: the thumbnail is block means of level 0, read a strip at a time (memory
    stays flat on a 100,000-pixel scan); the strip size changes nothing."""
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, cmu_pixels, tile=(256, 256), compression="zlib", photometric="rgb")
    with OpenSlideReader(path, mpp=0.5) as r:
        region = r.regions()[0]
        whole, ds = r.thumbnail(region, 500)
        strips, ds_strips = r.thumbnail(region, 500, strip_bytes=1 << 16)
    f = 6  # ceil(2967 / 500) level-0 pixels per thumbnail pixel
    assert ds == ds_strips == f
    np.testing.assert_array_equal(whole, strips)
    h, w = cmu_pixels.shape[:2]
    padded = np.full((-(-h // f) * f, -(-w // f) * f, 3), 255, np.uint8)  # white beyond the edge
    padded[:h, :w] = cmu_pixels
    blocks = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f, 3).mean(axis=(1, 3), dtype=np.float32)
    np.testing.assert_array_equal(whole, np.round(blocks).astype(np.uint8))


def test_resized_patch_is_pils_antialiased_bilinear():
    """A 40x-style read (449 px resized to 224) equals PIL's BILINEAR resize to within one grey level."""
    with OpenSlideReader(CMU) as r:
        geom = Geometry.for_slide(1.0, 224, r.mpp, r.level_downsamples)
        assert (geom.read_size, geom.patch_size) == (449, 224)
        raw = r.read(600, 900, geom.level, geom.read_size, geom.read_size)
        got = read_patch(r, geom, 600, 900)
    want = np.asarray(Image.fromarray(raw).resize((224, 224), Image.Resampling.BILINEAR))
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs(got.astype(int) - want).max() <= 1


def test_corrupt_tile_is_an_error_never_a_blank_patch(tmp_path):
    bad = tmp_path / "corrupt.svs"
    shutil.copy(CMU, bad)
    with tifffile.TiffFile(bad) as tif:
        page = tif.pages[0]
        index = 0  # the top-left tile: far from the centre region checked at open
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(bad, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\0" * count)
    with OpenSlideReader(bad) as r:
        assert r.pixel_source.startswith("tifffile")
        assert r.read(1000, 1000, 0, 224, 224).shape == (224, 224, 3)
        with pytest.raises(SlideError, match=r"corrupt\.svs.*tile 0 of page 0 cannot be decoded"):
            r.read(0, 0, 0, 224, 224)
    report = extract(find_slides([bad, CMU]), tmp_path / "s.zarr", ExtractConfig(min_tissue=0.0, seed=1),
                     run=RunConfig(batch_size=16, num_workers=0))
    assert report.done == ["CMU-1-Small-Region"]
    assert "tile 0 of page 0 cannot be decoded" in report.failed["corrupt"]


def test_file_cut_short_during_a_run_names_the_tile(tmp_path):
    """A slide whose file is truncated after it was opened (a copy still in flight, a full disk)."""
    path = tmp_path / "cut.svs"
    shutil.copy(CMU, path)
    with TiffTiles(path, ((2220, 2967),)) as tiles:
        level = tiles.levels[0]
        last = int(np.argmax(level.page.dataoffsets))
        with open(path, "r+b") as fh:
            fh.truncate(int(level.page.dataoffsets[last]) + 10)
        ty, tx = divmod(last, level.tiles_across)
        with pytest.raises(TileReadError, match=rf"cut\.svs: tile {last} of page 0 is cut short .* the file is truncated"):
            level.read(tx * level.tile_w, ty * level.tile_h, 8, 8)


def test_disagreement_or_foreign_vendor_falls_back_to_openslide():
    tiles, note = open_direct(CMU, "aperio", ((2220, 2967),), lambda t: "colours differ")
    assert tiles is None and note == "openslide (direct TIFF decoding disagreed: colours differ)"
    tiles, note = open_direct(CMU, "leica", ((2220, 2967),), lambda t: None)
    assert tiles is None and "no direct reader for vendor 'leica'" in note
    with OpenSlideReader(TILES / "tcga-lung-rgb.png", mpp=0.5) as png:
        assert png.pixel_source.startswith("PIL (plain image")


def test_extract_with_direct_tiles_equals_extract_through_openslide(tmp_path):
    store = tmp_path / "s.zarr"
    for reader in ("auto", "openslide"):
        cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", patch_size=64, target_mpp=2.0)
        # OpenSlide has no scaled decoding: the same resize both ways.
        run = RunConfig(decoder=reader, downscale="resize", num_workers=0)
        report = extract(find_slides([CMU]), store, cfg, name=f"via-{reader}", run=run)
        assert report.done == ["CMU-1-Small-Region"]
    with featstore.open(store) as s:
        direct, ref = (s.read_slide(f"via-{r}", "CMU-1-Small-Region") for r in ("auto", "openslide"))
        assert direct.attrs["provenance"]["pixels"].startswith("tifffile")
        assert ref.attrs["provenance"]["pixels"] == "openslide"
        np.testing.assert_array_equal(direct.coords, ref.coords)
        np.testing.assert_array_equal(direct.features, ref.features)


def test_tile_cache_is_bounded_in_bytes_and_evicts_least_recently_used():
    cache = TileCache(max_bytes=3 * 100)
    tiles = {k: np.zeros(100, np.uint8) for k in [(0, 1), (0, 2), (1, 1)]}  # keys: (page, tile) across levels
    for k, t in tiles.items():
        cache.put(k, t)
    cache.put((0, 9), None)  # an empty tile costs nothing
    assert cache.get((0, 1)) is tiles[(0, 1)]  # now most recently used
    cache.put((1, 2), np.zeros(100, np.uint8))
    assert cache.bytes == 300
    assert cache.get((0, 2)) is False and cache.get((0, 1)) is not False and cache.get((0, 9)) is None
