"""Cross-validation of one head: every fold of every repeat trains together, leakage-free.

For M = repeats x folds models, the inputs are preprocessed per model (fitted on that model's training
rows only) and stacked into ``(M, P, ...)`` tensors; each optimiser step draws a minibatch per model
from its own inner-training rows and advances all M at once. Early stopping watches each model's inner
validation loss (a stratified part of its training rows, never its test fold) and restores each
model's best weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from fusion.calibration import CALIBRATIONS, OPERATING_POINTS, choose_threshold, fit_calibrator
from fusion.cohort import Cohort
from fusion.fallback import FALLBACKS, back_to_warm_start_unless_significant, copy_models, significantly_better
from fusion.heads import GENES, IMAGE, HeadSpec, weighted_mean
from fusion.losses import head_loss
from fusion.memo import digest
from fusion.preprocess import fit_gene_transform, project_tokens
from fusion.splits import model_rows
from fusion.survival import breslow, is_survival, strata
from fusion.views import View

if TYPE_CHECKING:
    from fusion.contract import Fitted, Head


def _option(default, help: str):  # noqa: A002 - the word Typer uses
    """A field that is also a command-line option (cli.py builds the options from these)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    epochs: int = _option(200, "Maximum epochs (early stopping on inner validation)")
    # 10, not 20: every head's ROC-AUC within noise, the torch heads faster (docs/heads.md, "Measurements
    # behind the code").
    patience: int = _option(10, "Epochs without improvement of the inner-validation loss before stopping")
    batch_size: int = _option(64, "Patients per step, per fold model")
    lr: float = _option(1e-3, "AdamW learning rate")
    weight_decay: float = _option(1e-4, "AdamW weight decay")
    inner_val: float = _option(0.15, "Share of each fold's training part held out for early stopping, "
                                     "calibration and the threshold")
    top_genes: int | None = _option(2000, "Most variable genes kept (fitted per fold)")
    token_dim: int | None = _option(128, "Fold-local PCA of the tokens to this dimension")
    snn: bool = _option(False, "SELU + AlphaDropout gene encoder (MCAT/PORPOISE SNN)")
    calibrate: str = _option("platt", "none | platt | isotonic: calibration fitted on each fold's inner "
                                      "validation rows")
    fallback: str = _option("fusion", "fusion | significant | never: what a fusion head's training must show on the "
                                      "inner-validation patients. fusion: its fusion term must rank them "
                                      "significantly better than its unimodal branches alone; significant: all "
                                      "training must, against the warm start (the stacked linear models); never: "
                                      "keep what early stopping picks")
    operating_point: str = _option("youden", "youden | f1 | prior | 0.5: how each fold's threshold (the confusion "
                                             "matrix, F1, accuracy) is chosen on its inner-validation rows")
    threads: int | None = _option(None, "CPU threads for torch/XGBoost")
    seed: int = 0  # set from the run's --seed

    def __post_init__(self) -> None:
        # Refused here, by option name, rather than deep in training with a shape error or an empty split.
        for name in ("epochs", "patience", "batch_size", "top_genes", "token_dim", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0 < self.inner_val < 1:
            raise ValueError(f"inner_val is the share of each training part held out, strictly between 0 and 1; "
                             f"got {self.inner_val}")
        if not self.lr > 0 or not self.weight_decay >= 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, got lr={self.lr}, weight_decay={self.weight_decay}")
        if self.calibrate not in CALIBRATIONS:
            raise ValueError(f"calibrate must be one of {', '.join(CALIBRATIONS)}, got {self.calibrate!r}")
        if self.operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating_point must be one of {', '.join(OPERATING_POINTS)}, got {self.operating_point!r}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")


@dataclass
class FoldData:
    """Inputs of the M models, each preprocessed by transforms fitted on its own training rows."""

    genes: torch.Tensor  # (M, P, G)
    tokens: torch.Tensor  # (M, P, K, D)
    mask: torch.Tensor  # (P, K)
    weights: torch.Tensor  # (P, K)
    gene_present: torch.Tensor  # (P,)
    image_present: torch.Tensor  # (P,)
    train: list[np.ndarray]  # inner-training rows per model
    val: list[np.ndarray]  # inner-validation rows per model
    test: list[np.ndarray]
    fitted: list[dict] = field(default_factory=list)  # what each model's transforms were fitted on
    n_classes: int = 2  # a multi-class target's C: the heads predict C class probabilities
    target: str = "binary"  # "multiclass" or "survival" (the heads predict a risk)


@dataclass
class CVResult:
    head: str
    patient_ids: list[str]
    y: np.ndarray
    assign: np.ndarray  # (R, P) fold of each patient
    oof: np.ndarray  # (R, P) out-of-fold P(positive), calibrated
    seconds: float
    n_params: int
    epochs: list[int]
    fitted: list[dict]
    permuted: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> (permutations, R, P) predictions
    thresholds: np.ndarray | None = None  # (R, folds) operating point chosen on each fold's inner validation
    uncalibrated: np.ndarray | None = None  # (R, P) before calibration
    models: Fitted | None = None  # the head's M fitted fold models (fusion.contract)


def prepare(cohort: Cohort, view: View | None, spec: HeadSpec, assign: np.ndarray, cfg: TrainConfig,
            exclude_genes: np.ndarray | None = None, rows: list | None = None) -> FoldData:
    """``rows``: (repeat, fold, train, val, test) per model, when not derived from ``assign`` (a final fit)."""
    rows = rows or model_rows(assign, cohort.strata, cfg.inner_val, cfg.seed)
    p = len(cohort.patient_ids)
    use_g, use_i = GENES in spec.modalities, IMAGE in spec.modalities
    genes_m, tokens_m, fitted = [], [], []
    if use_i:
        raw_tokens, mask, weights = view.for_patients(cohort.patient_ids)
    else:
        mask, weights = np.ones((p, 1), bool), np.ones((p, 1), np.float32)
    gene_present = cohort.has_genes if use_g else np.zeros(p, bool)
    image_present = cohort.has_image if use_i else np.zeros(p, bool)
    tokens_key = None
    for r, f, tr, val, test in rows:
        fit_rows = np.concatenate([tr, val])  # the fold's whole training part; the test fold never
        record = {"repeat": r, "fold": f, "test": test}
        if use_g:
            gt = fit_gene_transform(cohort.genes, fit_rows[gene_present[fit_rows]], cfg.top_genes, exclude_genes)
            genes_m.append(np.nan_to_num(gt.apply(cohort.genes)))
            record["genes_fitted_on"], record["gene_transform"] = gt.fitted_on, gt
        if use_i:
            if cfg.token_dim is not None and cfg.token_dim < raw_tokens.shape[-1]:
                tokens_key = tokens_key or digest(raw_tokens, mask)
                pca, projected = project_tokens(raw_tokens, mask, fit_rows[image_present[fit_rows]], cfg.token_dim,
                                                cfg.seed, tokens_key)
                tokens_m.append(projected)
                record["tokens_fitted_on"], record["token_pca"] = pca.fitted_on, pca
            else:
                tokens_m.append(raw_tokens)
        fitted.append(record)
    m = len(rows)
    genes_t = torch.from_numpy(np.stack(genes_m)) if use_g else torch.zeros(m, p, 1)
    tokens_t = torch.from_numpy(np.stack(tokens_m).astype(np.float32)) if use_i else torch.zeros(m, p, 1, 1)
    for record in fitted:  # the input widths the head is built for (a saved model is rebuilt with them)
        record["gene_dim"], record["token_dim"] = genes_t.shape[-1], tokens_t.shape[-1]
    return FoldData(genes_t, tokens_t, torch.from_numpy(mask), torch.from_numpy(weights.astype(np.float32)),
                    torch.from_numpy(gene_present), torch.from_numpy(image_present),
                    [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows], fitted,
                    len(cohort.classes) if cohort.target == "multiclass" else 2, cohort.target)


def _gather(data: FoldData, idx: torch.Tensor, perm: dict[str, torch.Tensor] | None = None):
    """Minibatch ``idx`` (M, B) of every model; ``perm`` maps a modality to an (M, P) row permutation per
    model (the modality check)."""
    m = torch.arange(idx.shape[0])[:, None]
    gi = idx if not perm or GENES not in perm else perm[GENES].gather(1, idx)
    ii = idx if not perm or IMAGE not in perm else perm[IMAGE].gather(1, idx)
    genes = data.genes[m, gi] * data.gene_present[gi].unsqueeze(-1)
    tokens = data.tokens[m, ii]
    mask = data.mask[ii] & data.image_present[ii].unsqueeze(-1)
    # A patient without image keeps one masked-in zero token so attention stays defined.
    mask[..., 0] |= ~data.image_present[ii]
    return genes, tokens, mask, data.weights[ii] * mask


def _padded(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(r) for r in rows)
    idx = np.zeros((len(rows), n), np.int64)
    valid = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)], valid[i, : len(r)] = r, True
    return torch.from_numpy(idx), torch.from_numpy(valid)


def _predict(model, data: FoldData, rows: torch.Tensor, chunk: int = 512, perm=None) -> torch.Tensor:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, rows.shape[1], chunk):
            out.append(model(*_gather(data, rows[:, s:s + chunk], perm)))
    return torch.cat(out, dim=1)


def train_torch(spec: HeadSpec, data: FoldData, y: np.ndarray, cfg: TrainConfig, head_kwargs: dict | None = None,
                on_epoch=None):
    """Fit the M models of a torch head together; returns the model (best weights restored), the epochs run and
    each model's logits on its inner-validation rows (M, V), predicted while those rows were held out.
    ``on_epoch(done, total)`` after every epoch of all M models (a progress bar; ``total`` counts every stage's
    epochs, and an early stop jumps to the end of its stage)."""
    # Initialisation and dropout draw from torch's global generator: seed it, inside a fork so the
    # caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _train_torch(spec, data, y, cfg, head_kwargs, on_epoch or (lambda done, total: None))


def _train_torch(spec: HeadSpec, data: FoldData, y: np.ndarray, cfg: TrainConfig, head_kwargs: dict | None, on_epoch):
    m = data.genes.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    model = spec.build(m, data.genes.shape[-1], data.tokens.shape[-1], snn=cfg.snn, **(head_kwargs or {}))
    warm = hasattr(model, "warm_start")
    if warm:
        # The inputs of the linear logits: fitted here on the inner-training rows, refitted at the end.
        linear_inputs = [g.numpy() for g in data.genes], [bag_means(data, i) for i in range(m)]
        model.warm_start(*linear_inputs, y, data.train, cfg.seed)
    # fused: one kernel updates every parameter; the per-tensor loop (and, less so, foreach) was a sizeable share
    # of a step.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    loss_fn = head_loss(y, data.train, data.n_classes)
    val_idx, val_valid = _padded(data.val)

    # Early stopping scores the loss training minimises, class weights included. Unweighted, it credited
    # epochs for moving the intercept towards the class prior: measured on null image bags, a fusion head
    # then kept an attention branch fitted to noise over its warm start (the fitted gene model).
    val_weight = loss_fn.weight(val_idx) * val_valid
    y_val = loss_fn.targets(val_idx)

    def val_loss(logits: torch.Tensor | None = None) -> torch.Tensor:  # (M,) of the model now, or of ``logits``
        logits = _predict(model, data, val_idx) if logits is None else logits
        return (loss_fn.per_row(logits, val_idx, val_valid) * val_weight).sum(1) / val_weight.sum(1)

    # The starting point is scored too: a warm-started model keeps it unless training does better.
    start_logits = _predict(model, data, val_idx)
    best = val_loss(start_logits)
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if warm:
        # A constant warm start (neither linear model fitted) ranks nothing, so it is no fallback: the best
        # trained epoch is kept even where its loss is above the constant's. Scored against the constant, the
        # attention branch, which fits noise before it finds a minority of telling patches, often never beat
        # it within the patience, and the fold predicted a constant (docs/heads.md, "Measurements behind the
        # code").
        best[torch.tensor(model.warm_constant)] = float("inf")
    start_state = {k: v.clone() for k, v in best_state.items()} if warm else None
    stale = torch.zeros(m, dtype=torch.long)
    epochs_run = np.zeros(m, int)
    n_train = max(len(r) for r in data.train)
    steps = max(1, -(-n_train // cfg.batch_size))
    span = steps * cfg.batch_size
    # A head may train in stages (fusion heads: unimodal branches first, then the fusion term); each stage
    # starts from the best weights so far, with its own patience, and is scored against the same best loss.
    moved = torch.zeros(m, dtype=torch.bool)  # left the starting point
    fused = torch.zeros(m, dtype=torch.bool)  # improved on in the fusion stage
    unimodal = None  # (state, validation logits) where the fusion stage began
    stages = list(model.stages()) if hasattr(model, "stages") else [None]
    for stage_no, stage in enumerate(stages):
        if stage is not None:
            model.load_state_dict(best_state)
            unimodal = {k: v.clone() for k, v in best_state.items()}, _predict(model, data, val_idx)
            stage()
            stale = torch.zeros(m, dtype=torch.long)
        for epoch in range(cfg.epochs):
            on_epoch(stage_no * cfg.epochs + epoch, len(stages) * cfg.epochs)
            # One permutation per model, cycled to a common length: every model sees all its rows each epoch.
            order = torch.stack([torch.from_numpy(r)[torch.randperm(len(r), generator=gen)].repeat(-(-span // len(r)))[:span]
                                 for r in data.train])
            model.train()
            active = (stale < cfg.patience).float()[:, None]
            for s in range(steps):
                idx = order[:, s * cfg.batch_size:(s + 1) * cfg.batch_size]
                loss = loss_fn.training(model(*_gather(data, idx)), idx)
                # Models that have stopped contribute no gradient; their best weights are already saved.
                (loss * active).mean(dim=1).sum().backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            vloss = val_loss()
            improved = (vloss < best - 1e-4) & (stale < cfg.patience)
            epochs_run += (stale < cfg.patience).numpy()
            if improved.any():
                best = torch.where(improved, vloss, best)
                copy_models(best_state, model.state_dict(), improved)
                moved |= improved
                fused |= improved & (unimodal is not None)
            stale = torch.where(improved, torch.zeros_like(stale), stale + 1)
            if (stale >= cfg.patience).all():
                break
        on_epoch((stage_no + 1) * cfg.epochs, len(stages) * cfg.epochs)
    model.load_state_dict(best_state)
    if not warm:
        model.eval()
        return model, epochs_run.tolist(), _predict(model, data, val_idx)
    if cfg.fallback == "significant":
        moved = torch.tensor(back_to_warm_start_unless_significant(
            model, start_state, start_logits, _predict(model, data, val_idx), y_val, val_weight))
    elif cfg.fallback == "fusion" and unimodal is not None:
        # The fusion term is what fits one modality's noise through the other, while the unimodal branches
        # kept as early stopping picks them cost next to nothing on null bags; testing the whole of training
        # against the warm start threw away real attention gains (docs/heads.md). So only the fusion term is
        # put to the test.
        keep = significantly_better(unimodal[1], _predict(model, data, val_idx), y_val, val_weight) | ~fused
        copy_models(model.state_dict(), unimodal[0], ~keep)
        model.fusion_kept = (fused & keep).tolist()
    model.trained_kept = moved.tolist()
    # What each model ends with, predicted on the validation rows while they are still held out: calibration
    # and the threshold are fitted on these, as CalibratedClassifierCV(ensemble=False) calibrates a model
    # refitted on all rows with its cross-validated predictions.
    val_logits = _predict(model, data, val_idx)
    if hasattr(model, "refit_linear"):
        model.refit_linear(*linear_inputs, y, [np.concatenate([tr, v]) for tr, v in zip(data.train, data.val)],
                           cfg.seed)
    model.eval()
    return model, epochs_run.tolist(), val_logits


def cross_validate(cohort: Cohort, head: str | Head, assign: np.ndarray, view: View | None = None,
                   cfg: TrainConfig = TrainConfig(), exclude_genes: np.ndarray | None = None,
                   permutations: int = 5, head_kwargs: dict | None = None, rows: list | None = None,
                   on_epoch=None) -> CVResult:
    """Out-of-fold predictions of ``head`` (a name, or a ``Head`` from ``create_head``) for every repeat and fold
    of ``assign``.

    A multimodal head is also re-predicted ``permutations`` times with one modality shuffled among the
    patients of each test fold (permutation importance); ``permutations=0`` skips that. ``on_epoch(done,
    total)``: the torch heads' epochs, for a progress bar."""
    from fusion.contract import create_head

    head = create_head(head, **(head_kwargs or {})) if isinstance(head, str) else head
    spec = head.spec
    if IMAGE in spec.modalities and view is None:
        raise ValueError(f"head {spec.name!r} uses image bags; pass a view")
    if GENES in spec.modalities and cohort.genes is None:
        raise ValueError(f"head {spec.name!r} uses genes; the cohort has none")
    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        data = prepare(cohort, view, spec, assign, cfg, exclude_genes, rows)
        y = cohort.y
        models, val_probs = head.fit(data, y, cfg, on_epoch)
        test_idx, test_valid = _padded(data.test)
        thresholds = np.full((assign.shape[0], int(assign.max()) + 1), 0.5)
        if is_survival(y):  # each model's baseline hazard, from its risks on its own training part
            fit_rows = [np.concatenate([tr, v]) for tr, v in zip(data.train, data.val)]
            idx, valid = _padded(fit_rows)
            risks = models.predict(data, idx)
            for i, rec in enumerate(data.fitted):
                rec["baseline_hazard"] = breslow(risks[i, valid[i].numpy()], y[fit_rows[i]])
        for i, rec in enumerate(data.fitted):  # both fitted on the inner validation rows, never the test fold
            if is_survival(y):
                # A risk score is no probability to calibrate; its cut into risk groups is the validation median.
                rec["calibrator"] = fit_calibrator(val_probs[i], strata(y[data.val[i]]), "none")
                rec["threshold"] = float(np.median(val_probs[i]))
            elif data.n_classes > 2:  # the class decision is the argmax: no threshold
                rec["calibrator"] = fit_calibrator(val_probs[i], y[data.val[i]], cfg.calibrate)
                rec["threshold"] = float("nan")
            else:
                rec["calibrator"] = fit_calibrator(val_probs[i], y[data.val[i]], cfg.calibrate)
                rec["threshold"] = choose_threshold(rec["calibrator"](val_probs[i]), y[data.val[i]], cfg.operating_point)
            thresholds[rec["repeat"], rec["fold"]] = rec["threshold"]

        def predict(perm=None, calibrated=True):
            out = _scatter(assign.shape, data, models.predict(data, test_idx, perm), test_valid.numpy())
            for i, rec in enumerate(data.fitted):
                if calibrated:
                    out[rec["repeat"], data.test[i]] = rec["calibrator"](out[rec["repeat"], data.test[i]])
            return out
        uncalibrated = predict(calibrated=False)
        oof = predict()
        permuted: dict[str, np.ndarray] = {}
        if permutations and spec.multimodal:
            for modality in (GENES, IMAGE):
                permuted[modality] = np.stack([
                    predict({modality: permute_within_test_folds(data.test, len(y), cfg.seed + 7 + k)})
                    for k in range(permutations)])
    finally:
        torch.set_num_threads(prev_threads)
    return CVResult(spec.name, cohort.patient_ids, y, assign, oof, time.perf_counter() - t0, models.n_params,
                    list(map(int, models.epochs)), data.fitted, permuted, thresholds, uncalibrated, models)


def bag_means(data: FoldData, i: int) -> np.ndarray:
    """(P, D) bag mean of model ``i``'s tokens; zeros for a patient without image."""
    return weighted_mean(data.tokens[i], data.weights * data.image_present[:, None]).numpy()


def permute_within_test_folds(test_rows: list[np.ndarray], patients: int, seed: int) -> torch.Tensor:
    """(M, P) row maps: model i sees its own test patients shuffled among themselves, every other row as is.

    Per model, because with repeats the test folds of different models overlap: one shared map would
    hand a model a patient from its own training part."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(patients).repeat(len(test_rows), 1)
    for i, rows in enumerate(test_rows):
        r = torch.from_numpy(rows)
        perm[i, r] = r[torch.randperm(len(r), generator=g)]
    return perm


def _scatter(shape: tuple[int, int], data: FoldData, probs: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(M, rows) test-fold predictions into an (R, P) out-of-fold array ((M, rows, C) into (R, P, C))."""
    out = np.full(tuple(shape) + probs.shape[2:], np.nan)
    for i, rec in enumerate(data.fitted):
        out[rec["repeat"], data.test[i]] = probs[i, valid[i]]
    return out
