"""The trainer: real TCGA-BRCA gene baselines, leakage guards, determinism, modality use, simulated signal."""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest
import torch

import featstore
from featstore.tables import import_labels, read_expression
from fusion.api import CVOptions, bench, cv
from fusion.cohort import load_cohort
from fusion.fallback import FALLBACKS, back_to_warm_start_unless_significant
from fusion.heads import HEADS
from fusion.logistic import _logit, fit_logistic, fit_stack, linear_weights
from fusion.metrics import all_metrics, average_precision, roc_auc
from fusion.simulate import simulate_cohort
from fusion.splits import make_splits, read_splits, write_splits
from fusion.train import TrainConfig, cross_validate, permute_within_test_folds
from fusion.views import build_view

from .conftest import MIXOMICS

# The two-class heads: what a bench of labels runs (the survival heads have their own tests).
BINARY = {name: spec for name, spec in HEADS.items() if "binary" in spec.targets}

FAST = TrainConfig(epochs=40, patience=8)
# Comparisons of heads: each fold's calibration map (fitted on ~40 inner-validation patients) moves the pooled
# out-of-fold ROC-AUC of every head by about 0.01 either way (benchmarks/calibration.md), noise that has
# nothing to do with whether a fusion head uses its inputs; calibration is tested on its own.
MODELS_ONLY = TrainConfig(calibrate="none")


@pytest.fixture(scope="module")
def brca(tmp_path_factory):
    """Real TCGA-BRCA expression (mixOmics, 220 samples x 200 genes) with its real PAM50 labels."""
    path = tmp_path_factory.mktemp("brca") / "brca.zarr"
    with featstore.open(path, "a") as s:
        train, _ = read_expression(MIXOMICS / "data_train_mrna.csv")
        test, _ = read_expression(MIXOMICS / "data_test_mrna.csv")
        train.values = np.concatenate([train.values, test.values])
        for k in ("sample_ids", "patient_ids", "sample_types"):
            setattr(train, k, getattr(train, k) + getattr(test, k))
        s.write_expression("expression", train)
        import_labels(s, MIXOMICS / "data_train_subtype.csv", "train_labels", id_column="participant_code",
                      label_column="subtype")
    return path


@pytest.fixture(scope="module")
def sim_split(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "sim.zarr"
    simulate_cohort(path, patients=300, patches=48, dim=32, genes=60, split=0.5, gene_signal=2.0, image_signal=2.0,
                    seed=3).close()
    return path


def test_gene_baselines_on_real_tcga_brca_reach_095(brca, tmp_path):
    rows, runs = bench(brca, ["logreg", "xgboost", "gene_mlp"], CVOptions(train=FAST), out=tmp_path / "b")
    for r in rows:
        assert r["roc_auc"] >= 0.95, r
    m = json.loads((tmp_path / "b" / "logreg" / "metrics.json").read_text())
    assert m["positive_class"] == "Basal_Her2" and m["n_patients"] == 150
    assert {"f1", "pr_auc", "roc_auc", "accuracy", "balanced_accuracy", "brier"} <= set(m["folds"][0])
    # mixOmics' 200 genes hold none of the PAM50 genes, and the report says which case it is.
    assert m["genes"] == "no PAM50 genes in the table"
    assert (tmp_path / "b" / "leaderboard.md").exists() and (tmp_path / "b" / "logreg" / "curves.png").exists()
    excl = cv(brca, "logreg", CVOptions(exclude_genes="pam50", train=FAST))
    assert excl.metrics["genes"].startswith("excluded")


def test_xgboost_predicts_the_same_on_any_number_of_threads(brca):
    """XGBoost runs on torch's threads (all cores unless --threads): that may not move a prediction, so a run
    gives the same answer on a laptop and on a 64-core node."""
    one, two = (cv(brca, "xgboost", CVOptions(train=dataclasses.replace(FAST, threads=t))) for t in (1, 2))
    np.testing.assert_array_equal(one.result.oof, two.result.oof)


def test_permuted_labels_are_at_chance(brca, tmp_path):
    with featstore.open(brca, "a") as s:
        lab = s.read_labels("train_labels")
        lab.labels = list(np.random.default_rng(0).permutation(lab.labels))
        s.write_labels("shuffled", lab)
    run = cv(brca, "logreg", CVOptions(labels="shuffled", repeats=3, train=FAST))
    assert abs(run.metrics["summary"]["roc_auc"]["pooled"] - 0.5) < 0.12


def test_fold_local_fitting_never_sees_the_test_fold(sim_split):
    with featstore.open(sim_split, "a") as s:
        cohort = load_cohort(s, label_map=None)
        view = build_view(s, cohort.feature_set, cohort.slides, k=8)
    assign = make_splits(cohort.patient_ids, cohort.y, 5, 2, seed=1)
    for head in ("concat", "logreg"):
        res = cross_validate(cohort, head, assign, view, TrainConfig(epochs=3, token_dim=16, top_genes=20))
        assert len(res.fitted) == 10
        for rec in res.fitted:
            test = set(rec["test"].tolist())
            assert test == set(np.flatnonzero(assign[rec["repeat"]] == rec["fold"]).tolist())
            assert not test & set(rec["genes_fitted_on"].tolist())
            if "tokens_fitted_on" in rec:
                assert not test & set(rec["tokens_fitted_on"].tolist())
        assert not np.isnan(res.oof).any()


def test_noise_in_the_test_fold_changes_nothing_fitted_for_that_fold(sim_split):
    """Behaviour, not bookkeeping: replace fold 0's test patients' genes and image tokens with noise; every
    object fitted for fold 0 (gene filter, imputation means, scaler, token PCA, warm start, trained weights,
    calibration, threshold)
    must be bitwise unchanged."""
    with featstore.open(sim_split) as s:
        cohort = load_cohort(s, label_map=None)
        view = build_view(s, cohort.feature_set, cohort.slides, k=8, cache=False)
    assert_fold0_blind_to_its_test_patients(cohort, view, ("concat", "cross_attn"))


def assert_fold0_blind_to_its_test_patients(cohort, view, heads: tuple[str, ...]) -> None:
    """The leakage check of ``test_noise_in_the_test_fold_changes_nothing_fitted_for_that_fold``, for any target."""
    import copy
    import dataclasses

    from fusion.survival import strata

    assign = make_splits(cohort.patient_ids, strata(cohort.y), 5, 1, seed=1)
    test0 = np.flatnonzero(assign[0] == 0)
    rng = np.random.default_rng(0)
    noisy = copy.deepcopy(cohort)
    noisy.genes[test0] = rng.normal(5, 3, noisy.genes[test0].shape).astype(np.float32)
    noisy.genes[test0[:3], :5] = np.nan  # missing values in the test fold must not move the imputation either
    rows = [view.patient_ids.index(cohort.patient_ids[i]) for i in test0]
    tokens = view.tokens.copy()
    tokens[rows] = rng.normal(0, 10, tokens[rows].shape)
    noisy_view = dataclasses.replace(view, tokens=tokens)
    cfg = TrainConfig(epochs=4, patience=4, token_dim=8, top_genes=30)
    for head in heads:
        fitted = []
        for c, v in ((cohort, view), (noisy, noisy_view)):
            res = cross_validate(c, head, assign, v, cfg, permutations=0)
            fitted.append((res.fitted[0], {k: t[0].clone() for k, t in res.models.module.state_dict().items()}, res.oof))
        (rec_a, w_a, oof_a), (rec_b, w_b, oof_b) = fitted
        assert rec_a["fold"] == 0
        for obj in ("gene_transform", "token_pca", "calibrator"):
            for field in dataclasses.fields(rec_a[obj]):
                np.testing.assert_array_equal(getattr(rec_a[obj], field.name), getattr(rec_b[obj], field.name))
        np.testing.assert_array_equal(rec_a["threshold"], rec_b["threshold"])
        for k in w_a:
            assert torch.equal(w_a[k], w_b[k]), (head, k)
        # The noise did reach the data: the other folds train on those patients.
        assert not np.array_equal(oof_a[0, assign[0] == 1], oof_b[0, assign[0] == 1])


def test_same_seed_same_metrics_and_splits_round_trip(sim_split, tmp_path):
    a = cv(sim_split, "cross_attn", CVOptions(label_map=None, train=FAST), out=tmp_path / "a")
    b = cv(sim_split, "cross_attn", CVOptions(label_map=None, train=FAST, splits_file=str(tmp_path / "a" / "splits.csv")))
    assert a.metrics["summary"] == b.metrics["summary"]
    np.testing.assert_array_equal(a.result.oof, b.result.oof)
    assert b.metrics["view"]["cached"] is True


def test_fusion_heads_use_both_inputs_and_beat_both_unimodal_heads(sim_split, tmp_path):
    """Signal split across the modalities: every fusion head must beat the best gene and image heads."""
    rows, runs = bench(sim_split, "all", CVOptions(label_map=None, train=MODELS_ONLY), out=tmp_path)
    auc = {r["head"]: r["roc_auc"] for r in rows}
    best_unimodal = max(auc[h] for h, s in BINARY.items() if not s.multimodal)
    for head, spec in BINARY.items():
        if not spec.multimodal:
            continue
        check = runs[head].metrics["modality_check"]
        for modality in ("genes", "image"):
            # Shuffling either input costs the head accuracy, and the bootstrap CI of that cost excludes 0.
            assert check[modality]["informative"] and check[modality]["ci95"][0] > 0, (head, check)
            assert check[modality]["roc_auc_drop"] == check[modality]["drop"] > 0.05, (head, check)
        assert auc[head] > best_unimodal + 0.03, (head, auc)
    board = (tmp_path / "leaderboard.md").read_text()
    assert "SIMULATED" in board and "best unimodal" in board and "modality check" in board


@pytest.mark.parametrize("null", ["image", "genes"])
def test_fusion_heads_fall_back_on_the_informative_modality(null, tmp_path):
    """One modality is pure noise (permuted across patients): every fusion head stays within a small margin
    of the best head on the other modality, and its modality check calls the noise not informative."""
    path = tmp_path / f"null_{null}.zarr"
    simulate_cohort(path, patients=300, patches=48, dim=32, genes=60, split=0.5, gene_signal=2.0, image_signal=2.0,
                    null=null, seed=4).close()
    rows, runs = bench(path, "all", CVOptions(label_map=None, bootstrap=500, train=MODELS_ONLY), out=tmp_path / "b")
    auc = {r["head"]: r["roc_auc"] for r in rows}
    kept = "genes" if null == "image" else "image"
    best_kept = max(auc[h] for h, s in BINARY.items() if s.modalities == {kept})
    assert best_kept > 0.75, auc
    for head, spec in BINARY.items():
        if spec.multimodal:
            assert auc[head] > best_kept - 0.03, (head, auc)
            check = runs[head].metrics["modality_check"]
            assert not check[null]["informative"], (head, check)
            assert check[null]["verdict"] == f"{null} adds nothing measurable"
            assert check[kept]["informative"], (head, check)
            if spec.kind == "torch":  # the warm-start rule's verdict reaches metrics.json, one per fold model
                assert len(runs[head].metrics["trained_kept"]["per_model"]) == 5, head
    assert f"{null} adds nothing measurable" in (tmp_path / "b" / "leaderboard.md").read_text()
    # A fold model that went back to its warm start ends as the stack baseline refitted on the fold's whole
    # training part (not on its inner-training rows only): the same predictions as `stack` on that test fold.
    stack, back = runs["stack"].result, 0
    for head, spec in BINARY.items():
        if spec.multimodal and spec.kind == "torch":
            r = runs[head].result
            for fold, kept in enumerate(runs[head].metrics["trained_kept"]["per_model"]):
                if not kept:
                    test = r.assign[0] == fold
                    np.testing.assert_allclose(r.uncalibrated[0, test], stack.uncalibrated[0, test], rtol=1e-4,
                                               atol=1e-5, err_msg=f"{head}, fold {fold}")
                    back += 1
    assert back >= 5, back  # the check ran


def test_a_fusion_head_keeps_its_training_only_where_it_clearly_ranks_better_than_its_warm_start():
    """Three models trained together, scored on 200 validation patients: the first ranks them better than its
    warm start, the second only sharpens the warm start's logits (same ranking, lower raw loss: what training
    did to the shrunk gene model on null image bags), the third moves them about at random (an attention
    branch fitted to noise). Only the first keeps its weights; the others are put back exactly to their warm
    start, the fitted linear models."""
    model = HEADS["late"].build(3, 5, 4)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    y = np.repeat([0.0, 1.0], 100)
    signal = 2.0 * y + rng.standard_normal(200)
    weak = 0.2 * (signal - 1.0 + 1.5 * rng.standard_normal(200))  # under-confident, and a worse ranking
    start_logits = torch.from_numpy(np.stack([weak, weak, weak])).float()
    trained_logits = torch.from_numpy(np.stack([signal - 1.0, 3 * weak, weak + 0.3 * rng.standard_normal(200)])).float()
    yt, weight = torch.from_numpy(y).float().expand(3, -1), torch.ones(3, 200)
    raw = torch.nn.functional.binary_cross_entropy_with_logits
    assert (raw(start_logits[1], yt[1]) - raw(trained_logits[1], yt[1])) > 0.05  # the raw loss says "better"
    kept = back_to_warm_start_unless_significant(model, start, start_logits, trained_logits, yt, weight)
    assert kept == [True, False, False]
    for k, v in model.state_dict().items():
        if v.dim() and v.shape[0] == 3:
            assert torch.equal(v[0], trained[k][0]) and torch.equal(v[1:], start[k][1:]), k
    # Padding (weight 0) is left out: the same verdicts with 20 padded rows of nonsense appended.
    pad = lambda t, fill: torch.cat([t, torch.full((3, 20), fill)], dim=1)  # noqa: E731
    model.load_state_dict(trained)
    assert back_to_warm_start_unless_significant(model, start, pad(start_logits, 50.0), pad(trained_logits, -50.0),
                                                  pad(yt, 1.0), pad(weight, 0.0)) == [True, False, False]
    # A warm start that is a constant (neither linear model fitted) ranks nothing: training is kept.
    model.load_state_dict(trained)
    model.warm_constant = [False, True, True]
    assert back_to_warm_start_unless_significant(model, start, start_logits, trained_logits, yt, weight) == [True] * 3
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())


def test_warm_start_says_which_models_start_from_a_constant():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 60)
    noise, means = rng.standard_normal((120, 5)), rng.standard_normal((120, 4))
    signal = noise.copy()
    signal[:, 0] += 2.0 * y
    model = HEADS["late"].build(2, 5, 4)
    model.warm_start([noise, signal], [means, means], y, [np.arange(120)] * 2, seed=0)
    assert model.warm_constant == [True, False]
    assert torch.count_nonzero(model.genes.logit.weight[0]) == 0 and torch.count_nonzero(model.genes.logit.weight[1]) > 0


def test_modality_dropout_trains_each_path_alone_on_40_percent_of_the_patients():
    """In training, 40% of the patients of a step lose their genes (the output is the image logit alone), 40%
    their image (the gene logit alone) and 20% keep both (both logits plus the fusion term); in evaluation
    nobody loses anything. At 20%/20% the attention branch learned mostly the gene logit's residual."""
    from fusion.heads import weighted_mean

    torch.manual_seed(0)
    model = HEADS["concat"].build(1, 5, 4)
    with torch.no_grad():
        model.gate.fill_(1.0)  # the fusion term counts, so "both" differs from either path alone
    b = 20_000
    genes, tokens = torch.randn(1, b, 5), torch.randn(1, b, 3, 4)
    mask, weights = torch.ones(1, b, 3, dtype=torch.bool), torch.ones(1, b, 3)
    model.eval()
    with torch.no_grad():
        gene_logit = model.genes(genes)[0]
        image_logit = (model.image_linear(weighted_mean(tokens, weights))
                       + model.image_logit(model.image(tokens, mask, weights))).squeeze(-1)
        both = model(genes, tokens, mask, weights)
        model.train()
        out = model(genes, tokens, mask, weights)
    assert not torch.allclose(both, gene_logit + image_logit)  # the fusion term is on in evaluation
    image_alone = torch.isclose(out, image_logit, atol=1e-6).float().mean().item()
    genes_alone = torch.isclose(out, gene_logit, atol=1e-6).float().mean().item()
    assert abs(image_alone - 0.4) < 0.02 and abs(genes_alone - 0.4) < 0.02, (image_alone, genes_alone)


def test_a_fusion_head_starts_from_the_stacked_unimodal_models():
    """The warm start is the stack baseline fitted on the inner-training rows: each input's logistic regression
    weighted by the meta-learner, not summed with unit weights (which mixes them in whatever ratio their
    penalties left)."""
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 80)
    genes = rng.standard_normal((160, 6))
    genes[:, 0] += 1.2 * y
    tokens = rng.standard_normal((160, 4, 3)).astype(np.float32)
    tokens[:, :, 0] += 0.6 * y[:, None]
    weights = np.full((160, 4), 0.25, np.float32)
    means = tokens.mean(1)
    train = np.arange(0, 160, 2)
    model = HEADS["late"].build(1, 6, 3)
    model.warm_start([genes], [means], y, [train], seed=0)
    model.eval()
    with torch.no_grad():
        start = model(torch.from_numpy(genes).float()[None], torch.from_numpy(tokens)[None],
                      torch.ones(1, 160, 4, dtype=torch.bool), torch.from_numpy(weights)[None])[0].numpy()
    stack = fit_stack([genes, means], y, train, seed=0)
    assert all(b is not None for b in stack.bases)
    np.testing.assert_allclose(start, stack.decision_function([genes, means]), rtol=1e-4, atol=1e-4)
    unit = sum(_logit(b, x) for b, x in zip(stack.bases, (genes, means)))
    assert np.abs(start - unit).max() > 0.1  # the check tells the two apart


def test_a_screened_gene_model_is_carried_exactly_into_the_fusion_heads_gene_logit():
    """Where a few of many genes carry the signal, fit_logistic chooses univariate screening + L2; a fusion head's
    linear gene logit is that model as one weight per gene, zero off the screened genes."""
    from sklearn.feature_selection import f_classif

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    genes = rng.standard_normal((200, 1000))
    genes[:, :8] += 0.8 * y[:, None]
    everyone = np.arange(200)
    base = fit_logistic(genes, y, everyone, seed=0)
    assert base.candidate[0] == "top", f"expected the screened candidate, got {base.candidate}"
    weights, intercept = linear_weights(base)
    k = base.candidate[1]
    screened = np.sort(np.argsort(f_classif(genes, y)[0], kind="mergesort")[-k:])  # SelectKBest's choice
    assert np.count_nonzero(weights) == k < 1000 and set(np.flatnonzero(weights)) == set(screened)
    np.testing.assert_allclose(genes @ weights + intercept, base.decision_function(genes), rtol=1e-9, atol=1e-9)
    model = HEADS["late"].build(1, 1000, 3)
    tokens = np.zeros((200, 2, 3), np.float32)  # an image without signal: the stack's image base is None
    model.warm_start([genes], [tokens.mean(1)], y, [everyone], seed=0)
    stack = fit_stack([genes, tokens.mean(1)], y, everyone, seed=0)
    assert stack.bases[0] is base and stack.bases[1] is None
    model.eval()
    with torch.no_grad():
        start = model(torch.from_numpy(genes).float()[None], torch.from_numpy(tokens)[None],
                      torch.ones(1, 200, 2, dtype=torch.bool), torch.full((1, 200, 2), 0.5))[0].numpy()
    np.testing.assert_allclose(start, stack.decision_function([genes, tokens.mean(1)]), rtol=1e-4, atol=1e-4)


def test_a_model_that_goes_back_is_refitted_and_calibrated_on_held_out_predictions():
    """Every fold model's linear logits are refitted on its whole training part once training is done, so one that
    went back to its warm start is the stack baseline; but the validation logits its calibration and threshold
    are fitted on are the warm start's, made while those rows were held out, not the refitted model's."""
    from fusion.train import _padded, _predict, train_torch

    data, y = _gene_signal_noise_image_folds()
    genes, train, val = data.genes.numpy(), data.train, data.val
    model, _, val_logits = train_torch(HEADS["late"], data, y, TrainConfig(epochs=2, patience=1))
    back = [i for i, kept in enumerate(model.trained_kept) if not kept]
    assert back, model.trained_kept
    val_idx, _ = _padded(val)
    refitted = _predict(model, data, val_idx)
    for i in back:
        means = data.tokens[i].mean(1).numpy()
        held_out = fit_stack([genes[i], means], y, train[i], seed=0).decision_function([genes[i], means])[val[i]]
        np.testing.assert_allclose(val_logits[i].numpy(), held_out, rtol=1e-4, atol=1e-4)
        whole = fit_stack([genes[i], means], y, np.concatenate([train[i], val[i]]), seed=0)
        np.testing.assert_allclose(refitted[i].numpy(), whole.decision_function([genes[i], means])[val[i]],
                                   rtol=1e-4, atol=1e-4)
        assert np.abs(refitted[i].numpy() - held_out).max() > 1e-3  # the two are told apart
    # Every fold's linear logits are refitted on the whole training part, the folds that kept training too.
    assert len(back) < len(train), model.trained_kept
    with torch.no_grad():
        linear = (model.genes.logit(data.genes) + model.image_linear(data.tokens.mean(2)))[..., 0].numpy()
    for i in range(len(train)):
        means = data.tokens[i].mean(1).numpy()
        whole = fit_stack([genes[i], means], y, np.concatenate([train[i], val[i]]), seed=0)
        np.testing.assert_allclose(linear[i], whole.decision_function([genes[i], means]), rtol=1e-4, atol=1e-4)


def _gene_signal_noise_image_folds(models: int = 3):
    """Fold models on 160 patients: one informative gene among 20, image bags of pure noise."""
    from fusion.train import FoldData

    rng = np.random.default_rng(1)
    p, m = 160, models
    y = np.repeat([0, 1], p // 2)
    genes = rng.standard_normal((m, p, 20)).astype(np.float32)
    genes[:, :, 0] += 1.5 * y
    rows = [rng.permutation(p) for _ in range(m)]
    data = FoldData(torch.from_numpy(genes), torch.from_numpy(rng.standard_normal((m, p, 4, 8)).astype(np.float32)),
                    torch.ones(p, 4, dtype=torch.bool), torch.full((p, 4), 0.25), torch.ones(p, dtype=torch.bool),
                    torch.ones(p, dtype=torch.bool), [np.sort(r[:100]) for r in rows],
                    [np.sort(r[100:130]) for r in rows], [np.sort(r[130:]) for r in rows])
    return data, y


def test_the_fallback_rules_differ_only_in_what_they_send_back():
    """Training is the same under every rule (same seed); they differ only in what a fold keeps afterwards.
    never: what early stopping picked. significant: that, or the warm start refitted. fusion (the default): that,
    or the unimodal branches as they were when the fusion stage began (gate back at exactly 0)."""
    from fusion.train import _padded, _predict, train_torch

    data, y = _gene_signal_noise_image_folds(models=6)
    test_idx, _ = _padded(data.test)
    runs = {rule: train_torch(HEADS["concat"], data, y, TrainConfig(epochs=12, patience=4, fallback=rule))[0]
            for rule in FALLBACKS}
    logits = {rule: _predict(model, data, test_idx) for rule, model in runs.items()}
    same = {rule: [torch.allclose(logits["never"][i], logits[rule][i]) for i in range(6)] for rule in FALLBACKS}
    moved = runs["never"].trained_kept  # a fold early stopping never moved is its warm start (refitted) under all
    assert same["significant"] == [k or not mv for k, mv in zip(runs["significant"].trained_kept, moved)]
    gate = runs["fusion"].gate.detach().flatten()
    assert runs["fusion"].trained_kept == runs["never"].trained_kept
    reverted = [i for i in range(6) if runs["never"].gate[i] != 0 and not runs["fusion"].fusion_kept[i]]
    for i in range(6):
        assert runs["fusion"].fusion_kept[i] == bool(gate[i] != 0), (i, gate)
        assert same["fusion"][i] == (i not in reverted), (i, reverted)
    assert reverted and not all(same["significant"]), "the rules were not told apart"
    with pytest.raises(ValueError, match="fallback must be one of fusion, significant, never"):
        TrainConfig(fallback="sometimes")


def test_a_constant_warm_start_is_no_fallback_for_early_stopping():
    """Genes and image bags of pure noise: neither linear model is fitted, so each model starts from a constant.
    A constant ranks nothing, so early stopping keeps the best trained epoch even where it scores worse than the
    constant: the models must not end up predicting one value for every patient."""
    from fusion.train import FoldData, train_torch

    rng = np.random.default_rng(0)
    p, m = 120, 8
    y = np.repeat([0, 1], p // 2)
    rows = [rng.permutation(p) for _ in range(m)]
    data = FoldData(torch.from_numpy(rng.standard_normal((m, p, 30)).astype(np.float32)),
                    torch.from_numpy(rng.standard_normal((m, p, 4, 8)).astype(np.float32)),
                    torch.ones(p, 4, dtype=torch.bool), torch.ones(p, 4), torch.ones(p, dtype=torch.bool),
                    torch.ones(p, dtype=torch.bool), [np.sort(r[:80]) for r in rows], [np.sort(r[80:100]) for r in rows],
                    [np.sort(r[100:]) for r in rows])
    model, epochs, _ = train_torch(HEADS["late"], data, y, TrainConfig(epochs=4, patience=4))
    assert model.warm_constant == [True] * m and model.trained_kept == [True] * m
    model.eval()
    with torch.no_grad():
        logits = model(data.genes, data.tokens, data.mask.expand(m, -1, -1), data.weights.expand(m, -1, -1))
    assert (logits.max(1).values - logits.min(1).values > 1e-4).all(), "a fold model predicts a constant"


def test_kept_token_pca_is_served_only_for_the_same_inputs():
    """The heads of a bench share a fold's PCA; a changed token, mask or training row gets its own fit."""
    from fusion.preprocess import project_tokens

    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((20, 4, 16)).astype(np.float32)
    mask = np.ones((20, 4), bool)
    rows = np.arange(15)
    first = project_tokens(tokens, mask, rows, 4)
    assert project_tokens(tokens, mask, rows, 4) is first  # shared, not refitted
    changed = tokens.copy()
    changed[0, 0, 0] += 5.0
    pca, projected = project_tokens(changed, mask, rows, 4)
    assert not np.array_equal(pca.mean, first[0].mean)
    assert not np.array_equal(project_tokens(tokens, mask, rows[:-1], 4)[0].fitted_on, first[0].fitted_on)
    np.testing.assert_array_equal(project_tokens(tokens, mask, rows, 4)[1], first[1])


def test_attention_mil_finds_a_minority_of_patches_that_mean_pooling_misses(tmp_path):
    path = tmp_path / "minority.zarr"
    simulate_cohort(path, patients=300, patches=64, dim=64, genes=10, split=1.0, image_pattern="minority",
                    informative_fraction=0.1, seed=0).close()
    rows, _ = bench(path, ["image_mean", "image_abmil"], CVOptions(label_map=None, train=MODELS_ONLY))
    auc = {r["head"]: r["roc_auc"] for r in rows}
    assert auc["image_abmil"] > 0.7
    assert auc["image_abmil"] > auc["image_mean"] + 0.15, auc


def test_missing_modality_drop_or_mask(sim_split, tmp_path):
    path = tmp_path / "missing.zarr"
    import shutil

    shutil.copytree(sim_split, path)
    with featstore.open(path, "a") as s:
        slides = s.slides()
        for sid in slides[:30]:
            s.delete_slide("simulated", sid)
    dropped = cv(path, "concat", CVOptions(label_map=None, train=FAST))
    assert dropped.metrics["n_patients"] == 270 and dropped.metrics["cohort"]["dropped_missing_modality"] == 30
    masked = cv(path, "concat", CVOptions(label_map=None, missing="mask", train=FAST))
    assert masked.metrics["n_patients"] == 300 and masked.metrics["cohort"]["missing_image_kept"] == 30
    assert not np.isnan(masked.result.oof).any()
    assert masked.metrics["summary"]["roc_auc"]["pooled"] > 0.7


def test_image_heads_are_at_chance_with_bags_shuffled_across_patients(tmp_path):
    path = tmp_path / "img.zarr"
    simulate_cohort(path, patients=240, patches=48, dim=32, genes=10, split=1.0, image_signal=2.0, seed=5).close()
    real = cv(path, "image_mean", CVOptions(label_map=None, train=FAST))
    assert real.metrics["summary"]["roc_auc"]["pooled"] > 0.75
    with featstore.open(path, "a") as s:
        lab = s.read_labels()
        lab.labels = list(np.random.default_rng(1).permutation(lab.labels))
        s.write_labels("labels", lab, overwrite=True)  # bags now belong to the wrong patients' labels
    for head in ("image_mean", "image_abmil"):
        shuffled = cv(path, head, CVOptions(label_map=None, repeats=2, train=FAST))
        assert abs(shuffled.metrics["summary"]["roc_auc"]["pooled"] - 0.5) < 0.12, head


def test_site_preserved_splits_keep_sites_apart():
    rng = np.random.default_rng(0)
    sites = [f"{a}{b}" for a in "ABCDEFGH" for b in "12"]
    pids = [f"TCGA-{sites[i % len(sites)]}-{i:04d}" for i in range(300)]
    y = rng.integers(0, 2, 300)
    assign = make_splits(pids, y, folds=5, repeats=2, by="site")
    for r in range(2):
        by_site = {}
        for p, f in zip(pids, assign[r]):
            by_site.setdefault(p.split("-")[1], set()).add(int(f))
        assert all(len(v) == 1 for v in by_site.values())


def test_splits_file_round_trip(tmp_path):
    pids = [f"P{i}" for i in range(50)]
    y = np.arange(50) % 2
    assign = make_splits(pids, y, 5, 3, seed=2)
    write_splits(tmp_path / "s.csv", pids, assign)
    np.testing.assert_array_equal(read_splits(tmp_path / "s.csv", pids), assign)
    with pytest.raises(ValueError, match="no fold"):
        read_splits(tmp_path / "s.csv", pids + ["P_new"])


def test_vectorised_metrics_match_scikit_learn():
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        brier_score_loss,
        f1_score,
        roc_auc_score,
    )

    rng = np.random.default_rng(0)
    for _ in range(100):
        n = int(rng.integers(6, 80))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        p = np.round(rng.random(n), 1)
        m = all_metrics(y, p)
        assert m["roc_auc"][0] == pytest.approx(roc_auc_score(y, p))
        assert m["pr_auc"][0] == pytest.approx(average_precision_score(y, p))
        assert m["f1"][0] == pytest.approx(f1_score(y, p >= 0.5))
        assert m["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y, p >= 0.5))
        assert m["brier"][0] == pytest.approx(brier_score_loss(y, p))
    batch_y, batch_p = rng.integers(0, 2, (4, 30)), rng.random((4, 30))
    np.testing.assert_allclose(roc_auc(batch_y, batch_p), [roc_auc_score(a, b) for a, b in zip(batch_y, batch_p)])
    np.testing.assert_allclose(average_precision(batch_y, batch_p),
                               [average_precision_score(a, b) for a, b in zip(batch_y, batch_p)])


def test_modality_check_shuffles_each_model_within_its_own_test_fold():
    """With repeats the test folds of different models overlap; each model's permuted input must still
    come from its own test patients, never from its training part."""
    pids = [f"P{i}" for i in range(40)]
    assign = make_splits(pids, np.arange(40) % 2, folds=4, repeats=2, seed=0)
    tests = [np.flatnonzero(assign[r] == f) for r in range(2) for f in range(4)]
    perm = permute_within_test_folds(tests, 40, seed=7).numpy()
    assert perm.shape == (8, 40)
    for i, rows in enumerate(tests):
        others = np.setdiff1d(np.arange(40), rows)
        np.testing.assert_array_equal(perm[i, others], others)
        assert sorted(perm[i, rows]) == sorted(rows) and (perm[i, rows] != rows).any()


def test_a_cohort_too_small_for_its_folds_gets_our_message(tmp_path):
    path = tmp_path / "tiny.zarr"
    simulate_cohort(path, patients=12, patches=4, dim=8, genes=10, seed=0).close()
    with pytest.raises(ValueError, match=r"cohort too small for 2 folds with an inner validation split of 15%: .*"
                                         r"the smallest K that works is \d+ \(--folds \d+\)"):
        cv(path, "logreg", CVOptions(label_map=None, folds=2))


def test_point_estimates_sit_inside_their_cis_and_tables_round_to_three_decimals(sim_split, tmp_path):
    import re

    rows, runs = bench(sim_split, ["logreg", "image_mean"], CVOptions(label_map=None, repeats=2, train=FAST),
                       out=tmp_path)
    for r in rows:
        for m in ("roc_auc", "pr_auc", "f1", "balanced_accuracy"):
            assert r[f"{m}_lo"] <= r[m] <= r[f"{m}_hi"], (r["head"], m)
        assert r["roc_auc"] == runs[r["head"]].metrics["summary"]["roc_auc"]["pooled"]
    board = (tmp_path / "leaderboard.md").read_text()
    row = next(ln for ln in board.splitlines() if ln.startswith("| logreg"))
    numbers = re.findall(r"\d+\.\d+", row.split("|")[3] + row.split("|")[4])
    assert numbers and all(len(n.split(".")[1]) == 3 for n in numbers), row
    m = json.loads((tmp_path / "logreg" / "metrics.json").read_text())
    assert len(repr(m["summary"]["roc_auc"]["pooled"]).split(".")[1]) > 3  # full precision in JSON


def test_a_new_head_is_one_class_registered_as_the_docs_show(sim_split):
    """docs/heads.md's example, registered at run time, gets folds, calibration and metrics like any head; a
    hyper-parameter passed by position is refused (keyword-only contract)."""
    from torch import nn

    from fusion.heads import GENES, HEADS, register_head
    from fusion.layers import FoldLinear

    @register_head("gene_linear_test", {GENES}, "torch", "docs example")
    class GeneLinear(nn.Module):
        def __init__(self, models, gene_dim, token_dim, *, snn=False):
            super().__init__()
            self.out = FoldLinear(models, gene_dim, 1)

        def forward(self, genes, tokens, mask, weights):
            return self.out(genes).squeeze(-1)

    try:
        run = cv(sim_split, "gene_linear_test", CVOptions(label_map=None, train=FAST, bootstrap=100))
        assert run.metrics["summary"]["roc_auc"]["pooled"] > 0.7 and run.metrics["calibration"]["method"] == "platt"
        for name, spec in HEADS.items():
            if spec.kind == "torch" and name != "gene_linear_test":
                with pytest.raises(TypeError):
                    spec.build(1, 4, 4, 64)  # a hyper-parameter by position
    finally:
        HEADS.pop("gene_linear_test")


@pytest.mark.parametrize("kwargs, words", [
    (dict(epochs=0), "epochs must be at least 1, got 0"),
    (dict(batch_size=-4), "batch_size must be at least 1"),
    (dict(inner_val=0.0), "inner_val"),
    (dict(inner_val=1.0), "strictly between 0 and 1"),
    (dict(lr=0.0), "lr must be > 0"),
    (dict(calibrate="beta"), "calibrate must be one of none, platt, isotonic, got 'beta'"),
    (dict(operating_point="max"), "operating_point must be one of youden, f1, prior, 0.5, got 'max'"),
])
def test_training_options_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs, words", [
    (dict(bootstrap=0), "bootstrap must be at least 40 resamples"),
    (dict(repeats=0), "repeats must be at least 1, got 0"),
])
def test_cv_options_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        CVOptions(**kwargs)


@pytest.mark.parametrize("first", ["fusion.baselines", "fusion.contract", "fusion.heads"])
def test_the_registry_lists_torch_heads_then_baselines_whatever_is_imported_first(first):
    """`fusion heads` lists, and `fusion bench` runs, the registry in its order: torch heads, then the baselines."""
    import subprocess
    import sys

    code = f"import {first}\nfrom fusion.registry import HEADS\nprint(' '.join(h.kind for h in HEADS.values()))"
    kinds = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert set(kinds) == {"torch", "sklearn"} and kinds == sorted(kinds, key=lambda k: k != "torch"), kinds


def test_top_genes_are_the_planted_ones_for_every_head_with_a_linear_gene_model(tmp_path):
    """SIMULATED: 10 of 60 genes carry the signal (GENE00000-GENE00009). The genes logreg, stack and a fusion head
    weigh most are those; a head without a linear gene model reports none."""
    from fusion.simulate import simulate_cohort

    path = tmp_path / "g.zarr"
    simulate_cohort(path, patients=200, patches=8, dim=8, genes=60, gene_signal=1.5, image_signal=1.0, seed=7).close()
    planted = {f"GENE{j:05d}" for j in range(10)}
    rows, runs = bench(path, ["logreg", "stack", "late", "gene_mlp"], CVOptions(label_map=None, bootstrap=100,
                                                                                 train=FAST))
    for head in ("logreg", "stack", "late"):
        top = runs[head].metrics["top_genes"]["genes"]
        assert {g["gene"] for g in top[:5]} <= planted, (head, top[:5])
        assert all(g["weight"] > 0 for g in top[:5])  # the planted genes raise the positive class's odds
    assert "top_genes" not in runs["gene_mlp"].metrics
