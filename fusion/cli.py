"""The ``fusion`` command line: parse, call the Python API, print with rich."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import featstore
from featstore.cli_common import console, err, guard, root_options, writable_output

fusion_app = typer.Typer(help="Leakage-free cross-validation of gene, image and fusion heads on a feature store.",
                         no_args_is_help=True, pretty_exceptions_enable=False)
fusion_app.callback()(root_options)


def _cv_options() -> list[tuple[str, object, object, str]]:
    """(name, type, typer option, owner) for every field of CVOptions and TrainConfig that is an option: they
    are defined once, with their defaults and help, in fusion/api.py and fusion/train.py."""
    import dataclasses
    import types
    import typing

    from fusion.api import CVOptions
    from fusion.train import TrainConfig

    out = []
    for owner, cls in (("cv", CVOptions), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                continue
            t = hints[f.name]
            if isinstance(t, types.UnionType) or typing.get_origin(t) is typing.Union:
                t = Optional[next(a for a in typing.get_args(t) if a is not type(None))]
            out.append((f.name, t, typer.Option(f.default, help=f.metadata["help"]), owner))
    return out


def _with_cv_options(fn):
    """Give a command the shared training options; it receives them as one ``opts: CVOptions``."""
    import functools
    import inspect
    import typing

    shared = _cv_options()

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from fusion.api import CVOptions
        from fusion.train import TrainConfig

        given = {owner: {n: kwargs.pop(n) for n, _, _, o in shared if o == owner} for owner in ("cv", "train")}
        cv = given["cv"]
        if cv["label_map"] == "none":
            cv["label_map"] = None
        opts = CVOptions(**cv, train=TrainConfig(**given["train"], seed=cv["seed"]))
        return fn(*args, opts=opts, **kwargs)

    # The command's own annotations are strings here (postponed evaluation): resolve them, keeping Annotated's
    # typer metadata, so their help survives the new signature.
    hints = typing.get_type_hints(fn, include_extras=True)
    own = [p.replace(annotation=hints.get(p.name, p.annotation))
           for p in inspect.signature(fn).parameters.values() if p.name != "opts"]
    params = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=t) for n, t, opt, _ in shared]
    wrapper.__signature__ = inspect.Signature(own + params)
    wrapper.__annotations__ = {**{p.name: p.annotation for p in own}, **{n: t for n, t, _, _ in shared}}
    return wrapper


@contextlib.contextmanager
def _steps(what: str, quiet: bool):
    """A progress bar over named steps (``step(name, done, total)``), on stderr when it is a terminal; nothing
    when quiet (nor in a pipe or a log, where a bar is only noise)."""
    if quiet or not err.is_terminal:
        yield lambda *_: None
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, transient=True)
    task = progress.add_task(what, total=None)

    def step(name: str, done: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, description=f"{what}: {name}", completed=done, total=total)

    try:
        yield step
    finally:
        if progress.live.is_started:
            progress.stop()


def _headline(metrics: dict) -> str:
    return "c_index" if metrics.get("target") == "survival" else "roc_auc"


def _label(metrics: dict) -> str:
    return {"c_index": "c-index", "roc_auc": "ROC-AUC"}[_headline(metrics)]


def _what(metrics: dict) -> str:
    """What a run predicts, for a table's title."""
    if metrics.get("target") == "survival":
        return f"{metrics['cohort']['survival']['events']} events"
    if metrics.get("target") == "multiclass":
        return f"{len(metrics['classes'])} classes, macro ROC-AUC"
    return f"positive class {metrics['positive_class']}"


def _print_summary(metrics: dict) -> None:
    what = _what(metrics)
    t = Table(title=f"{metrics['head']}: {metrics['n_patients']} patients, {what}"
              + (" [SIMULATED data]" if metrics.get("simulated") else ""))
    for col in ("metric", "pooled out-of-fold", "95% CI (patient bootstrap)", "fold mean ± sd"):
        t.add_column(col)

    def r3(v) -> str:
        return "nan" if v is None else f"{v:.3f}"

    for m, v in metrics["summary"].items():
        t.add_row(m, r3(v["pooled"]), f"[{r3(v['ci95'][0])}, {r3(v['ci95'][1])}]",
                  f"{r3(v['fold_mean'])} ± {r3(v['fold_std'])}")
    for c, v in metrics.get("per_class", {}).items():
        s = v["roc_auc"]
        t.add_row(f"ROC-AUC {c} vs rest", r3(s["pooled"]), f"[{r3(s['ci95'][0])}, {r3(s['ci95'][1])}]",
                  f"{r3(s['fold_mean'])} ± {r3(s['fold_std'])}")
    console.print(t)
    c = metrics["cohort"]
    console.print(f"cohort: {c['classes']}; with genes {c['with_genes']}, with image {c['with_image']}, "
                  f"dropped for a missing modality {c['dropped_missing_modality']}; excluded labels "
                  f"{c['excluded_labels']}")
    console.print(f"genes: {metrics['genes']}; {metrics['params']:,} parameters per model; {metrics['seconds']:.1f} s")
    for w in metrics.get("warnings", []):
        err.print(w, style="bold red", soft_wrap=True, highlight=False, markup=False)
    for modality, chk in metrics.get("modality_check", {}).items():
        colour = "green" if chk["informative"] else "red"
        console.print(f"modality check, {modality} shuffled within test folds: {_label(metrics)} drop {chk['drop']:.3f} "
                      f"[{chk['ci95'][0]:.3f}, {chk['ci95'][1]:.3f}] -> [{colour}]{chk['verdict']}[/]")


@fusion_app.command("cv")
@guard
@_with_cv_options
def fusion_cv(
    store: Annotated[Path, typer.Argument(help="Feature store")],
    head: Annotated[str, typer.Option(help="A registered head (fusion heads lists them)")] = "cross_attn",
    out: Annotated[Optional[Path], typer.Option(help="Write metrics.json, predictions.csv, splits.csv, curves.png, "
                                                "report.html")] = None,
    quiet: Annotated[bool, typer.Option(help="One line (pooled ROC-AUC and its CI) instead of the tables")] = False,
    opts=None,  # the shared training options, filled in by _with_cv_options
) -> None:
    """Cross-validate one head: all folds at once, fold-local preprocessing, bootstrap CIs, modality check."""
    from fusion.api import cv

    writable_output(out, folder=True)
    with _steps("cross-validating", quiet) as step:
        step(head, 0, 1)
        run = cv(store, head, opts, out, on_epoch=lambda h, done, total: step(f"{h}, epochs", done, total))
    if quiet:
        s = run.metrics["summary"][_headline(run.metrics)]
        console.print(f"{head}: {_label(run.metrics)} {s['pooled']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
        for w in run.metrics.get("warnings", []):
            err.print(w, style="bold red", soft_wrap=True, highlight=False, markup=False)
        return
    _print_summary(run.metrics)
    if out:
        figure = {"survival": "km.png", "multiclass": "confusion.png"}.get(run.metrics["target"], "curves.png")
        console.print(f"wrote {out}/metrics.json, predictions.csv, splits.csv, {figure}, report.html")


@fusion_app.command("bench")
@guard
@_with_cv_options
def fusion_bench(
    store: Annotated[Path, typer.Argument(help="Feature store")],
    heads: Annotated[str, typer.Option(help="all, or a comma list")] = "all",
    out: Annotated[Optional[Path], typer.Option(help="Folder for leaderboard.csv/.md and per-head results")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar; only the leaderboard")] = False,
    opts=None,  # the shared training options, filled in by _with_cv_options
) -> None:
    """Every head on identical folds; a sorted leaderboard with CIs and paired tests against the best unimodal head.
    With --features a,b (feature sets of the same patients, e.g. two encoders): every head on each, and a table
    of heads x feature sets with the paired difference between them."""
    from fusion.api import bench

    names = "all" if heads == "all" else [h.strip() for h in heads.split(",")]
    writable_output(out, folder=True)
    if opts.features and "," in opts.features:
        _bench_feature_sets(store, names, opts, out, quiet)
        return
    with _steps("heads", quiet) as step:
        started: dict[str, str] = {}

        def on_head(h: str, done: int, total: int) -> None:
            started[h] = f"{h} ({done + 1} of {total} heads)"
            step(started[h], done, total)

        rows, runs = bench(store, names, opts, out, on_head=on_head,
                           on_epoch=lambda h, done, total: step(f"{started[h]}, epochs", done, total))
    first = next(iter(runs.values())).metrics
    survival = first["target"] == "survival"
    t = Table(title=f"leaderboard: {first['n_patients']} patients, {_what(first)}"
              + (" [SIMULATED data]" if first.get("simulated") else ""))
    second = {"survival": ("c_index_uno", "Uno's c"), "multiclass": ("balanced_accuracy", "bal. acc.")}.get(
        first["target"], ("pr_auc", "PR-AUC"))
    for col in ("head", "modalities", _label(first), second[1], *(() if survival else ("F1",)), "s", "params",
                "vs best unimodal"):
        t.add_column(col)
    key = _headline(first)
    for r in rows:
        t.add_row(r["head"], r["modalities"], f"{r[key]:.3f} [{r[key + '_lo']:.3f}, {r[key + '_hi']:.3f}]",
                  f"{r[second[0]]:.3f}", *(() if survival else (f"{r['f1']:.3f}",)), f"{r['seconds']:.1f}",
                  f"{r['params']:,}", r["vs_best_unimodal"])
    console.print(t)
    console.print(f"genes: {first['genes']}")
    for h, run in runs.items():
        for chk in run.metrics.get("modality_check", {}).values():
            if not chk["informative"]:
                console.print(f"[red]{h}: {chk['verdict']}[/]")
    if out:
        console.print(f"wrote {out}/leaderboard.csv, leaderboard.md and one folder per head")


def _bench_feature_sets(store: Path, names, opts, out: Path | None, quiet: bool) -> None:
    from fusion.feature_sets import bench_feature_sets, table_cells

    feature_sets = [f.strip() for f in opts.features.split(",")]
    with _steps("heads", quiet) as step:
        rows, runs = bench_feature_sets(store, feature_sets, names, opts, out,
                                        on_head=lambda h, done, total: step(h, done, total))
    t = Table(title=f"heads x feature sets: ROC-AUC, and the paired difference from {feature_sets[0]}")
    t.add_column("head")
    for fs in feature_sets:
        t.add_column(fs)
    for h, cells in table_cells(rows, feature_sets, with_ci=False):
        t.add_row(h, *cells)
    console.print(t)
    if out:
        console.print(f"wrote {out}/features.csv, features.md, features.png and one bench folder per feature set")


@fusion_app.command("fit")
@guard
@_with_cv_options
def fusion_fit(
    store: Annotated[Path, typer.Argument(help="Feature store with the training patients")],
    out: Annotated[Path, typer.Option(help="Model folder to write (model.json, preprocess.npz, weights.pt)")],
    head: Annotated[str, typer.Option(help="A registered torch head (fusion heads lists them)")] = "cross_attn",
    quiet: Annotated[bool, typer.Option(help="No progress display; only errors and warnings")] = False,
    opts=None,  # the shared training options, filled in by _with_cv_options
) -> None:
    """Train one head on every labelled patient (inner validation for early stopping, calibration, threshold)."""
    from fusion.model import fit

    writable_output(out, folder=True)
    with _steps("training", quiet) as step:
        step(head, 0, 1)
        res = fit(store, head, opts, out)
    m = res["model"]
    if not quiet:
        decision = ("argmax" if m["threshold"] is None else f"risk-group cut {m['threshold']:.3f}"
                    if m.get("target") == "survival" else f"threshold {m['threshold']:.3f}")
        console.print(f"model {m['head']} trained on {len(res['patient_ids'])} patients -> {out} ({decision}, "
                      f"calibration {m['calibrator']['method']})")


@fusion_app.command("predict")
@guard
def fusion_predict(
    model: Annotated[Path, typer.Argument(help="A model folder, or a folder of fold models (cv --save-models)")],
    store: Annotated[Path, typer.Argument(help="Store with the patients to score")],
    out: Annotated[Path, typer.Option(help="CSV to write: patient_id, p_positive (p_<class> per class for more "
                                            "than two; risk for survival), predicted (risk_group)")],
    patients: Annotated[Optional[Path], typer.Option(help="File of patient ids to score (one per line, or a CSV "
                                                     "with a patient_id column); default: all who have the inputs")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature set (optional when the store has one)")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Expression table (optional when the store has one)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display; only errors and warnings")] = False,
) -> None:
    """Score new patients with a trained model (or the mean of a fold ensemble); refuses other feature sets."""
    from fusion.model import predict, read_patient_list, write_predictions

    ids = read_patient_list(patients) if patients else None
    writable_output(out, folder=False)
    with warnings.catch_warnings(record=True) as caught, _steps("scoring", quiet) as step:
        warnings.simplefilter("always")
        step(str(model), 0, 1)
        pids, p, models = predict(model, store, ids, features, genes)
    for w in caught:
        err.print(f"warning: {w.message}", soft_wrap=True, highlight=False, markup=False)
    write_predictions(out, pids, p, models)
    if not quiet:
        console.print(f"{len(pids)} patients scored with {len(models)} model(s) of {models[0].meta['head']} -> {out}")


@fusion_app.command("explain")
@guard
def fusion_explain(
    model: Annotated[Path, typer.Argument(help="A model folder (fusion fit), or a folder of fold models")],
    store: Annotated[Path, typer.Argument(help="Store with the slides' features")],
    out: Annotated[Path, typer.Option(help="PNG for one --slide, or a folder for --all (a CSV of scores beside each)")],
    slide: Annotated[Optional[str], typer.Option(help="Slide id to draw")] = None,
    all_slides: Annotated[bool, typer.Option("--all", help="Draw every slide of the feature set")] = False,
    features: Annotated[Optional[str], typer.Option(help="Feature set (optional when the store has one)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display; only errors and warnings")] = False,
) -> None:
    """Attention heatmaps: the image branch's attention carried back to every patch, over the slide thumbnail."""
    from fusion.explain import explain

    if (slide is None) == (not all_slides):
        raise ValueError("give one of --slide ID or --all")
    writable_output(out, folder=all_slides)
    with _steps("drawing", quiet) as step:
        step(slide or "every slide", 0, 1)
        res = explain(model, store, slide, out, features)
    if not quiet:
        console.print(f"{len(res)} heatmap(s) with per-patch scores (CSV beside each) -> {out}")


@fusion_app.command("heads")
def fusion_heads() -> None:
    """List the registered heads."""
    from fusion.heads import HEADS

    t = Table(title="heads (class labels: --labels, two classes or more; survival: --survival)")
    for col in ("name", "inputs", "target", "what it is"):
        t.add_column(col)
    for spec in HEADS.values():
        t.add_row(spec.name, "+".join(sorted(spec.modalities)), ", ".join(sorted(spec.targets)), spec.summary)
    console.print(t)


@fusion_app.command("simulate")
@guard
def fusion_simulate(
    out: Annotated[Path, typer.Option(help="Store to write (created or extended)")],
    labels_out: Annotated[Optional[Path], typer.Option(help="Also write the labels as CSV")] = None,
    patients: Annotated[int, typer.Option(help="Patients in the cohort")] = 200,
    patches: Annotated[int, typer.Option(help="Patch embeddings per patient's bag")] = 64,
    dim: Annotated[int, typer.Option(help="Dimension of each patch embedding")] = 64,
    genes: Annotated[int, typer.Option(help="Genes in the expression table")] = 100,
    gene_signal: Annotated[float, typer.Option(help="Shift of the informative genes per unit of the gene factor")] = 1.0,
    image_signal: Annotated[float, typer.Option(help="Shift of the informative patches per unit of the image factor")] = 1.0,
    image_share: Annotated[float, typer.Option(help="Share of the label's signal in the image (0: genes only, "
                                                   "1: image only)")] = 0.5,
    informative_fraction: Annotated[float, typer.Option(help="Share of a bag's patches that carry the signal")] = 0.2,
    image_pattern: Annotated[str, typer.Option(help="shift (the bag mean moves) | minority (only single patches tell)")] = "shift",
    seed: Annotated[int, typer.Option(help="Seed of the simulation")] = 0,
    patients_from: Annotated[Optional[Path], typer.Option(help="Simulate image bags for this store's labelled patients")] = None,
    null: Annotated[Optional[str], typer.Option(help="image | genes: permute that modality across patients (no signal)")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a feature set or tables of the same name in --out")] = False,
    patches_from: Annotated[Optional[Path], typer.Option(help="Draw each bag from this store's real patch features "
                                                         "(a model trained on it then applies to those slides)")] = None,
    target: Annotated[str, typer.Option(help="binary (labels) | survival (labels, and a survival table 'survival' "
                                             "whose hazard carries the same signal)")] = "binary",
) -> None:
    """Write a SIMULATED cohort with planted signal (documented in fusion/simulate.py)."""
    if target not in ("binary", "survival"):
        raise typer.BadParameter(f"--target must be binary or survival, got {target!r}")
    from fusion.simulate import simulate_cohort

    ids = labels = None
    if patients_from is not None:
        with featstore.open(patients_from) as src:
            lab = src.read_labels()
            ids, labels = lab.patient_ids, dict(zip(lab.patient_ids, lab.labels))
    simulate_cohort(out, patients=patients, patches=patches, dim=dim, genes=genes, gene_signal=gene_signal,
                    image_signal=image_signal, split=image_share, informative_fraction=informative_fraction,
                    image_pattern=image_pattern, null=null, seed=seed, overwrite=overwrite,
                    patient_ids=ids, labels=labels, labels_out=labels_out, patches_from=patches_from,
                    survival=target == "survival").close()
    console.print(f"[yellow]SIMULATED[/] cohort written to {out}" + (f" (labels: {labels_out})" if labels_out else ""))
