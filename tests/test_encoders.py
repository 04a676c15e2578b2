"""Encoder presets (the pathology foundation models, built with timm) and weights from a local file only.

No real weights exist on these machines and nothing may be downloaded: each preset is checked at full size
on torch's meta device (shapes and readout, no memory), and its exact code path with real numbers at one
block of depth (a ViT-g's 1.1 B parameters would not fit a test), plus Lunit's ViT-S/8 at full size: built
with seeded random weights, saved to a file, loaded back strictly through ``--weights PATH``, extracted.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import featstore
from cli import featstore_app
from featstore.encoder_presets import PRESETS, _timm
from featstore.encoders import ENCODERS, build_encoder, register_encoder
from featstore.errors import WeightsError
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides
from featstore.provenance import sha256_file

from .conftest import CMU

TIMM_PRESETS = [s for s in PRESETS if s.architecture.startswith("timm:")]
# The published sizes (model cards), in millions of parameters of the backbone.
PARAMS_M = {"uni_v1": 303, "uni_v2": 681, "virchow2": 631, "hoptimus0": 1135, "hoptimus1": 1135, "gigapath": 1135,
            "lunit-vits8": 22}


@pytest.mark.parametrize("spec", TIMM_PRESETS, ids=lambda s: s.name)
def test_every_preset_at_full_size_has_its_published_shape(spec):
    with torch.device("meta"):
        backbone, head = spec.build()
        out = head(backbone)(torch.empty(2, 3, spec.input_size, spec.input_size))
    assert tuple(out.shape) == (2, spec.dim)
    assert round(sum(p.numel() for p in backbone.parameters()) / 1e6) == PARAMS_M[spec.name]
    assert spec.input_problem(spec.input_size) is None and spec.native_mpp == 0.5
    assert set(spec.describe()) >= {"architecture", "arch_kwargs", "readout", "dim", "mean", "std", "weights_from"}


@pytest.fixture()
def shallow():
    """Each timm preset with its depth cut to one block: the same model code, readout and weight keys."""
    names = []
    for spec in TIMM_PRESETS:
        kwargs = {**dict(spec.arch_kwargs), "depth": 1}
        name = f"{spec.name}-depth1"
        register_encoder(dataclasses.replace(spec, name=name, arch_kwargs=tuple(kwargs.items()),
                                             build=_timm(spec.architecture.removeprefix("timm:"), kwargs, spec.readout)))
        names.append(name)
    yield names
    for name in names:
        ENCODERS.pop(name)


def _save(name: str, path, seed: int = 0) -> None:
    backbone = build_encoder(name, "random", seed).model
    if isinstance(backbone, torch.nn.Module) and hasattr(backbone, "backbone"):  # the cls+mean readout wrapper
        backbone = backbone.backbone
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    if str(path).endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.filterwarnings("ignore:encoder .* uses seeded random weights")
def test_each_preset_loads_its_own_file_strictly_and_refuses_another(shallow, tmp_path):
    x = torch.randint(0, 256, (2, 3, 224, 224)).float() / 255
    for i, name in enumerate(shallow):
        path = tmp_path / (f"{name}.safetensors" if i % 2 else f"{name}.bin")
        _save(name, path, seed=3)
        enc = build_encoder(name, str(path))
        ref = build_encoder(name, "random", 3)
        assert enc.weights_id == f"sha256:{sha256_file(path)}" and enc.spec["name"] == name
        with torch.no_grad():
            np.testing.assert_allclose(enc.model(x).numpy(), ref.model(x).numpy(), rtol=1e-5, atol=1e-5)
            assert enc.model(x).shape == (2, ENCODERS[name].dim)
    # Another architecture's file: refused, naming the preset and the first keys that do not fit.
    lunit = next(tmp_path.glob("lunit-vits8-depth1.*"))
    with pytest.raises(WeightsError, match=r"do not fit the 'uni_v1-depth1' preset.*of another shape.*are they another"):
        build_encoder("uni_v1-depth1", str(lunit))
    # A file cut short (a copy still in flight): refused, never half-loaded.
    whole = next(tmp_path.glob("uni_v2-depth1.*")).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(WeightsError, match=r"cannot load weights .*cut\.safetensors.*is the file complete"):
        build_encoder("uni_v2-depth1", str(tmp_path / "cut.safetensors"))


@pytest.mark.filterwarnings("ignore:encoder .* uses seeded random weights")
def test_every_preset_extracts_the_slide_from_its_weights_file(shallow, tmp_path):
    """Each preset's code path end to end at one block of depth: its weights file in, the CMU slide out, the dim,
    the spec and the digest in provenance; a patch size that is not a multiple of the ViT patch is refused."""
    cfg = ExtractConfig(precision="fp32", target_mpp=2.0, patch_size=112)
    for name in shallow:
        weights = tmp_path / f"{name}.safetensors"
        _save(name, weights)
        store = tmp_path / f"{name}.zarr"
        report = extract(find_slides([CMU]), store, dataclasses.replace(cfg, encoder=name, weights=str(weights)),
                         RunConfig(num_workers=0, batch_size=8))
        assert report.done == ["CMU-1-Small-Region"], report.failed
        with featstore.open(store) as s:
            sl = s.read_slide(None, "CMU-1-Small-Region")
        prov = sl.attrs["provenance"]
        assert sl.features.shape[1] == ENCODERS[name].dim and np.isfinite(sl.features).all()
        assert prov["weights"] == f"sha256:{sha256_file(weights)}" and prov["encoder_spec"]["name"] == name
    with pytest.raises(ValueError, match="--patch-size 100 is not a multiple of uni_v2-depth1's ViT patch of 14 px"):
        extract(find_slides([CMU]), tmp_path / "x.zarr", dataclasses.replace(cfg, encoder="uni_v2-depth1",
                                                                           patch_size=100), RunConfig(num_workers=0))
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.filterwarnings("ignore:encoder .* uses seeded random weights")
def test_a_hugging_face_folder_is_a_weights_path(shallow, tmp_path):
    """A model folder as the Hugging Face cache lays it out: the one weights file inside is found and read."""
    snapshot = tmp_path / "models--bioptimus--H-optimus-0" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    _save("hoptimus0-depth1", snapshot / "pytorch_model.bin")
    enc = build_encoder("hoptimus0-depth1", str(tmp_path / "models--bioptimus--H-optimus-0"))
    assert enc.weights_id == f"sha256:{sha256_file(snapshot / 'pytorch_model.bin')}"
    (snapshot / "model.safetensors").write_bytes(b"")
    with pytest.raises(WeightsError, match="must hold exactly one of model.safetensors, pytorch_model.bin.*found 2"):
        build_encoder("hoptimus0-depth1", str(tmp_path / "models--bioptimus--H-optimus-0"))


@pytest.mark.filterwarnings("ignore:encoder .* uses seeded random weights")
def test_extract_with_a_foundation_model_from_a_local_file(tmp_path):
    """Lunit's ViT-S/8 at full size: weights saved, loaded through --weights, the CMU slide extracted twice to the
    same features, the spec and the digest in provenance; other weights are refused on resume."""
    weights = tmp_path / "lunit.safetensors"
    _save("lunit-vits8", weights, seed=5)
    cfg = ExtractConfig(encoder="lunit-vits8", weights=str(weights), precision="fp32", target_mpp=2.0, patch_size=112)
    runs = []
    for store in ("a.zarr", "b.zarr"):
        report = extract(find_slides([CMU]), tmp_path / store, cfg, RunConfig(num_workers=0, batch_size=8))
        assert report.done == ["CMU-1-Small-Region"]
        with featstore.open(tmp_path / store) as s:
            runs.append(s.read_slide(None, "CMU-1-Small-Region"))
    a, b = runs
    assert a.features.shape[1] == 384
    np.testing.assert_array_equal(a.features, b.features)
    prov = a.attrs["provenance"]
    assert prov["weights"] == f"sha256:{sha256_file(weights)}" and prov["encoder"] == "lunit-vits8"
    assert prov["encoder_spec"]["architecture"] == "timm:vit_small_patch8_224" and prov["libraries"]["timm"]
    other = tmp_path / "other.safetensors"
    _save("lunit-vits8", other, seed=6)
    with pytest.raises(featstore.StoreError, match="another config"):
        extract(find_slides([CMU]), tmp_path / "a.zarr", dataclasses.replace(cfg, weights=str(other)),
                RunConfig(num_workers=0))


def test_cli_lists_the_encoders_and_a_preset_without_weights_is_one_clear_line(tmp_path):
    runner = CliRunner(env={"COLUMNS": "250"})
    r = runner.invoke(featstore_app, ["encoders", "--json"])
    assert r.exit_code == 0, r.output
    import json

    listed = {d["name"]: d for d in json.loads(r.output)}
    assert set(listed) >= {"resnet50", "resnet50-trunc", "uni_v1", "uni_v2", "virchow2", "hoptimus0", "hoptimus1",
                           "gigapath", "lunit-vits8"}
    assert listed["virchow2"]["dim"] == 2560 and listed["virchow2"]["readout"] == "cls+mean"
    r = runner.invoke(featstore_app, ["extract", "--slides", str(CMU), "--out", str(tmp_path / "s.zarr"),
                                      "--encoder", "uni_v1"])
    assert r.exit_code != 0
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "encoder 'uni_v1' needs --weights PATH" in lines[0] and "MahmoodLab/UNI" in lines[0]
    assert not (tmp_path / "s.zarr").exists()
