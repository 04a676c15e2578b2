"""--decoder gpu: JPEG tiles decoded in batches on the run's device, checked per slide against the CPU decoder.

On a machine without CUDA the same code path runs on the CPU (torchvision's libjpeg-turbo standing in for
nvJPEG); on a GPU the CUDA test runs too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import featstore
from featstore.extract import ExtractConfig, RunConfig, device_decode, extract, find_slides
from featstore.extract.device_decode import DeviceTileDecoder
from featstore.tifftiles import TiffTiles

from .conftest import CMU, HARDWARE

SLIDE = "CMU-1-Small-Region"
CFG = ExtractConfig(encoder="resnet50-trunc", precision="fp32", patch_size=64, target_mpp=2.0)


def _level():
    return TiffTiles(CMU, ((2220, 2967),))


def test_spliced_tile_streams_decode_to_the_cpu_decoders_pixels_and_the_check_can_fail():
    with _level() as tiles:
        level = tiles.levels[0]
        dec = DeviceTileDecoder(level, torch.device("cpu"))
        problem, figures = dec.disagreement()
        assert problem is None and figures.startswith("mean 0.000, max 0"), figures
        some = [0, 17, 64, 129]
        got = dec.tiles(some)
        for i in some:
            np.testing.assert_array_equal(got[i].permute(1, 2, 0).numpy(), level._tile(i))
        # Without the Adobe marker the decoder takes Aperio's RGB tiles for YCbCr: the check says so.
        dec_wrong = DeviceTileDecoder(level, torch.device("cpu"))
        dec_wrong._rgb = False
        problem, _ = dec_wrong.disagreement()
        assert problem and "differs from the CPU decoder" in problem
        # The cache stays bounded.
        small = DeviceTileDecoder(level, torch.device("cpu"), cache_tiles=3)
        small.tiles([0, 1, 2, 3, 4])
        assert len(small._cache) == 5 and (small.tiles([5]) and len(small._cache) == 3)


def test_device_regions_are_the_cpu_readers_pixels_at_edges_outside_and_in_empty_tiles():
    with _level() as tiles:
        level = tiles.levels[0]
        dec = DeviceTileDecoder(level, torch.device("cpu"))
        # Inside, across tile seams, over the right and bottom edges, partly and wholly outside the image.
        boxes = np.array([[0, 0], [300, 500], [-50, -20], [2100, 2900], [2219, 10], [-300, -300], [5000, 0]])
        got = dec.regions(boxes, 192)
        assert got.shape == (len(boxes), 192, 192, 3) and got.dtype == torch.uint8
        for (x, y), region in zip(boxes, got):
            np.testing.assert_array_equal(region.numpy(), level.read(int(x), int(y), 192, 192), err_msg=f"{(x, y)}")
        assert (got[-1] == 255).all() and (got[-2] == 255).all()
        # A tile the file declares empty (byte count 0) reads white, its neighbours as they are.
        empty = DeviceTileDecoder(level, torch.device("cpu"))
        empty._cache[1 * level.tiles_across + 1] = None
        region = empty.regions(np.array([[level.tile_w - 32, level.tile_h - 32]]), 64)[0].numpy()
        want = level.read(level.tile_w - 32, level.tile_h - 32, 64, 64).copy()
        want[32:, 32:] = 255
        np.testing.assert_array_equal(region, want)


def _features(store, name):
    with featstore.open(store) as s:
        return s.read_slide(name, SLIDE)


def _ycbcr_tiff(path: Path) -> Path:
    """The CMU pixels as a tiled TIFF with YCbCr 4:2:0 JPEG tiles (tifffile's default), the other common
    layout; Aperio's own tiles are RGB-stored."""
    import openslide
    import tifffile

    with openslide.OpenSlide(str(CMU)) as s:
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        px_per_cm = 1e4 / float(s.properties["openslide.mpp-x"])
    tifffile.imwrite(path, img, tile=(256, 256), compression="jpeg", photometric="rgb",
                     resolution=(px_per_cm, px_per_cm), resolutionunit="CENTIMETER")
    return path


@pytest.mark.parametrize("layout", ["aperio-rgb", "ycbcr"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_decoder_gives_the_cpu_decoders_features_and_says_so(tmp_path, device, layout):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{HARDWARE} a CUDA GPU for nvJPEG (the CPU case runs the same code path)")
    slide = CMU if layout == "aperio-rgb" else _ycbcr_tiff(tmp_path / "CMU-ycbcr.tif")
    store = tmp_path / "s.zarr"
    for decoder in ("cpu", "gpu"):
        report = extract(find_slides([slide]), store, CFG, name=decoder,
                         run=RunConfig(device=device, decoder=decoder, num_workers=0))
        assert report.done == [slide.stem], report.failed
    with featstore.open(store) as s:
        cpu, dev = s.read_slide("cpu", slide.stem), s.read_slide("gpu", slide.stem)
        # decoder is a run choice: both feature sets share one identity
        assert s.feature_set_info("cpu")["config_hash"] == s.feature_set_info("gpu")["config_hash"]
    assert cpu.attrs["provenance"]["pixels"].startswith("tifffile")
    pixels = dev.attrs["provenance"]["pixels"]
    if device == "cuda" and layout == "aperio-rgb":
        # nvJPEG (torchvision 0.26, H200) takes RGB-stored tiles for YCbCr whatever the Adobe marker says:
        # the check refuses them and the workers read the slide. Should a later nvJPEG decode them right,
        # it is used; either way the features below must be the CPU decoder's.
        assert "checked against tifffile/imagecodecs" in pixels or "device decoder differs" in pixels, pixels
    else:
        assert "checked against tifffile/imagecodecs on this slide" in pixels, pixels
    np.testing.assert_array_equal(cpu.coords, dev.coords)
    a, b = cpu.features.astype(np.float64), dev.features.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos.min()


def test_a_slide_whose_device_decoding_disagrees_is_read_on_the_cpu_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(device_decode, "MAX_ABS_DIFF", -1)  # any difference, even none, now disagrees
    report = extract(find_slides([CMU]), tmp_path / "s.zarr", CFG, run=RunConfig(decoder="gpu", num_workers=2))
    assert report.done == [SLIDE]
    got = _features(tmp_path / "s.zarr", "resnet50-trunc")
    # Read by the reader workers with the CPU decoder (their direct-reader note kept), and the reason said.
    pixels = got.attrs["provenance"]["pixels"]
    assert pixels.startswith("tifffile") and " in the reader workers: the device decoder differs" in pixels, pixels
    ref = extract(find_slides([CMU]), tmp_path / "r.zarr", CFG, run=RunConfig(decoder="cpu", num_workers=0))
    assert ref.done == [SLIDE]
    want = _features(tmp_path / "r.zarr", "resnet50-trunc")
    np.testing.assert_array_equal(got.coords, want.coords)
    # Same pixels; two reader workers can batch them differently, which may move an fp16 value by one last place.
    np.testing.assert_allclose(got.features.astype(np.float32), want.features.astype(np.float32), rtol=1e-3, atol=1e-4)


def test_a_device_decoder_that_fails_leaves_the_slide_to_the_reader_workers(tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("nvJPEG status 6")

    monkeypatch.setattr(DeviceTileDecoder, "disagreement", broken)
    report = extract(find_slides([CMU]), tmp_path / "s.zarr", CFG, run=RunConfig(decoder="gpu", num_workers=0))
    assert report.done == [SLIDE], report.failed
    pixels = _features(tmp_path / "s.zarr", "resnet50-trunc").attrs["provenance"]["pixels"]
    assert "in the reader workers: the device decoder failed (RuntimeError: nvJPEG status 6)" in pixels, pixels


@pytest.mark.parametrize("verdict", [True, False, None])
def test_reader_workers_send_coordinates_only_for_slides_the_main_process_takes(verdict):
    from featstore.extract import PatchReader
    from featstore.extract.messages import Coords, Pixels, Planned

    asked = []

    def on_device(idx, plan):
        asked.append(idx)
        return verdict

    got = {Planned: 0, Coords: 0, Pixels: 0}
    for item in PatchReader(list(enumerate(find_slides([CMU]))), CFG, None, 32, 2, run=RunConfig(decoder="gpu"),
                            on_device=None if verdict is None else on_device):
        match item:
            case Coords(coords=rows) | Pixels(patches=rows):
                got[type(item)] += len(rows)
            case Planned(plan=plan):
                got[Planned] += 1
                assert "device_decode" not in plan.info  # the workers' question, answered, is not provenance
    assert got[Planned] == 1 and asked == ([] if verdict is None else [0])
    # Every row comes once: as coordinates for the device, else as pixels read by the workers.
    rows = got[Coords] + got[Pixels]
    assert rows > 0 and (got[Coords] == rows if verdict else got[Pixels] == rows), got
