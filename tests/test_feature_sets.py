"""fusion bench --features a,b: the encoder as a factor, every head on each feature set of the same patients."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from cli import fusion_app
from fusion.api import CVOptions
from fusion.feature_sets import bench_feature_sets
from fusion.simulate import simulate_cohort
from fusion.train import TrainConfig

HEADS = ["logreg", "image_mean"]


@pytest.fixture(scope="module")
def two_encoders(tmp_path_factory):
    """One SIMULATED cohort with two feature sets of the same patients: 'strong' carries the image signal,
    'null' has its bags shuffled between patients (the signal is there, on the wrong patients)."""
    path = tmp_path_factory.mktemp("enc") / "sim.zarr"
    simulate_cohort(path, patients=240, patches=24, dim=16, genes=40, gene_signal=1.0, image_signal=2.0, seed=4,
                    feature_set="strong").close()
    with featstore.open(path) as s:
        table = s.read_labels(s.resolve("labels", None))
        labels = dict(zip(table.patient_ids, table.labels))
    simulate_cohort(path, patient_ids=list(labels), labels=labels, null="image", seed=5, feature_set="null").close()
    return path, labels


def test_each_head_on_each_feature_set_with_paired_differences(two_encoders, tmp_path):
    path, _ = two_encoders
    opts = CVOptions(label_map=None, bootstrap=500, train=TrainConfig(calibrate="none"))
    rows, runs = bench_feature_sets(path, ["strong", "null"], HEADS, opts, tmp_path / "out")
    by = {(r["head"], r["features"]): r for r in rows}
    assert set(by) == {(h, fs) for h in HEADS for fs in ("strong", "null")}
    # The gene-only head never sees the image: same patients, same folds, so the very same predictions.
    np.testing.assert_array_equal(runs["strong"]["logreg"].result.oof, runs["null"]["logreg"].result.oof)
    assert by[("logreg", "null")]["vs_strong"] == 0 and by[("logreg", "null")]["within_noise"]
    # The image head loses its signal on the shuffled bags, and the paired CI says so.
    img = by[("image_mean", "null")]
    assert by[("image_mean", "strong")]["roc_auc"] > 0.7 and img["roc_auc"] < 0.6, (by[("image_mean", "strong")], img)
    assert img["vs_strong_hi"] < 0 and not img["within_noise"]
    for f in ("features.csv", "features.md", "features.png", "strong/leaderboard.md", "null/leaderboard.md"):
        assert (tmp_path / "out" / f).exists(), f
    assert "SIMULATED" in (tmp_path / "out" / "features.md").read_text()


def test_feature_sets_of_other_patients_or_one_feature_set_are_refused(two_encoders, tmp_path):
    path, labels = two_encoders
    few = list(labels)[:200]
    simulate_cohort(path, patient_ids=few, labels={p: labels[p] for p in few}, seed=6, feature_set="fewer").close()
    opts = CVOptions(label_map=None)
    with pytest.raises(ValueError, match=r"strong and fewer cover different patients \(40 only in strong, 0 only in fewer"):
        bench_feature_sets(path, ["strong", "fewer"], HEADS, opts)
    with pytest.raises(ValueError, match="needs two or more different feature sets"):
        bench_feature_sets(path, ["strong", "strong"], HEADS, opts)
    with pytest.raises(ValueError, match="no feature set uni in"):
        bench_feature_sets(path, ["strong", "uni"], HEADS, opts)
    r = CliRunner(env={"COLUMNS": "250"}).invoke(fusion_app, ["bench", str(path), "--features", "strong,null",
                                                              "--heads", "logreg", "--label-map", "none", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "heads x feature sets" in r.output and "+0.000" in r.output
