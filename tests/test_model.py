"""fusion fit / predict / cv --save-models: a saved model reproduces itself, and refuses inputs it was not made for."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from cli import fusion_app
from fusion.api import CVOptions, cv
from fusion.model import fit, load_model, model_folders, predict
from fusion.simulate import simulate_cohort
from fusion.train import TrainConfig

FAST = TrainConfig(epochs=10, patience=5, token_dim=8, top_genes=30)
runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "train.zarr"
    simulate_cohort(path, patients=100, patches=16, dim=16, genes=40, seed=1).close()
    return path


@pytest.mark.parametrize("head", ["concat", "cross_attn", "gene_mlp", "image_abmil"])
def test_fit_then_predict_on_the_training_store_reproduces_the_fits_own_predictions(store, tmp_path, head):
    res = fit(store, head, CVOptions(label_map=None, train=FAST), tmp_path / "m")
    ids, p, models = predict(tmp_path / "m", store)
    assert ids == res["patient_ids"] and len(models) == 1
    np.testing.assert_array_equal(p, res["p_positive"])
    assert {f.name for f in (tmp_path / "m").iterdir()} == {"model.json", "preprocess.npz", "weights.pt"}


def test_gene_order_does_not_matter_missing_genes_are_imputed_or_refused(store, tmp_path):
    fit(store, "concat", CVOptions(label_map=None, train=FAST), tmp_path / "m")
    _, want, models = predict(tmp_path / "m", store)
    genes = models[0].meta["genes"]
    other = tmp_path / "shuffled.zarr"
    simulate_cohort(other, patients=100, patches=16, dim=16, genes=40, seed=1).close()
    with featstore.open(other, "a") as s:
        t = s.read_expression()
        order = np.random.default_rng(0).permutation(len(t.gene_ids))
        t.values, t.gene_ids = t.values[:, order], [t.gene_ids[j] for j in order]
        s.write_expression("expression", t, overwrite=True)
    np.testing.assert_array_equal(predict(tmp_path / "m", other)[1], want)
    with featstore.open(other, "a") as s:  # one model gene set to its training mean for everyone...
        t = s.read_expression()
        j = t.gene_ids.index(genes[0])
        t.values[:, j] = models[0].pre["gene_mean"][0]
        s.write_expression("expression", t, overwrite=True)
    at_mean = predict(tmp_path / "m", other)[1]
    with featstore.open(other, "a") as s:  # ...is what losing it gives: imputed with that mean, and said
        t = s.read_expression()
        keep = [k for k, g in enumerate(t.gene_ids) if g != genes[0]]
        t.values, t.gene_ids = t.values[:, keep], [t.gene_ids[k] for k in keep]
        s.write_expression("expression", t, overwrite=True)
    with pytest.warns(UserWarning, match=f"1 of the model's {len(genes)} genes are missing .*{genes[0]}"):
        got = predict(tmp_path / "m", other)[1]
    np.testing.assert_array_equal(got, at_mean)
    with featstore.open(other, "a") as s:  # a quarter lost: refused
        t = s.read_expression()
        keep = [j for j, g in enumerate(t.gene_ids) if g not in genes[: len(genes) // 4]]
        t.values, t.gene_ids = t.values[:, keep], [t.gene_ids[j] for j in keep]
        s.write_expression("expression", t, overwrite=True)
    with pytest.raises(ValueError, match="lacks .* of the model's .* genes \\(more than 10%\\)"):
        predict(tmp_path / "m", other)


def test_a_store_whose_features_were_made_differently_is_refused(store, tmp_path):
    fit(store, "image_abmil", CVOptions(label_map=None, train=FAST), tmp_path / "m")
    other = tmp_path / "wider.zarr"
    simulate_cohort(other, patients=60, patches=16, dim=24, genes=40, seed=2).close()
    with pytest.raises(ValueError, match="made differently from the model's.*dim is 24, the model's 16"):
        predict(tmp_path / "m", other)


def test_cv_save_models_and_the_cli_predict_the_mean_of_the_fold_ensemble(store, tmp_path):
    cv(store, "concat", CVOptions(label_map=None, train=FAST, save_models=True), out=tmp_path / "cv")
    folders = model_folders(tmp_path / "cv" / "models")
    assert len(folders) == 5
    r = runner.invoke(fusion_app, ["predict", str(tmp_path / "cv" / "models"), str(store), "--out",
                                   str(tmp_path / "p.csv")])
    assert r.exit_code == 0 and "100 patients scored with 5 model(s) of concat" in r.output, r.output
    r = runner.invoke(fusion_app, ["predict", str(tmp_path / "cv" / "models"), str(store), "--out",
                                   str(tmp_path / "p.csv"), "--quiet"])
    assert r.exit_code == 0 and r.output == "", r.output
    with open(tmp_path / "p.csv") as fh:
        rows = list(csv.DictReader(fh))
    each = [predict(f, store)[1] for f in folders]
    np.testing.assert_allclose([float(x["p_positive"]) for x in rows], np.mean(each, axis=0), atol=1e-6)
    # A fold model scores its own test fold as cv did.
    m = load_model(folders[0])
    ids, p, _ = predict(folders[0], store)
    with open(tmp_path / "cv" / "predictions.csv") as fh:
        oof = {x["patient_id"]: float(x["p_positive"]) for x in csv.DictReader(fh) if int(x["fold"]) == m.meta["fold"]}
    np.testing.assert_allclose([p[ids.index(k)] for k in oof], list(oof.values()), atol=1e-6)


@pytest.mark.parametrize("head", ["logreg", "image_logreg", "stack", "xgboost"])
def test_a_baseline_head_is_saved_as_plain_arrays_and_predicts_exactly_as_it_was_fitted(store, tmp_path, head):
    """stack tops most leaderboards: every head is deployable, saved without a pickle (XGBoost in its own JSON)."""
    res = fit(store, head, CVOptions(label_map=None, train=FAST), tmp_path / "m")
    assert {f.name for f in (tmp_path / "m").iterdir()} == {"model.json", "preprocess.npz", "head.npz"}
    with np.load(tmp_path / "m" / "head.npz", allow_pickle=False) as z:  # plain numbers only
        assert all(z[k].dtype.kind in "fu" for k in z.files)
    ids, p, _ = predict(tmp_path / "m", store)
    assert ids == res["patient_ids"]
    np.testing.assert_array_equal(p, res["p_positive"])
    # The fold ensemble of cv --save-models predicts each fold's out-of-fold predictions back.
    run = cv(store, head, CVOptions(label_map=None, train=FAST, save_models=True, folds=2), out=tmp_path / "cv")
    for folder in model_folders(tmp_path / "cv" / "models"):
        m = load_model(folder)
        test = run.result.assign[0] == m.meta["fold"]
        got = predict(folder, store, [pid for pid, t in zip(ids, test) if t])[1]
        np.testing.assert_allclose(got, run.result.oof[0, test], rtol=1e-10)


def test_cli_fit_saves_a_torch_head_and_a_baseline(store, tmp_path):
    r = runner.invoke(fusion_app, ["fit", str(store), "--head", "gene_mlp", "--out", str(tmp_path / "m"),
                                   "--label-map", "none", "--epochs", "5"])
    assert r.exit_code == 0, r.output
    assert "trained on 100 patients" in r.output
    r = runner.invoke(fusion_app, ["fit", str(store), "--head", "xgboost", "--out", str(tmp_path / "x"),
                                   "--label-map", "none"])
    assert r.exit_code == 0 and "trained on 100 patients" in r.output, r.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_model(tmp_path / "m").meta["head"] == "gene_mlp"
