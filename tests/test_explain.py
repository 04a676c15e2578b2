"""fusion explain on the real CMU slide: a saved model's image attention carried back to every patch."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

import featstore
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides
from featstore.tissue import tissue_mask
from fusion.api import CVOptions
from fusion.explain import draw, explain
from fusion.model import fit
from fusion.simulate import simulate_cohort
from fusion.train import TrainConfig

from .conftest import CMU, TILES

SLIDE = "CMU-1-Small-Region"
CFG = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The real CMU slide extracted; image_abmil fitted on a SIMULATED cohort whose bags are drawn from that
    slide's own patches (fusion simulate --patches-from), so the model applies to the real slide."""
    tmp = tmp_path_factory.mktemp("explain")
    store = tmp / "s.zarr"
    assert extract(find_slides([CMU]), store, CFG, run=RunConfig(num_workers=0)).done == [SLIDE]
    simulate_cohort(tmp / "train.zarr", patients=60, patches=24, genes=20, image_signal=2.0, split=1.0,
                    patches_from=store).close()
    with featstore.open(tmp / "train.zarr") as s:
        config = s.feature_set_info("simulated")["config"]
        assert config["simulated"] is True and config["encoder"] == "resnet50-trunc"
    fit(tmp / "train.zarr", "image_abmil", CVOptions(label_map=None, view_k=8, train=TrainConfig(
        epochs=20, patience=5, token_dim=16)), tmp / "model")
    return store, tmp / "model"


def test_heatmap_of_the_real_slide_has_its_aspect_and_its_hottest_patch_on_tissue(trained, tmp_path):
    store, model = trained
    res = explain(model, store, SLIDE, tmp_path / "heat.png")
    coords, scores = res[SLIDE]
    assert (tmp_path / "heat.png").stat().st_size > 10_000
    # On its face: the model was trained on SIMULATED bags, and the slide's features come from random weights.
    with Image.open(tmp_path / "heat.png") as png:
        assert png.text["Warning"] == ("model trained on SIMULATED data; features from a RANDOM-WEIGHT encoder: "
                                       "not biology")
    with featstore.open(store) as s:
        attrs = s.slide_attrs(None, SLIDE)
        n = len(s.read_slide(None, SLIDE).features)
    assert len(scores) == n and np.isclose(scores.sum(), 1.0) and scores.max() > scores.min()
    canvas, ds = draw(tmp_path / "again.png", attrs, coords, scores, "check")
    w, h = 2220, 2967  # CMU-1-Small-Region at level 0
    assert abs(canvas.shape[1] / canvas.shape[0] - w / h) < 0.01
    mask = tissue_mask(canvas)
    side = attrs["provenance"]["patch_size_level0"]
    x, y = coords[int(np.argmax(scores))] + side // 2
    assert mask[int(y / ds), int(x / ds)], "the hottest patch is not on tissue"
    with open(tmp_path / "heat.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and rows[0].keys() == {"slide_id", "x", "y", "score"}
    np.testing.assert_allclose([float(r["score"]) for r in rows], scores, rtol=1e-5)


def test_explain_every_slide_of_a_store_including_a_tile_folder_and_refusals(trained, tmp_path):
    store, model = trained
    tiles = tmp_path / "tiles.zarr"
    report = extract(find_slides([TILES], tiles_as_slide=True), tiles, CFG, mpp_default=0.5, run=RunConfig(num_workers=0))
    assert report.done, report.failed
    res = explain(model, tiles, None, tmp_path / "all")
    assert sorted(p.name for p in (tmp_path / "all").glob("*.png")) == sorted(f"{s}.png" for s in res)
    with pytest.raises(ValueError, match="slide 'nope' is not in feature set"):
        explain(model, store, "nope")
    # A fusion head's image attention, on a store with slides and no expression table at all.
    fusion_model = tmp_path / "concat"
    fit(store.parent / "train.zarr", "concat", CVOptions(label_map=None, view_k=8, train=TrainConfig(
        epochs=5, token_dim=16, top_genes=10)), fusion_model)
    coords, scores = explain(fusion_model, store, SLIDE)[SLIDE]
    assert len(scores) == len(coords) and np.isclose(scores.sum(), 1.0)
    gene_model = tmp_path / "genes"
    simulate_cohort(tmp_path / "sim.zarr", patients=60, patches=8, dim=8, genes=20, seed=0).close()
    fit(tmp_path / "sim.zarr", "image_mean", CVOptions(label_map=None, train=TrainConfig(epochs=3)), gene_model)
    with pytest.raises(ValueError, match="no attention over patches to explain"):
        explain(gene_model, tmp_path / "sim.zarr", None)
