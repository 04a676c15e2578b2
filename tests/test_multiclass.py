"""Targets of more than two classes: the metrics kernel against scikit-learn on every bootstrap resample,
temperature calibration, every class head as a softmax on real PAM50 expression with SIMULATED image bags, the
report, the CLI, and the refusals."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from typer.testing import CliRunner

import featstore
from cli import fusion_app
from featstore.tables import import_labels, read_expression
from fusion.api import CVOptions, bench, cv
from fusion.calibration import fit_calibrator
from fusion.heads import get_head, list_heads
from fusion.model import fit, predict
from fusion.multiclass import multiclass_metrics, pooled_bootstrap
from fusion.simulate import simulate_cohort
from fusion.train import TrainConfig

from .conftest import MIXOMICS

FAST = TrainConfig(epochs=15, patience=5, token_dim=8)


def test_multiclass_metrics_equal_scikit_learn_on_every_bootstrap_resample():
    rng = np.random.default_rng(0)
    y = rng.choice(4, size=120, p=[0.4, 0.3, 0.2, 0.1])
    # Each patient gets one of 24 probability vectors, mostly one leaning to its class: ties in every class's scores.
    vectors = rng.dirichlet(np.ones(4), size=24)
    leaning = vectors.argmax(1)
    pick = [rng.choice(np.flatnonzero(leaning == k)) if rng.random() < 0.6 and (leaning == k).any()
            else rng.integers(24) for k in y]
    p = vectors[pick]
    idx = rng.integers(0, 120, size=(25, 120))
    boot = pooled_bootstrap(y, p[None], idx, ("roc_auc", "roc_auc[3]", "f1", "balanced_accuracy", "accuracy", "brier"))
    checked = 0
    for b in range(len(idx)):
        yb, pb = y[idx[b]], p[idx[b]]
        if len(np.unique(yb)) < 4:
            continue
        checked += 1
        np.testing.assert_allclose(boot["roc_auc"][b], roc_auc_score(yb, pb, multi_class="ovr"), atol=1e-12)
        np.testing.assert_allclose(boot["roc_auc[3]"][b], roc_auc_score(yb == 3, pb[:, 3]), atol=1e-12)
        assert boot["f1"][b] == pytest.approx(f1_score(yb, pb.argmax(1), average="macro"), abs=1e-12)
        with pytest.warns(UserWarning) if len(set(pb.argmax(1)) - set(yb)) else _nothing():
            ref = balanced_accuracy_score(yb, pb.argmax(1))
        assert boot["balanced_accuracy"][b] == pytest.approx(ref, abs=1e-12)
        assert boot["accuracy"][b] == pytest.approx(accuracy_score(yb, pb.argmax(1)), abs=1e-12)
        assert boot["brier"][b] == pytest.approx(((pb - np.eye(4)[yb]) ** 2).sum(1).mean(), abs=1e-12)
    assert checked >= 20
    # One row without resampling is the plain metric; a class absent from the rows gives NaN, not a number.
    one = multiclass_metrics(y, p, metrics=("roc_auc", "roc_auc[0]"))
    assert one["roc_auc[0]"][0] == pytest.approx(roc_auc_score(y == 0, p[:, 0]))
    absent = multiclass_metrics(y[y != 3], p[y != 3], metrics=("roc_auc[3]", "roc_auc"))
    assert np.isnan(absent["roc_auc[3]"][0]) and np.isfinite(absent["roc_auc"][0])


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_temperature_scaling_keeps_each_patients_ranking_and_lowers_the_validation_loss():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    logits = rng.normal(size=(90, 3)) + 4.0 * np.eye(3)[y] * rng.uniform(0, 1, (90, 1))  # overconfident
    p = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    cal = fit_calibrator(p, y, "platt")
    q = cal(p)
    assert cal.method == "temperature" and 0.05 < cal.a < 1  # softened
    np.testing.assert_allclose(q.sum(1), 1.0)
    np.testing.assert_array_equal(np.argsort(q, 1), np.argsort(p, 1))

    def nll(probs):
        return -np.log(probs[np.arange(len(y)), y]).mean()
    assert nll(q) < nll(p)
    with pytest.raises(ValueError, match="isotonic fits one curve to two classes"):
        fit_calibrator(p, y, "isotonic")
    assert np.array_equal(fit_calibrator(p, y, "none")(p), p)


@pytest.fixture(scope="module")
def pam50(tmp_path_factory):
    """Real mixOmics TCGA-BRCA expression (220 samples x 200 genes) with its three PAM50 calls (imported with
    --label-map pam50), and SIMULATED image bags drawn from those labels (they carry the minority class, Her2)."""
    path = tmp_path_factory.mktemp("pam50") / "brca.zarr"
    with featstore.open(path, "a") as s:
        expr, _ = read_expression(MIXOMICS / "mrna_all.csv")
        s.write_expression("expression", expr)
        table, _ = import_labels(s, MIXOMICS / "subtype_all.csv", "labels", label_column="pam50", label_map="pam50")
    simulate_cohort(path, patches=16, dim=16, image_signal=0.25, informative_fraction=1.0, seed=0,
                    patient_ids=table.patient_ids, labels=dict(zip(table.patient_ids, table.labels))).close()
    return path


def test_every_multiclass_head_on_real_pam50_calls_with_the_report(pam50, tmp_path):
    from .test_report import check_numbers, render

    heads = list_heads("multiclass")
    assert set(heads) == set(list_heads("binary")), "every class head trains a softmax too"
    rows, runs = bench(pam50, "all", CVOptions(label_map=None, bootstrap=200, train=FAST), out=tmp_path / "b")
    assert {r["head"] for r in rows} == set(heads)
    auc = {r["head"]: r["roc_auc"] for r in rows}
    per_class = {h: {c: v["roc_auc"]["pooled"] for c, v in run.metrics["per_class"].items()} for h, run in runs.items()}
    # Expression tells the three calls apart (they are computed from it); the simulated bags tell Her2 from the rest.
    assert min(auc["logreg"], auc["xgboost"], auc["gene_mlp"]) > 0.95, auc
    assert per_class["image_logreg"]["Her2"] > 0.75 and auc["image_logreg"] < 0.75, per_class["image_logreg"]
    # Stacking loses nothing to its better input, and the fusion heads, warm-started from the multinomial stack,
    # nothing to stacking; each uses the genes.
    assert auc["stack"] > max(auc["logreg"], auc["image_logreg"]) - 0.02, auc
    for h in ("stack", "late", "concat", "bilinear", "cross_attn"):
        assert auc[h] > auc["stack"] - 0.01, (h, auc)
        check = runs[h].metrics["modality_check"]
        assert check["genes"]["informative"] and check["image"]["drop"] > 0, (h, check)
    assert len(runs["cross_attn"].metrics["trained_kept"]["per_model"]) == 5
    m = runs["logreg"].metrics
    assert m["target"] == "multiclass" and m["classes"] == ["Basal", "Her2", "LumA"]
    assert np.array(m["operating_point"]["confusion"]).sum() == m["n_patients"] == 220
    assert m["calibration"]["method"] == "temperature" and set(m["calibration"]["after"]) == {"Basal", "Her2", "LumA"}
    assert set(m["top_genes"]["genes"][0]["weight"]) == {"Basal", "Her2", "LumA"}
    with (tmp_path / "b" / "logreg" / "predictions.csv").open() as fh:
        table = list(csv.DictReader(fh))
    probs = np.array([[float(r[f"p_{c}"]) for c in m["classes"]] for r in table])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [r["predicted"] for r in table] == [m["classes"][k] for k in probs.argmax(1)]
    # The page: the answer first (stack against the best single modality), every head, every number from its
    # metrics.json, every figure decoded (forest; per head confusion, per-class ROC and reliability; modality check).
    parsed, log = render(tmp_path / "b" / "report.html", tmp_path)
    assert "CONSOLE" not in log
    assert parsed.heads == list(runs)
    fused = sum(get_head(h).multimodal for h in heads)  # each with its modality-check figure
    assert parsed.figures == f"{parsed.images}/{parsed.images}" and parsed.images == 1 + 3 * len(heads) + fused
    per_head = {h: json.loads((tmp_path / "b" / h / "metrics.json").read_text()) for h in heads}
    check_numbers(parsed, lambda p: (per_head[p.split(".", 1)[0]], p.split(".", 1)[1]))
    assert any(p == "logreg.per_class.Her2.roc_auc.pooled" for p, _ in parsed.metrics)
    text = (tmp_path / "b" / "report.html").read_text()
    assert "SIMULATED data" in text and "stack " in text.split("<h2>Leaderboard</h2>")[0]
    assert "macro ROC-AUC" in (tmp_path / "b" / "leaderboard.md").read_text()


def test_labels_shuffled_between_patients_score_chance(pam50, tmp_path):
    """The leakage check for a softmax head: with the calls shuffled among the patients, nothing can be learnt, and
    a head that scored well here would be reading its test fold."""
    shutil.copytree(pam50, tmp_path / "copy.zarr")
    with featstore.open(tmp_path / "copy.zarr", "a") as s:
        table = s.read_labels("labels")
        shuffled = list(np.random.default_rng(0).permutation(table.labels))
        s.write_labels("shuffled", type(table)(table.patient_ids, shuffled, shuffled, {"source": "shuffled (test)"}))
    run = cv(tmp_path / "copy.zarr", "gene_mlp", CVOptions(labels="shuffled", label_map=None, bootstrap=200, train=FAST))
    lo, hi = run.metrics["summary"]["roc_auc"]["ci95"]
    assert lo < 0.5 < hi + 0.02 and run.metrics["summary"]["roc_auc"]["pooled"] < 0.6, run.metrics["summary"]["roc_auc"]


def test_multiclass_refusals_and_the_cli(pam50, tmp_path):
    with pytest.raises(ValueError, match=r"head 'coxnet' does not train multiclass targets; the heads that do: "
                                         r"gene_mlp, image_mean, image_abmil, late, concat"):
        bench(pam50, ["logreg", "coxnet"], CVOptions(label_map=None))
    with pytest.raises(ValueError, match="isotonic fits one curve to two classes"):
        cv(pam50, "logreg", CVOptions(label_map=None, train=TrainConfig(calibrate="isotonic")))
    runner = CliRunner(env={"COLUMNS": "250"})
    r = runner.invoke(fusion_app, ["cv", str(pam50), "--head", "logreg", "--out", str(tmp_path / "cv"),
                                   "--bootstrap", "100"])
    assert r.exit_code == 0, r.output
    assert "3 classes, macro ROC-AUC" in r.output and "ROC-AUC Her2 vs rest" in r.output and "confusion.png" in r.output
    assert (tmp_path / "cv" / "confusion.png").stat().st_size > 1000
    # One class against the rest stays a two-class run.
    r = runner.invoke(fusion_app, ["cv", str(pam50), "--head", "logreg", "--positive", "Basal", "--quiet",
                                   "--bootstrap", "100"])
    assert r.exit_code == 0 and "logreg: ROC-AUC" in r.output, r.output


@pytest.mark.parametrize("head", ["stack", "xgboost", "cross_attn"])
def test_a_multiclass_model_is_saved_and_predicts_exactly_as_it_was_fitted(pam50, tmp_path, head):
    """fusion fit writes a softmax model (plain arrays, XGBoost's JSON or a state dict); fusion predict reads it back
    and gives the fit's own class probabilities; a fold model of cv --save-models gives its out-of-fold ones."""
    opts = CVOptions(label_map=None, bootstrap=100, train=FAST)
    res = fit(pam50, head, opts, tmp_path / "m")
    assert res["model"]["threshold"] is None and res["model"]["classes"] == ["Basal", "Her2", "LumA"]
    ids, p, models = predict(tmp_path / "m", pam50)
    assert ids == res["patient_ids"] and p.shape == (220, 3)
    np.testing.assert_allclose(p, res["p_positive"], atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    run = cv(pam50, head, CVOptions(label_map=None, bootstrap=100, train=FAST, save_models=True), out=tmp_path / "cv")
    fold0 = tmp_path / "cv" / "models" / "repeat0_fold0"
    test = [p for p, f in zip(run.cohort.patient_ids, run.result.assign[0]) if f == 0]
    ids, p, _ = predict(fold0, pam50, test)
    np.testing.assert_allclose(p, run.result.oof[0, run.result.assign[0] == 0], atol=1e-5)
    runner = CliRunner(env={"COLUMNS": "250"})
    r = runner.invoke(fusion_app, ["predict", str(tmp_path / "cv" / "models"), str(pam50), "--out",
                                   str(tmp_path / "pred.csv")])
    assert r.exit_code == 0, r.output
    with (tmp_path / "pred.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient_id", "p_Basal", "p_Her2", "p_LumA", "predicted"] and len(rows) == 220


def test_noise_in_a_test_fold_changes_nothing_fitted_for_it_with_three_classes(pam50):
    """The behavioural leakage check on a softmax: the multinomial warm start, the weights, the temperature."""
    from fusion.cohort import load_cohort
    from fusion.views import build_view

    from .test_fusion import assert_fold0_blind_to_its_test_patients

    with featstore.open(pam50) as s:
        cohort = load_cohort(s, label_map=None)
        view = build_view(s, cohort.feature_set, cohort.slides, k=8, cache=False)
    assert cohort.target == "multiclass"
    assert_fold0_blind_to_its_test_patients(cohort, view, ("cross_attn",))
