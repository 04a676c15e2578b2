"""--decoder gpu: JPEG tiles decoded in batches on the run's device, checked per slide against the CPU decoder.

On a machine without CUDA the same code path runs on the CPU (torchvision's libjpeg-turbo standing in for
nvJPEG); on a GPU the CUDA test runs too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import featstore
from featstore.extract import ExtractConfig, device_decode, extract, find_slides
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


def _features(store, name):
    with featstore.open(store) as s:
        return s.read_slide(name, SLIDE)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_device_decoder_gives_the_cpu_decoders_features_and_says_so(tmp_path, device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{HARDWARE} a CUDA GPU for nvJPEG (the CPU case runs the same code path)")
    store = tmp_path / "s.zarr"
    for decoder in ("cpu", "gpu"):
        report = extract(find_slides([CMU]), store, ExtractConfig(**{**CFG.__dict__, "decoder": decoder}),
                         name=decoder, device=device, num_workers=0)
        assert report.done == [SLIDE], report.failed
    cpu, dev = _features(store, "cpu"), _features(store, "gpu")
    assert cpu.attrs["provenance"]["pixels"].startswith("tifffile")
    assert "checked against tifffile/imagecodecs on this slide" in dev.attrs["provenance"]["pixels"]
    np.testing.assert_array_equal(cpu.coords, dev.coords)
    a, b = cpu.features.astype(np.float64), dev.features.astype(np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.999, cos.min()
    with featstore.open(store) as s:  # decoder is a run choice: both feature sets share one identity
        assert s.feature_set_info("cpu")["config_hash"] == s.feature_set_info("gpu")["config_hash"]


def test_a_slide_whose_device_decoding_disagrees_is_read_on_the_cpu_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(device_decode, "MAX_ABS_DIFF", -1)  # any difference, even none, now disagrees
    report = extract(find_slides([CMU]), tmp_path / "s.zarr", ExtractConfig(**{**CFG.__dict__, "decoder": "gpu"}),
                     num_workers=2)
    assert report.done == [SLIDE]
    got = _features(tmp_path / "s.zarr", "resnet50-trunc")
    assert got.attrs["provenance"]["pixels"].startswith("tifffile in the main process: the device decoder differs")
    ref = extract(find_slides([CMU]), tmp_path / "r.zarr", ExtractConfig(**{**CFG.__dict__, "decoder": "cpu"}),
                  num_workers=0)
    assert ref.done == [SLIDE]
    want = _features(tmp_path / "r.zarr", "resnet50-trunc")
    np.testing.assert_array_equal(got.coords, want.coords)
    # Same pixels; two reader workers can batch them differently, which may move an fp16 value by one last place.
    np.testing.assert_allclose(got.features.astype(np.float32), want.features.astype(np.float32), rtol=1e-3, atol=1e-4)
