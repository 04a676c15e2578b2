"""Survival targets end to end: the survival table import, the c-index kernel against scikit-survival, the Cox
heads against scikit-survival's own estimators on the bundled real TCGA-BRCA expression and Pan-Gyn overall
survival, a SIMULATED cohort on which stacking must use both inputs, and the torch heads' Cox loss: the partial
likelihood scikit-survival maximises, the fusion heads starting exactly from the Cox stack."""

from __future__ import annotations

import csv
import dataclasses
import html
import json
from pathlib import Path

import numpy as np
import pytest

import featstore
from featstore.errors import InputError
from featstore.survival import read_survival
from fusion.api import CVOptions, bench, cv
from fusion.survival import concordance, resample_counts, surv

DATA = Path(__file__).resolve().parents[1] / "data"
PANGYN = DATA / "tcga_brca_pam50_labels" / "brca_subtype_patient_table.csv"
OS_COLUMNS = {"time_column": "days_to_death,days_to_last_followup", "event_column": "vital_status"}


def _tied_outcome(n: int = 120, seed: int = 0):
    """Times and risks with ties in both, about 40% censored."""
    rng = np.random.default_rng(seed)
    y = surv(rng.random(n) < 0.6, rng.integers(1, 30, n).astype(float))
    return y, np.round(rng.standard_normal(n), 1)


def test_the_concordance_kernel_is_scikit_survivals_on_every_resample():
    from sksurv.metrics import concordance_index_censored, concordance_index_ipcw

    y, risk = _tied_outcome()
    assert concordance(y, risk)[0] == pytest.approx(concordance_index_censored(y["event"], y["time"], risk)[0], abs=1e-12)
    tau = y["time"][y["event"]].max()
    uno = concordance_index_ipcw(y, y, risk, tau=tau)[0]
    assert concordance(y, risk, uno=True)[0] == pytest.approx(uno, abs=1e-12)
    # The bilinear form over resample counts is Harrell's c of the resampled rows, duplicates included.
    idx = np.random.default_rng(1).integers(0, len(y), (20, len(y)))
    fast = concordance(y, risk, resample_counts(idx, len(y)))
    slow = [concordance_index_censored(y["event"][i], y["time"][i], risk[i])[0] for i in idx]
    np.testing.assert_allclose(fast, slow, atol=1e-12)
    assert not np.allclose(fast, fast[0])  # the resamples differ: the check compared something


def test_the_pan_gyn_table_imports_as_overall_survival_and_bad_rows_are_named(tmp_path):
    with pytest.raises(InputError, match=r"row 196 \(patient TCGA-A8-A082\): time '-31' .* is negative"):
        read_survival(PANGYN, id_column="patient_barcode", **OS_COLUMNS)
    table, notes = read_survival(PANGYN, id_column="patient_barcode", skip_bad_times=True, **OS_COLUMNS)
    rows = list(csv.DictReader(PANGYN.open()))
    dead = {r["patient_barcode"] for r in rows if r["vital_status"] == "Dead"}
    assert int(table.event.sum()) == len(dead & set(table.patient_ids)) > 100
    i = table.patient_ids.index("TCGA-3C-AAAU")  # Alive, days_to_last_followup 4047
    assert (table.time[i], table.event[i]) == (4047.0, False)
    assert "TCGA-A8-A082" not in table.patient_ids and any("TCGA-A8-A082" in n for n in notes)

    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,time,status\nP1,10,1:DECEASED\nP2,20,0:LIVING\nP3,5,maybe\n")
    with pytest.raises(InputError, match=r"row 4 \(patient P3\): 'status' is 'maybe', not an event indicator"):
        read_survival(bad, time_column="time", event_column="status")
    bad.write_text("patient_id,time,status\nP1,10,0\nP2,20,Alive\nP3,,1\n")
    with pytest.raises(InputError, match="none of the 2 patients has an event"):
        read_survival(bad, time_column="time", event_column="status")
    bad.write_text("patient_id,time,status\nP1,10,1:DECEASED\nP2,20,0:LIVING\nP3,,1\n")
    table, notes = read_survival(bad, time_column="time", event_column="status", time_unit="months")
    assert table.patient_ids == ["P1", "P2"] and table.event.tolist() == [True, False]
    assert "no follow-up time" in notes[1] and table.provenance["time_unit"] == "months"


@pytest.mark.parametrize("suffix", [".zarr", ".h5"])
def test_a_survival_table_round_trips_and_validates(tmp_path, suffix):
    table, _ = read_survival(PANGYN, id_column="patient_barcode", skip_bad_times=True, **OS_COLUMNS)
    path = tmp_path / f"s{suffix}"
    with featstore.writing(path) as s:
        s.write_survival("os", table)
    with featstore.open(path) as s:
        back = s.read_survival()
        assert s.validate() == []
        with pytest.raises(featstore.StoreError, match="no labels named 'os'"):
            s.read_labels("os")
    assert back.patient_ids == table.patient_ids
    np.testing.assert_array_equal(back.time, table.time)
    np.testing.assert_array_equal(back.event, table.event)


def _real_survival_store(tmp_path) -> Path:
    """The bundled mixOmics TCGA-BRCA expression (220 patients x 200 genes) with the Pan-Gyn overall survival of
    the 218 whose participant code maps to a barcode (data/mixomics_breast_tcga/PROVENANCE.md): derived here
    from the two sources, and held equal to the derived table the demo reads."""
    codes = {r["inferred_patient_barcode"]: r["patient_id"]
             for r in csv.DictReader((DATA / "mixomics_breast_tcga" / "subtype_all.csv").open())
             if r["inferred_patient_barcode"]}
    table = tmp_path / "os.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["patient_id", "patient_barcode", "vital_status", "days_to_death", "days_to_last_followup"])
        for r in csv.DictReader(PANGYN.open()):
            if r["patient_barcode"] in codes:
                w.writerow([codes[r["patient_barcode"]], r["patient_barcode"], r["vital_status"], r["days_to_death"],
                            r["days_to_last_followup"]])
    assert table.read_text() == (DATA / "mixomics_breast_tcga" / "overall_survival.csv").read_text()
    path = tmp_path / "brca.zarr"
    from featstore.tables import read_expression

    expression, _ = read_expression(DATA / "mixomics_breast_tcga" / "mrna_all.csv")
    survival, _ = read_survival(table, **OS_COLUMNS)
    with featstore.writing(path) as s:
        s.write_expression("expression", expression)
        s.write_survival("os", survival)
    return path


def test_coxnet_on_real_brca_expression_equals_scikit_survivals_own_model_on_the_same_folds(tmp_path):
    """Overall survival from the bundled expression: our coxnet's pooled c-index beside scikit-survival's own
    scaled Coxnet pipeline fitted on each fold's training part with the mix and strength our inner CV chose,
    scored by scikit-survival's c-index (a fold whose inner CV chose the all-zero model predicts one risk for
    every patient in both)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sksurv.linear_model import CoxnetSurvivalAnalysis
    from sksurv.metrics import concordance_index_censored

    from fusion.contract import create_head
    from fusion.cox import fit_coxnet
    from fusion.train import TrainConfig, prepare

    path = _real_survival_store(tmp_path)
    run = cv(path, "coxnet", CVOptions(survival="os", bootstrap=200), out=tmp_path / "cv")
    cohort, assign = run.cohort, run.result.assign
    y, x = cohort.y, cohort.genes.astype(np.float64)
    assert run.metrics["cohort"]["survival"]["events"] == int(y["event"].sum()) > 25
    data = prepare(cohort, None, create_head("coxnet").spec, assign, TrainConfig())
    reference, fitted = np.zeros(len(y)), 0
    for i in range(len(data.fitted)):
        train = np.concatenate([data.train[i], data.val[i]])
        model = fit_coxnet(data.genes[i].numpy(), y, train, 0)  # the fold's fit, kept by its digest
        if model is None:
            continue
        fitted += 1
        _, l1_ratio, alphas, k = model.candidate
        pipe = make_pipeline(StandardScaler(), CoxnetSurvivalAnalysis(l1_ratio=l1_ratio, alphas=alphas,
                                                                      max_iter=100000)).fit(x[train], y[train])
        reference[data.test[i]] = pipe.predict(x[data.test[i]], alpha=alphas[k])
    assert fitted >= 3, fitted  # most folds fit a model: the comparison is about models, not constants
    ours = run.metrics["summary"]["c_index"]["pooled"]
    theirs = concordance_index_censored(y["event"], y["time"], reference)[0]
    assert ours == pytest.approx(theirs, abs=0.01), (ours, theirs)
    # The outputs a user opens: risks per patient, the risk groups with their log-rank test, the page.
    metrics = json.loads((tmp_path / "cv" / "metrics.json").read_text())
    assert metrics["target"] == "survival" and set(metrics["risk_groups"]["groups"]) == {"low risk", "high risk"}
    from sksurv.metrics import cumulative_dynamic_auc

    tdauc = metrics["time_dependent_auc"]
    assert len(tdauc["times"]) == 3 and tdauc["mean_auc"] == pytest.approx(
        cumulative_dynamic_auc(y, y, run.result.oof[0], tdauc["times"])[1])
    header = (tmp_path / "cv" / "predictions.csv").read_text().splitlines()[0]
    assert header == "patient_id,repeat,fold,time,event,risk"
    assert "Harrell's c-index" in html.unescape((tmp_path / "cv" / "report.html").read_text())


def test_stacking_for_survival_uses_both_inputs_and_a_null_image_is_called_so(tmp_path):
    """SIMULATED: the hazard carries signal in both modalities (then in the genes only): stack_cox must beat the
    best single modality with a CI above 0 and use both (and call the null image uninformative)."""
    from fusion.simulate import simulate_cohort

    for null in (None, "image"):
        path = tmp_path / f"s{null}.zarr"
        simulate_cohort(path, patients=300, patches=32, dim=32, genes=60, seed=3, null=null, survival=True,
                        gene_signal=1.5, image_signal=1.5).close()
        rows, runs = bench(path, ["coxnet", "image_coxnet", "stack_cox"], CVOptions(survival="survival", bootstrap=300),
                           out=tmp_path / f"b{null}")
        board = {r["head"]: r for r in rows}
        assert set(board) == {"coxnet", "image_coxnet", "stack_cox"}
        check = runs["stack_cox"].metrics["modality_check"]
        assert check["genes"]["informative"], check
        if null is None:
            assert check["image"]["informative"], check
            assert board["stack_cox"]["vs_best_unimodal_ci95"][0] > 0, board["stack_cox"]
        else:
            assert not check["image"]["informative"], check
            assert board["stack_cox"]["c_index"] > board["coxnet"]["c_index"] - 0.02, board
        assert "Does histology add to expression?" in (tmp_path / f"b{null}" / "report.html").read_text()
    # The page in a real browser: every figure decodes (the forest plot, a Kaplan-Meier plot per head, the
    # modality check), and every number on it is metrics.json's.
    from .test_report import check_numbers, render

    parsed, log = render(tmp_path / "bimage" / "report.html", tmp_path)
    assert "CONSOLE" not in log, [ln for ln in log.splitlines() if "CONSOLE" in ln]
    assert sorted(parsed.heads) == sorted(board) and parsed.figures == "5/5", (parsed.heads, parsed.figures)
    per_head = {h: json.loads((tmp_path / "bimage" / h / "metrics.json").read_text()) for h in board}
    check_numbers(parsed, lambda p: (per_head[p.split(".", 1)[0]], p.split(".", 1)[1]))


def test_a_two_class_head_is_refused_on_a_survival_target_naming_the_heads_that_train_it(tmp_path):
    path = _real_survival_store(tmp_path)
    with pytest.raises(ValueError, match="head 'logreg' does not train survival targets; the heads that do: gene_mlp, "
                                         ".*, cross_attn, xgboost, coxnet, image_coxnet, stack_cox"):
        cv(path, "logreg", CVOptions(survival="os"))
    with pytest.raises(featstore.StoreError, match=r"no labels table, and a survival table \(os\): train on it with "
                                                   "--survival NAME"):
        cv(path, "logreg", CVOptions())


def test_the_command_line_imports_survival_and_cross_validates_it(tmp_path):
    from typer.testing import CliRunner

    from cli import featstore_app, fusion_app

    runner = CliRunner(env={"COLUMNS": "250"})
    store = str(tmp_path / "cli.zarr")
    args = ["import-labels", str(PANGYN), "--store", store, "--name", "os", "--id-column", "patient_barcode",
            "--time-column", "days_to_death,days_to_last_followup"]
    r = runner.invoke(featstore_app, args)
    assert r.exit_code != 0 and "needs both --time-column and --event-column" in r.output, r.output
    r = runner.invoke(featstore_app, [*args, "--event-column", "vital_status"])
    assert r.exit_code != 0 and "row 196 (patient TCGA-A8-A082)" in r.output and "--skip-bad-times" in r.output
    assert not (tmp_path / "cli.zarr").exists()  # a refused import leaves no store behind
    r = runner.invoke(featstore_app, [*args, "--event-column", "vital_status", "--skip-bad-times"])
    assert r.exit_code == 0 and "survival of 1085 patients" in r.output, r.output
    r = runner.invoke(fusion_app, ["simulate", "--out", str(tmp_path / "sim.zarr"), "--patients", "120", "--target",
                                   "survival", "--genes", "30", "--patches", "8", "--dim", "8"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(fusion_app, ["cv", str(tmp_path / "sim.zarr"), "--head", "coxnet", "--survival", "survival",
                                   "--quiet", "--bootstrap", "100"])
    assert r.exit_code == 0 and "coxnet: c-index 0." in r.output, r.output
    r = runner.invoke(fusion_app, ["cv", str(tmp_path / "sim.zarr"), "--head", "image_logreg", "--survival", "survival"])
    assert r.exit_code != 0 and "does not train survival targets" in r.output, r.output


def test_the_cox_loss_is_the_partial_likelihood_scikit_survival_maximises():
    """A linear model trained on CoxLoss (tied times: Breslow) lands on scikit-survival's unpenalised
    CoxPHSurvivalAnalysis; padding rows stay out of every risk set."""
    import torch
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    from fusion.losses import CoxLoss

    rng = np.random.default_rng(4)
    x = rng.standard_normal((150, 3))
    time = np.ceil(rng.exponential(10 * np.exp(-x @ [0.8, -0.5, 0.0])))  # whole days: many ties
    y = surv(rng.random(150) < 0.7, time)
    loss = CoxLoss(y)
    idx = torch.arange(150)[None]
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        value = loss.per_row((torch.from_numpy(x) @ w)[None], idx).sum()
        value.backward()
        return value
    opt.step(closure)
    ref = CoxPHSurvivalAnalysis(alpha=0, ties="breslow").fit(x, y)
    np.testing.assert_allclose(w.detach().numpy(), ref.coef_, atol=1e-4)
    # Rows padded onto a batch (valid False) change no valid row's loss.
    risk = torch.from_numpy(x @ ref.coef_)[None]
    padded = torch.cat([idx, torch.zeros((1, 20), dtype=torch.long)], 1)
    valid = torch.cat([torch.ones((1, 150), dtype=torch.bool), torch.zeros((1, 20), dtype=torch.bool)], 1)
    got = loss.per_row(torch.cat([risk, torch.full((1, 20), 50.0, dtype=torch.float64)], 1), padded, valid)
    np.testing.assert_allclose(got[0, :150].numpy(), loss.per_row(risk, idx)[0].numpy(), atol=1e-12)
    assert (got[0, 150:] == 0).all()


def test_torch_heads_train_survival_and_a_fusion_head_starts_as_the_cox_stack(tmp_path):
    """SIMULATED hazard with signal in both modalities: the torch heads train on the Cox loss, XGBoost on
    survival:cox; a fusion head's warm start is stack_cox exactly, and trained it loses nothing to it and uses the
    genes."""
    from fusion.api import prepare_inputs
    from fusion.cox import fit_cox_stack
    from fusion.heads import get_head, list_heads
    from fusion.simulate import simulate_cohort
    from fusion.train import TrainConfig, _padded, _predict, bag_means, prepare

    assert {"gene_mlp", "image_abmil", "late", "cross_attn"} <= set(list_heads("survival"))
    path = tmp_path / "s.zarr"
    simulate_cohort(path, patients=300, patches=16, dim=16, genes=60, seed=2, survival=True).close()
    cfg = TrainConfig(epochs=40, patience=8, token_dim=8)
    opts = CVOptions(survival="survival", bootstrap=200, train=cfg)
    with featstore.open(path) as store:
        cohort, view = prepare_inputs(store, ["late"], opts)
    assign = np.arange(len(cohort.patient_ids))[None] % 5
    data = prepare(cohort, view, get_head("late"), assign, cfg)
    model = get_head("late").build(5, data.genes.shape[-1], data.tokens.shape[-1])
    genes, bags = [g.numpy() for g in data.genes], [bag_means(data, i) for i in range(5)]
    model.warm_start(genes, bags, cohort.y, data.train, cfg.seed)
    test, valid = _padded(data.test)
    got = _predict(model, data, test).double().numpy()
    for i in range(5):
        want = fit_cox_stack([genes[i], bags[i]], cohort.y, data.train[i], cfg.seed).decision_function(
            [genes[i][data.test[i]], bags[i][data.test[i]]])
        np.testing.assert_allclose(got[i, valid[i].numpy()], want, atol=1e-4)
    rows, runs = bench(path, ["coxnet", "stack_cox", "xgboost", "gene_mlp", "late", "cross_attn"], opts,
                       out=tmp_path / "b")
    c = {r["head"]: r["c_index"] for r in rows}
    assert min(c["gene_mlp"], c["xgboost"]) > 0.6 and c["stack_cox"] > c["coxnet"], c
    # Predicted survival curves (each fold model's Breslow baseline) beat the Kaplan-Meier curve of everyone.
    # The genes stack_cox weighs most carry the hazard (the simulation shifts GENE00000-GENE00009).
    assert {g["gene"] for g in runs["stack_cox"].metrics["top_genes"]["genes"][:3]} <= {f"GENE{j:05d}" for j in range(10)}
    ibs = runs["stack_cox"].metrics["integrated_brier"]
    assert ibs["ibs"] < ibs["ibs_kaplan_meier"] - 0.005, ibs
    for h in ("late", "cross_attn"):
        assert c[h] > c["stack_cox"] - 0.02, c
        assert runs[h].metrics["modality_check"]["genes"]["informative"], runs[h].metrics["modality_check"]
        assert len(runs[h].metrics["trained_kept"]["per_model"]) == 5
    assert 'data-metric="stack_cox.integrated_brier.ibs"' in (tmp_path / "b" / "report.html").read_text()


def test_noise_in_a_test_fold_changes_nothing_fitted_for_it_on_survival(tmp_path):
    """The behavioural leakage check on the Cox loss: the Cox-stack warm start, the weights, the risk-group cut."""
    from fusion.cohort import load_cohort
    from fusion.simulate import simulate_cohort
    from fusion.views import build_view

    from .test_fusion import assert_fold0_blind_to_its_test_patients

    path = tmp_path / "s.zarr"
    simulate_cohort(path, patients=150, patches=16, dim=16, genes=40, seed=5, survival=True).close()
    with featstore.open(path) as s:
        cohort = load_cohort(s, survival="survival")
        view = build_view(s, cohort.feature_set, cohort.slides, k=8, cache=False)
    assert_fold0_blind_to_its_test_patients(cohort, view, ("cross_attn",))


def test_the_baseline_hazard_gives_scikit_survivals_survival_curves():
    """Breslow's baseline hazard of a Cox model's risks (tied times) gives the survival curves
    CoxPHSurvivalAnalysis.predict_survival_function gives."""
    from sksurv.linear_model import CoxPHSurvivalAnalysis

    from fusion.survival import breslow, survival_at

    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    y = surv(rng.random(200) < 0.7, np.ceil(rng.exponential(10 * np.exp(-x @ [1.0, -0.5]))))
    model = CoxPHSurvivalAnalysis(alpha=0, ties="breslow").fit(x, y)
    grid = np.array([0.5, 2.0, 5.0, 10.0, 25.0])
    ours = survival_at(x @ model.coef_, breslow(x @ model.coef_, y), grid)
    ref = np.array([[f(t) if t >= f.x[0] else 1.0 for t in grid] for f in model.predict_survival_function(x)])
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("head", ["stack_cox", "xgboost", "late"])
def test_a_survival_model_is_saved_and_predicts_its_risks(tmp_path, head):
    """fusion fit and cv --save-models keep survival models (a Cox stack as plain arrays, XGBoost's JSON, a state
    dict) with their Breslow baseline; fusion predict gives the fit's own risks, a fold model its out-of-fold ones,
    and the CLI writes risk and risk group."""
    from typer.testing import CliRunner

    from cli import fusion_app
    from fusion.model import fit, load_model, predict
    from fusion.simulate import simulate_cohort
    from fusion.train import TrainConfig

    path = tmp_path / "s.zarr"
    simulate_cohort(path, patients=150, patches=16, dim=16, genes=40, seed=6, survival=True).close()
    opts = CVOptions(survival="survival", bootstrap=100, train=TrainConfig(epochs=10, patience=5, token_dim=8))
    res = fit(path, head, opts, tmp_path / "m")
    assert res["model"]["target"] == "survival" and res["model"]["calibrator"]["method"] == "none"
    ids, risk, models = predict(tmp_path / "m", path)
    assert ids == res["patient_ids"]
    np.testing.assert_allclose(risk, res["p_positive"], atol=1e-6)
    assert {"hazard_times", "hazard_cumulative"} <= set(models[0].pre)
    run = cv(path, head, dataclasses.replace(opts, save_models=True), out=tmp_path / "cv")
    test = [p for p, f in zip(run.cohort.patient_ids, run.result.assign[0]) if f == 0]
    np.testing.assert_allclose(predict(tmp_path / "cv" / "models" / "repeat0_fold0", path, test)[1],
                               run.result.oof[0, run.result.assign[0] == 0], atol=1e-5)
    assert load_model(tmp_path / "cv" / "models" / "repeat0_fold0").meta["threshold"] == pytest.approx(
        run.result.thresholds[0, 0])
    r = CliRunner().invoke(fusion_app, ["predict", str(tmp_path / "cv" / "models"), str(path), "--out",
                                        str(tmp_path / "risk.csv")])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader((tmp_path / "risk.csv").open()))
    assert list(rows[0]) == ["patient_id", "risk", "risk_group"] and {r["risk_group"] for r in rows} == {"high", "low"}
