"""The Python API behind ``fusion cv`` and ``fusion bench``."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import featstore
from featstore.errors import StoreError
from featstore.tables import LABEL_MAPS
from fusion import multiclass as mc
from fusion.calibration import operating_point, reliability
from fusion.checks import check_target, missingness_leak, modality_check
from fusion.cohort import Cohort, label_target, load_cohort
from fusion.contract import create_head
from fusion.fallback import FALLBACKS
from fusion.heads import GENES, IMAGE, get_head, list_heads
from fusion.html_report import write_bench_report, write_cv_report
from fusion.metrics import headline, metrics_for, paired_difference, summarise
from fusion.model import model_meta, save_model
from fusion.multiclass_report import write_multiclass_cv, write_multiclass_leaderboard
from fusion.preprocess import gene_exclusion_mask
from fusion.report import write_cv, write_leaderboard
from fusion.splits import make_splits, read_splits, split_balance
from fusion.survival import integrated_brier, risk_groups, time_dependent_auc
from fusion.survival_report import write_survival_cv, write_survival_leaderboard
from fusion.top_genes import top_genes
from fusion.train import CVResult, TrainConfig, cross_validate
from fusion.views import View, build_view

PAM50_FILE = Path(__file__).with_name("pam50_genes.txt")


def pam50_genes() -> set[str]:
    return {ln.strip() for ln in PAM50_FILE.read_text().splitlines() if ln.strip() and not ln.startswith("#")}


def option(default, help: str):  # noqa: A002 - the word Typer uses
    """A field that is also a command-line option of cv, bench and fit (cli.py builds the options from these)."""
    return field(default=default, metadata={"help": help})


MIN_BOOTSTRAP = 40


@dataclass
class CVOptions:
    """Everything a training run is given besides the store and the head: the one definition of the options
    of ``fusion cv``, ``bench`` and ``fit`` (with ``TrainConfig``), so they cannot drift."""

    features: str | None = option(None, "Feature set (optional when the store has one)")
    genes: str | None = option(None, "Expression table (optional when the store has one)")
    labels: str | None = option(None, "Labels table in the store (optional when it has one)")
    labels_csv: str | None = option(None, "Labels from a CSV instead (patient_id,label), read with --label-map")
    survival: str | None = option(None, "A survival table of the store (featstore import-labels --time-column "
                                        "--event-column) to train on instead of labels: the survival heads, scored "
                                        "by c-index")
    label_map: str | None = option("pam50-binary", "pam50-binary | pam50 (the five calls: a multi-class target) | "
                                                   "none")
    positive: str | None = option(None, "One class against all the others (one-vs-rest), for labels of more than "
                                        "two classes, e.g. --positive Basal on five PAM50 calls; without it such "
                                        "labels train every class at once (softmax)")
    folds: int = option(5, "K in K-fold")
    repeats: int = option(1, "Repeats with new shuffles")
    seed: int = option(0, "Seed for splits, initialisation and bootstrap")
    split: str = option("patient", "patient | site (TCGA tissue source site kept apart)")
    splits_file: str | None = option(None, "Read the folds from a splits.csv")
    exclude_genes: str | None = option(None, "pam50, or a file of gene symbols to leave out")
    missing: str = option("drop", "drop | mask: patients missing a modality")
    view_k: int = option(16, "Tokens per patient in the cached compact view")
    view_method: str = option("kmeans", "kmeans (prototypes) | sample (random patches)")
    bootstrap: int = option(1000, "Bootstrap resamples for the CIs")
    strict: bool = option(False, "With --missing mask, refuse when having a modality predicts the label")
    save_models: bool = option(False, "Keep each fold's model under <out>/<head>/models/, for fusion predict to "
                                      "average")
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.label_map not in (None, *LABEL_MAPS):
            raise ValueError(f"label_map (--label-map) must be one of {', '.join(LABEL_MAPS)} or none, got "
                             f"{self.label_map!r}")
        if self.exclude_genes not in (None, "pam50") and not Path(self.exclude_genes).is_file():
            raise ValueError(f"--exclude-genes {self.exclude_genes!r} is neither 'pam50' nor a file of gene symbols "
                             "(one per line)")
        if self.bootstrap < MIN_BOOTSTRAP:
            raise ValueError(f"bootstrap must be at least {MIN_BOOTSTRAP} resamples (then each 2.5% tail of a 95% CI "
                             f"holds one), got {self.bootstrap}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")


_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_cv_options_init = CVOptions.__init__


def _init_with_train_fields(self, *args, **kwargs) -> None:
    """``CVOptions(epochs=50)``: the training options (``TrainConfig``'s fields) given directly go to ``train``,
    so a user need not know where each option lives."""
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in _TRAIN_FIELDS}
    if given:
        kwargs["train"] = dataclasses.replace(kwargs.get("train") or TrainConfig(), **given)
    _cv_options_init(self, *args, **kwargs)


CVOptions.__init__ = _init_with_train_fields


@dataclass
class CVRun:
    result: CVResult
    metrics: dict
    cohort: Cohort


def _exclusion(opts: CVOptions, cohort: Cohort) -> tuple[np.ndarray | None, str]:
    if cohort.genes is None:
        return None, "no genes used"
    if opts.exclude_genes is None:
        hits = gene_exclusion_mask(cohort.gene_ids, pam50_genes()).sum()
        note = (f"WARNING: {hits} PAM50 genes are among the inputs; PAM50 labels are computed from them, so "
                "gene-based scores are close to circular (use --exclude-genes pam50)") if hits else "no PAM50 genes in the table"
        return None, note
    symbols = pam50_genes() if opts.exclude_genes == "pam50" else {
        ln.strip() for ln in Path(opts.exclude_genes).read_text().splitlines() if ln.strip()}
    mask = gene_exclusion_mask(cohort.gene_ids, symbols)
    return mask, f"excluded {int(mask.sum())} genes ({opts.exclude_genes})"


def _assignments(opts: CVOptions, cohort: Cohort) -> np.ndarray:
    if opts.splits_file:
        return read_splits(opts.splits_file, cohort.patient_ids)
    return make_splits(cohort.patient_ids, cohort.strata, opts.folds, opts.repeats, opts.seed, opts.split)


def cohort_for(store, heads: list[str], opts: CVOptions) -> Cohort:
    """One cohort for all the heads: the patients with every modality any head uses."""
    use_g = any(GENES in get_head(h).modalities for h in heads)
    use_i = any(IMAGE in get_head(h).modalities for h in heads)
    return load_cohort(store, opts.features, opts.genes, opts.labels, opts.label_map, use_g, use_i, opts.missing,
                       labels_csv=opts.labels_csv, positive=opts.positive, survival=opts.survival)


def prepare_inputs(store, heads: list[str], opts: CVOptions) -> tuple[Cohort, View | None]:
    """The heads' cohort (:func:`cohort_for`) and, when any head reads images, the cached view."""
    cohort = cohort_for(store, heads, opts)
    view = None
    if any(IMAGE in get_head(h).modalities for h in heads):
        view = build_view(store, cohort.feature_set, cohort.slides, opts.view_k, opts.view_method, opts.seed,
                          cache=store.mode != "r")
    return cohort, view


def provenance(store, cohort: Cohort) -> dict:
    """Where the inputs came from, for the report: store, feature set, expression table, software."""
    import subprocess

    from featstore.barcodes import site_of
    from featstore.provenance import library_versions

    out: dict = {"store": str(Path(store.path).resolve())}
    if cohort.feature_set:
        cfg = store.feature_set_info(cohort.feature_set).get("config", {})
        out["feature set"] = cohort.feature_set
        out.update({f"features: {k}": cfg[k] for k in ("encoder", "weights", "target_mpp", "patch_size", "dim",
                                                       "source") if k in cfg})
    if cohort.gene_table:
        prov = store.read_expression(cohort.gene_table).provenance
        out["expression table"] = cohort.gene_table
        out.update({f"expression: {k}": prov[k] for k in ("source", "path", "transform", "simulated") if k in prov})
        # What the import dropped and why (normal-tissue samples, duplicates, patients without a tumour sample).
        out.update({f"expression import note {i + 1}": note for i, note in enumerate(prov.get("notes", []))})
    if cohort.label_table and cohort.target == "survival":
        prov = store.read_survival(cohort.label_table).provenance
        out.update({f"survival: {k}": prov[k] for k in ("source", "time_column", "event_column", "time_unit")
                    if k in prov})
        out.update({f"survival import note {i + 1}": note for i, note in enumerate(prov.get("notes", []))})
    elif cohort.label_table:
        prov = store.read_labels(cohort.label_table).provenance
        out.update({f"labels: {k}": prov[k] for k in ("source", "label_column", "label_map") if k in prov})
        out.update({f"labels import note {i + 1}": note for i, note in enumerate(prov.get("notes", []))})
    out["software"] = ", ".join(f"{k} {v}" for k, v in library_versions(
        ("featstore", "torch", "numpy", "scikit-learn", "xgboost", "zarr", "h5py")).items())
    try:
        out["git revision"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                             cwd=Path(__file__).parent, timeout=5).stdout.strip() or "not a git checkout"
    except (OSError, subprocess.SubprocessError):
        out["git revision"] = "not a git checkout"
    sites: dict[str, dict[str, int]] = {}
    for p, label in zip(cohort.patient_ids, cohort.strata):
        site = site_of(p) or "unknown"
        cls = cohort.classes[int(label)]
        sites.setdefault(site, {}).setdefault(cls, 0)
        sites[site][cls] += 1
    out["sites_per_class"] = sites
    return out


def run_head(cohort: Cohort, view: View | None, head: str, assign: np.ndarray, opts: CVOptions,
             out: Path | None = None, simulated: bool = False, prov: dict | None = None,
             model_info: dict | None = None, on_epoch=None) -> CVRun:
    """``on_epoch(head, done, total)``: the epochs of a torch head as they pass (a progress bar)."""
    resolved = create_head(head)  # once: everything below asks it, never which kind it is
    spec = resolved.spec
    check_target(head, cohort.target)
    leak = missingness_leak(cohort, spec.modalities) if opts.missing == "mask" else None
    if leak and opts.strict:  # refused before any training
        raise ValueError(leak["warning"].replace("WARNING: ", "--strict: ", 1))
    exclude, gene_note = _exclusion(opts, cohort) if GENES in spec.modalities else (None, "no genes used")
    result = cross_validate(cohort, resolved, assign, view, opts.train, exclude,
                            on_epoch=None if on_epoch is None else lambda done, total: on_epoch(head, done, total))
    folds, summary = summarise(cohort.y, result.oof, assign, opts.bootstrap, opts.seed, result.thresholds)
    multiclass = cohort.target == "multiclass"
    classes = ({"classes": list(cohort.classes), "per_class": per_class(summary, folds, cohort)} if multiclass else
               {"positive_class": cohort.classes[1], "negative_class": cohort.classes[0]})
    metrics = {
        "head": head, "target": cohort.target, "modalities": sorted(spec.modalities),
        "n_patients": len(cohort.patient_ids), **classes,
        "split": {"by": opts.split if not opts.splits_file else f"file:{opts.splits_file}", "folds": int(assign.max() + 1),
                  "repeats": int(assign.shape[0]), "seed": opts.seed, "balance": split_balance(assign, cohort.strata)},
        "folds": folds, "summary": summary, "seconds": round(result.seconds, 3), "params": result.n_params,
        "epochs": result.epochs, "genes": gene_note, "cohort": cohort.summary,
    }
    if cohort.target == "survival":
        metrics["risk_groups"] = risk_groups(cohort.y, result.oof, np.take_along_axis(result.thresholds, assign, 1))
        metrics["time_dependent_auc"] = time_dependent_auc(cohort.y, result.oof)
        metrics["integrated_brier"] = integrated_brier(cohort.y, result.oof, result.fitted)
    elif multiclass:
        metrics["operating_point"] = mc.operating_point(cohort.y, result.oof, cohort.classes)
        metrics["calibration"] = {
            "method": "temperature" if opts.train.calibrate == "platt" else "none",
            "fitted_on": "inner validation rows of each fold",
            "after": mc.reliability_per_class(cohort.y, result.oof, cohort.classes),
            "before": mc.reliability_per_class(cohort.y, result.uncalibrated, cohort.classes)}
    else:
        metrics["operating_point"] = operating_point(cohort.y, result.oof, result.thresholds, assign,
                                                     opts.train.operating_point)
        metrics["calibration"] = {
            "method": opts.train.calibrate, "fitted_on": "inner validation rows of each fold",
            "after": reliability(np.tile(cohort.y, assign.shape[0]), result.oof.ravel()),
            "before": reliability(np.tile(cohort.y, assign.shape[0]), result.uncalibrated.ravel())}
    metrics |= {
        "view": None if view is None else {"key": view.key, "cached": view.cached, "k": opts.view_k,
                                           "method": opts.view_method},
        "simulated": simulated, "provenance": prov or {},
    }
    if GENES in spec.modalities and (genes := top_genes(result, cohort.gene_ids, cohort.classes)):
        metrics["top_genes"] = genes
    verdicts = result.models.verdicts
    if "trained_kept" in verdicts:
        metrics["trained_kept"] = {"per_model": verdicts["trained_kept"], "rule": FALLBACKS[opts.train.fallback]}
        if "fusion_term_kept" in verdicts:
            metrics["trained_kept"]["fusion_term_kept"] = verdicts["fusion_term_kept"]
    if result.permuted:
        metrics["modality_check"] = modality_check(cohort.y, result, opts)
    for w in cohort.summary.get("warnings", []):
        metrics.setdefault("warnings", []).append(w)
    if leak:
        metrics["missingness_leak"] = leak
        metrics.setdefault("warnings", []).append(leak["warning"])
    if out is not None:
        if cohort.target == "survival":
            write_survival_cv(Path(out), result, metrics)
        elif multiclass:
            write_multiclass_cv(Path(out), result, metrics)
        else:
            write_cv(Path(out), result, metrics)
            write_cv_report(Path(out), result, metrics)
        if model_info is not None:
            for i, rec in enumerate(result.fitted):
                save_model(Path(out) / "models" / f"repeat{rec['repeat']}_fold{rec['fold']}", result, i, model_info)
    return CVRun(result, metrics, cohort)


def per_class(summary: dict, folds: list[dict], cohort: Cohort) -> dict:
    """A multi-class summary's one-vs-rest ROC-AUC of each class (``roc_auc[k]``), moved under the class's name
    with its patient count; the summary and the folds keep the macro metrics."""
    out = {c: {"patients": cohort.summary["classes"][c], "roc_auc": summary.pop(f"roc_auc[{k}]")}
           for k, c in enumerate(cohort.classes)}
    for f in folds:
        f["roc_auc_per_class"] = {c: f.pop(f"roc_auc[{k}]") for k, c in enumerate(cohort.classes)}
    return out


def _is_simulated(store, cohort: Cohort) -> bool:
    if cohort.feature_set and store.feature_set_info(cohort.feature_set).get("config", {}).get("source") == "simulated":
        return True
    return bool(cohort.gene_table and store.read_expression(cohort.gene_table).provenance.get("simulated"))


def _open_existing(store_path: str | Path | featstore.Store):
    """Open a store for training: it must exist (a mistyped path is an error, never a new empty store);
    writable when it can be, so the compact views are cached. A ``Store`` already open is used as it is
    (and left open: its owner closes it)."""
    if isinstance(store_path, featstore.Store):
        return contextlib.nullcontext(store_path)
    if not Path(store_path).exists():
        raise StoreError(f"no store at {store_path}; fusion reads an existing store (featstore import-genes / "
                         "extract / fusion simulate make one)")
    return featstore.open(store_path, "a" if os.access(store_path, os.W_OK) else "r")


def cv(store_path: str | Path | featstore.Store, head: str, opts: CVOptions = CVOptions(), out: str | Path | None = None,
       on_epoch=None) -> CVRun:
    """Cross-validate one head on a store; writes outputs to ``out`` when given. ``on_epoch(head, done, total)``
    follows the training (a progress bar)."""
    with _open_existing(store_path) as store:
        cohort, view = prepare_inputs(store, [head], opts)
        simulated = _is_simulated(store, cohort)
        prov = provenance(store, cohort)
        info = model_meta(store, cohort, head, opts) if opts.save_models else None
    assign = _assignments(opts, cohort)
    return run_head(cohort, view, head, assign, opts, Path(out) if out else None, simulated, prov, info, on_epoch)


def bench(store_path: str | Path | featstore.Store, heads: list[str] | str = "all", opts: CVOptions = CVOptions(),
          out: str | Path | None = None, on_head=None, on_epoch=None) -> tuple[list[dict], dict[str, CVRun]]:
    """Every head on identical folds and patients; leaderboard rows sorted by pooled out-of-fold ROC-AUC.
    ``on_head(head, done, total)`` is called as each head starts, ``on_epoch(head, done, total)`` as a torch
    head's epochs pass (a progress bar)."""
    t0 = time.perf_counter()
    with _open_existing(store_path) as store:
        target = label_target(store, opts.labels, opts.labels_csv, opts.label_map, opts.positive, opts.survival)
        names = list_heads(target) if heads == "all" else list(heads)
        for h in names:
            check_target(h, target)
        cohort, view = prepare_inputs(store, names, opts)
        simulated = _is_simulated(store, cohort)
        prov = provenance(store, cohort)
        info = {h: model_meta(store, cohort, h, opts) for h in names} if opts.save_models else {}
    assign = _assignments(opts, cohort)
    runs = {}
    for k, h in enumerate(names):
        if on_head is not None:
            on_head(h, k, len(names))
        runs[h] = run_head(cohort, view, h, assign, opts, Path(out) / h if out else None, simulated, prov, info.get(h),
                           on_epoch)
    key = headline(cohort.y)
    unimodal = [h for h in names if not get_head(h).multimodal]
    best_uni = max(unimodal, key=lambda h: runs[h].metrics["summary"][key]["pooled"] or 0) if unimodal else None
    rows = []
    for h, run in runs.items():
        s = run.metrics["summary"]
        row = {"head": h, "modalities": "+".join(sorted(get_head(h).modalities)), "seconds": run.metrics["seconds"],
               "params": run.metrics["params"]}
        for m in metrics_for(cohort.y, run.result.oof):
            row.update({m: s[m]["pooled"], f"{m}_lo": s[m]["ci95"][0], f"{m}_hi": s[m]["ci95"][1],
                        f"{m}_fold_mean": s[m]["fold_mean"], f"{m}_fold_std": s[m]["fold_std"]})
        if best_uni and h != best_uni:
            d = paired_difference(cohort.y, run.result.oof, runs[best_uni].result.oof, key, opts.bootstrap, opts.seed)
            row["vs_best_unimodal"] = f"{d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" + \
                (" within noise" if d["within_noise"] else "")
            row["within_noise"] = d["within_noise"]
            row["vs_best_unimodal_difference"], row["vs_best_unimodal_ci95"] = d["difference"], d["ci95"]
        else:
            row["vs_best_unimodal"] = "best unimodal" if h == best_uni else ""
            row["within_noise"] = None
        row["modality_check"] = "; ".join(
            f"{m} {c['drop']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
            + ("" if c["informative"] else f" ({c['verdict']})") for m, c in run.metrics.get("modality_check", {}).items())
        rows.append(row)
    rows.sort(key=lambda r: -(r[key] or 0))
    if out is not None:
        note = (f"{len(cohort.patient_ids)} patients, {assign.shape[0]} x {int(assign.max()) + 1}-fold "
                f"{opts.split}-level CV, {time.perf_counter() - t0:.1f} s in all.")
        if simulated:
            note += " Image bags and/or genes are SIMULATED (fusion simulate): see the store's provenance."
        for w in dict.fromkeys(w for r in runs.values() for w in r.metrics.get("warnings", [])):
            note += f"\n\n**{w}**"
        if cohort.target == "survival":
            write_survival_leaderboard(Path(out), rows, runs, note)
        elif cohort.target == "multiclass":
            write_multiclass_leaderboard(Path(out), rows, runs, note)
        else:
            write_leaderboard(Path(out), rows, cohort.classes[1], note)
            write_bench_report(Path(out), rows, runs, note)
    return rows, runs
