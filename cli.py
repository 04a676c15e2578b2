"""Command lines ``featstore`` and ``fusion``: parse, call the Python API, print with rich."""

from __future__ import annotations

import contextlib
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import featstore
from featstore.errors import FeatstoreError

console = Console()
err = Console(stderr=True)

featstore_app = typer.Typer(help="Frozen patch embeddings of whole-slide images, gene tables and labels in one store.",
                            no_args_is_help=True, pretty_exceptions_enable=False)
fusion_app = typer.Typer(help="Leakage-free cross-validation of gene, image and fusion heads on a feature store.",
                         no_args_is_help=True, pretty_exceptions_enable=False)

StoreArg = Annotated[Path, typer.Option("--store", "-s", help="Store path: *.zarr (Zarr v3) or *.h5 (HDF5)")]


def _fail(message: str, code: int = 1) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(code)


# Set by the root callback of either app for this one command-line run.
_RUN = {"debug": False}


def _guard(fn):
    """Turn a user's error (bad input, missing store or weights) into one red line and exit code 1; ``--debug``
    (before the command) re-raises it with its traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FeatstoreError, FileNotFoundError, KeyError, ValueError) as exc:
            if _RUN["debug"]:
                raise
            # KeyError's str() adds quotes of its own; every other message is printed as it is.
            _fail(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
    return wrapper


def _root_options(debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an error")] = False,
                  ) -> None:
    _RUN["debug"] = debug


featstore_app.callback()(_root_options)
fusion_app.callback()(_root_options)


def _notes(notes: list[str]) -> None:
    for n in notes:
        console.print(f"  [dim]•[/] {n}")


# ------------------------------------------------------------------------------------------------
# featstore


@featstore_app.command("import-genes")
@_guard
def import_genes(
    table: Annotated[Path, typer.Argument(help="CSV or TSV, optionally .gz")],
    store: StoreArg,
    name: Annotated[str, typer.Option(help="Table name in the store")] = "expression",
    samples_as: Annotated[str, typer.Option(help="auto | rows | columns")] = "auto",
    transform: Annotated[str, typer.Option(help="none | log2p1 (log2(x+1), e.g. for RSEM counts)")] = "none",
    all_samples: Annotated[bool, typer.Option(help="Keep every sample (normals too), not one tumour sample per patient")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a table of the same name")] = False,
) -> None:
    """Import a gene-expression table (samples as rows or columns; TCGA barcodes understood)."""
    from featstore.tables import read_expression

    # Read and check the table first: a bad or missing file never creates the store.
    t, notes = read_expression(table, samples_as=samples_as, transform=transform, primary_only=not all_samples)
    with featstore.open(store, "a") as s:
        s.write_expression(name, t, overwrite=overwrite)
    console.print(f"[green]imported[/] {table.name} -> {store}:{name}: {len(t.sample_ids)} samples x {len(t.gene_ids)} genes, "
                  f"{len(set(t.patient_ids))} patients")
    _notes(notes)


@featstore_app.command("import-labels")
@_guard
def import_labels(
    table: Annotated[Path, typer.Argument(help="CSV/TSV with a patient (or sample barcode) column and a label column")],
    store: StoreArg,
    name: Annotated[str, typer.Option(help="Table name in the store")] = "labels",
    id_column: Annotated[str, typer.Option(help="Column with patient ids or TCGA sample barcodes")] = "patient_id",
    label_column: Annotated[str, typer.Option(help="Column with the labels (PAM50 calls in any spelling)")] = "label",
    label_map: Annotated[str, typer.Option(help="pam50-binary (Luminal vs Basal_Her2) | none (labels as they are; "
                                                "two classes)")] = "pam50-binary",
    overwrite: Annotated[bool, typer.Option(help="Replace a table of the same name")] = False,
) -> None:
    """Import labels (PAM50 calls in either spelling; pam50-binary: Luminal vs Basal_Her2, Normal excluded)."""
    from featstore.tables import read_labels

    t, notes = read_labels(table, id_column=id_column, label_column=label_column,
                           label_map=None if label_map == "none" else label_map)
    with featstore.open(store, "a") as s:
        s.write_labels(name, t, overwrite=overwrite)
    console.print(f"[green]imported[/] {table.name} -> {store}:{name}: {len(t.patient_ids)} patients")
    _notes(notes)


@featstore_app.command("import-features")
@_guard
def import_features(
    paths: Annotated[list[Path], typer.Argument(help="CLAM/TRIDENT per-slide .h5 files or folders of them")],
    store: StoreArg,
    name: Annotated[str, typer.Option(help="Feature set name")],
    encoder: Annotated[str, typer.Option(help="Encoder that made the features (recorded)")] = "unknown",
) -> None:
    """Import per-slide feature files in the CLAM/TRIDENT layout (datasets 'features' and 'coords')."""
    from featstore.interop import import_features as api

    existed = store.exists()
    try:
        with featstore.open(store, "a") as s:
            ids = api(s, paths, name, encoder=encoder)
    except Exception:
        if not existed:  # every file is checked before anything is written: the new store is still empty
            featstore.store.remove_store(store)
        raise
    console.print(f"[green]imported[/] {len(ids)} slides into feature set {name!r}")


@featstore_app.command("export")
@_guard
def export(
    store: Annotated[Path, typer.Argument(help="Store path")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    name: Annotated[Optional[str], typer.Option(help="Feature set (optional when there is one)")] = None,
    format: Annotated[str, typer.Option(help="clam")] = "clam",
) -> None:
    """Export a feature set as CLAM's h5_files/ and pt_files/."""
    from featstore.interop import export_clam

    if format != "clam":
        _fail(f"unknown export format {format!r}; supported: clam")
    with featstore.open(store) as s:
        files = export_clam(s, name, out)
    console.print(f"[green]exported[/] {len(files)} slides to {out}")


@featstore_app.command("ls")
@_guard
def ls(
    store: Annotated[Path, typer.Argument(help="Store path")],
    failed: Annotated[bool, typer.Option(help="List only the failed slides, with their reasons")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Everything as JSON: committed and failed slide ids too")] = False,
) -> None:
    """List feature sets with their committed slide ids (and failures), tables and views."""
    with featstore.open(store) as s:
        summary = s.summary()
        committed = {fs: s.slides(fs) for fs in summary["feature_sets"]}
        failures = {fs: s.failures(fs) for fs in summary["feature_sets"]}
    if as_json:
        for fs, info in summary["feature_sets"].items():
            info["slide_ids"], info["failures"] = committed[fs], failures[fs]
        console.print_json(json.dumps(summary, default=str))
        return
    if failed:
        for fs, recs in failures.items():
            for sid, rec in recs.items():
                console.print(f"{fs}\t{sid}\t{rec.get('reason', '?')}", soft_wrap=True, highlight=False, markup=False)
        return
    t = Table(title=f"{store} ({summary['backend']})")
    for col in ("kind", "name", "contents", "status"):
        t.add_column(col)
    for fs, info in summary["feature_sets"].items():
        t.add_row("features", fs, f"{info['slides']} slides, {info['patches']} patches x {info['dim']} "
                  f"({info['encoder']})", "ok" if not info["failed"] else f"[red]{info['failed']} failed[/]")
        for sid in committed[fs]:
            t.add_row("", f"  {sid}", "", "committed")
        for sid, rec in failures[fs].items():
            t.add_row("", f"  {sid}", "", f"[red]failed:[/] {rec.get('reason', '?')}")
    for name, info in summary["tables"].items():
        t.add_row(info["kind"], name, " x ".join(map(str, info["shape"] or [])), "ok")
    for v in summary["views"]:
        t.add_row("view", v, "", "cached")
    console.print(t)


@featstore_app.command("info")
@_guard
def info(
    store: Annotated[Path, typer.Argument(help="Store path")],
    slide: Annotated[Optional[str], typer.Option(help="Show one slide's provenance")] = None,
    name: Annotated[Optional[str], typer.Option(help="Feature set")] = None,
) -> None:
    """Feature-set configs and table provenance, or one slide's provenance."""
    with featstore.open(store) as s:
        if slide is not None:
            attrs = s.slide_attrs(name, slide)
            t = Table(title=f"slide {slide}")
            t.add_column("field")
            t.add_column("value")
            t.add_row("patient_id", str(attrs.get("patient_id")))
            t.add_row("n_patches", str(attrs.get("n_patches")))
            for k, v in attrs.get("provenance", {}).items():
                t.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
            console.print(t)
            return
        for fs in s.feature_sets():
            t = Table(title=f"feature set {fs}")
            t.add_column("config")
            t.add_column("value")
            for k, v in s.feature_set_info(fs).get("config", {}).items():
                t.add_row(k, str(v))
            console.print(t)
        for tb in s.tables():
            meta = s.table_info(tb)
            console.print(f"[bold]table {tb}[/] ({meta.get('kind')}, {meta.get('shape')}): "
                          f"{json.dumps(meta.get('provenance', {}), default=str)}")


@featstore_app.command("validate")
@_guard
def validate(
    store: Annotated[Path, typer.Argument(help="Store path")],
    deep: Annotated[bool, typer.Option(help="Also re-read every array and compare it with its commit-time digest")] = False,
) -> None:
    """Check every committed slide, table and view (every chunk on disk); exit code 1 with one line per problem."""
    with featstore.open(store) as s:
        problems = s.validate(deep=deep)
    if problems:
        for p in problems:
            err.print(f"✗ {p}", soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(1)
    console.print(f"[green]✓[/] {store}: every committed slide and table is sound")


def _committed_slides(store: Path, feature_set: str) -> str:
    try:
        with featstore.open(store) as s:
            return str(len(s.slides(feature_set)))
    except Exception:  # nothing committed yet, or the store is busy: say so rather than fail the message
        return "no"


@featstore_app.command("extract")
@_guard
def extract(
    slides: Annotated[list[str], typer.Option("--slides", help="Files, folders, globs or a CSV manifest (repeatable)")],
    out: Annotated[Path, typer.Option("--out", help="Store (created if absent)")],
    tiles_as_slide: Annotated[bool, typer.Option(help="Each --slides folder is ONE slide made of its image tiles "
                                                      "(left to right in name order); without it a folder holds "
                                                      "slides")] = False,
    encoder: Annotated[str, typer.Option(help="resnet50 (2048-d) | resnet50-trunc (1024-d)")] = "resnet50",
    weights: Annotated[str, typer.Option(help="imagenet | random | PATH to a state dict")] = "imagenet",
    seed: Annotated[int, typer.Option(help="Seed for --weights random")] = 0,
    name: Annotated[Optional[str], typer.Option(help="Feature set name (default: the encoder)")] = None,
    mpp: Annotated[float, typer.Option("--mpp", help="Target µm per pixel")] = 0.5,
    patch_size: Annotated[int, typer.Option(help="Patch side at the target mpp")] = 224,
    min_tissue: Annotated[float, typer.Option(help="Skip patches with less tissue than this")] = 0.25,
    mpp_default: Annotated[Optional[float], typer.Option(help="mpp for slides whose metadata has none")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16. auto: bf16 on a GPU that has it; on a CPU "
                                                "with bf16 units (AMX, AVX512-BF16) bf16 when a timing at start finds "
                                                "it faster, else fp32. bf16 features differ slightly from fp32 ones "
                                                "(cosine per patch in benchmarks/RESULTS.md); nothing is refused")] = "auto",
    decoder: Annotated[str, typer.Option(help="auto (cpu, also on a GPU: it measured faster end to end on an H200, see "
                                              "benchmarks/RESULTS.md) | cpu (SVS/tiled TIFF tiles decoded by "
                                              "tifffile in the reader workers, checked against OpenSlide) | gpu (JPEG "
                                              "tiles decoded in batches on the device, checked against the CPU "
                                              "decoder per slide) | openslide (every pixel through OpenSlide)")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Patches per forward pass")] = 64,
    max_patches: Annotated[int, typer.Option(help="Refuse a slide whose patch grid (before the tissue mask) is "
                                                  "larger: a declared size no real slide has")] = 2_000_000,
    num_workers: Annotated[Optional[int], typer.Option(help="Reader processes (default: cores - 1, at most 12)")] = None,
    shard: Annotated[Optional[str], typer.Option(help="I/N: only this deterministic shard of the slides")] = None,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address")] = None,
    dask_workers: Annotated[Optional[int], typer.Option(help="Start a local Dask cluster of N workers")] = None,
    devices: Annotated[Optional[str], typer.Option(help="all | 0,1,...: one worker process per GPU (Dask workers "
                                                   "pinned with CUDA_VISIBLE_DEVICES), sharing the slides; .zarr "
                                                   "stores")] = None,
    overwrite: Annotated[bool, typer.Option(help="Redo slides already in the feature set")] = False,
    strict: Annotated[bool, typer.Option(help="Stop at the first failed slide")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bar or per-slide lines")] = False,
) -> None:
    """Extract frozen patch embeddings; resumable; exit code 2 when some slides failed."""
    from featstore import extract as ex

    specs = ex.find_slides(slides, tiles_as_slide=tiles_as_slide)
    if shard:
        try:
            i, n = (int(v) for v in shard.split("/"))
        except ValueError:
            _fail(f"--shard must look like I/N (e.g. 0/4), got {shard!r}")
        specs = ex.shard(specs, i, n)
    cfg = ex.ExtractConfig(encoder=encoder, weights=weights, seed=seed, target_mpp=mpp, patch_size=patch_size,
                           min_tissue=min_tissue, precision=precision, decoder=decoder, max_patches=max_patches)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console, disable=quiet)
    task = progress.add_task("slides", total=len(specs), rate="")
    # Patches of the slides planned so far: a run of one or a few big slides shows progress within them.
    patch_task = progress.add_task("patches", total=0, rate="")
    counters = {"patches": 0, "t0": None}
    unread: dict[str, int] = {}  # patches of each started slide not read yet

    def on_event(e: dict) -> None:
        import time

        if not progress.live.is_started:  # started by the first event, so an error before any work prints alone
            progress.start()
        kind = e["event"]
        if counters["t0"] is None:
            counters["t0"] = time.perf_counter()
        if kind == "slide_started":
            unread[e["slide_id"]] = e["patches"]
            progress.update(patch_task, total=progress.tasks[patch_task].total + e["patches"])
        elif kind == "progress":
            counters["patches"] += e["patches"]
            if e["slide_id"] in unread:
                unread[e["slide_id"]] -= e["patches"]
            rate = counters["patches"] / max(time.perf_counter() - counters["t0"], 1e-9)
            progress.update(task, rate=f"{rate:,.0f} patches/s")
            progress.advance(patch_task, e["patches"])
        if kind == "slide_failed" and e["slide_id"] in unread:  # its unread patches will never come
            progress.update(patch_task, total=progress.tasks[patch_task].total - unread.pop(e["slide_id"]))
        if kind in ("slide_done", "slide_failed", "slide_skipped"):
            progress.advance(task)
            if not quiet:
                if kind == "slide_done":
                    progress.console.print(f"[green]✓[/] {e['slide_id']}: {e['patches']} patches in {e['seconds']} s")
                elif kind == "slide_failed":
                    progress.console.print(f"[red]✗[/] {e['slide_id']}: {e['reason']}")
                else:
                    progress.console.print(f"[dim]- {e['slide_id']}: skipped ({e['reason']})[/]")

    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            report = ex.extract(specs, out, cfg, name=name, device=device, batch_size=batch_size,
                                num_workers=num_workers, mpp_default=mpp_default, overwrite=overwrite, strict=strict,
                                on_event=on_event, scheduler=scheduler, dask_workers=dask_workers,
                                devices=devices)
    except KeyboardInterrupt:
        if progress.live.is_started:
            progress.stop()
        err.print(f"interrupted: {_committed_slides(out, name or encoder)} slides are committed in {out} (a slide "
                  "being written is not); rerun the same command to resume, committed slides are skipped",
                  soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(130) from None
    finally:
        if progress.live.is_started:
            progress.stop()
    console.print(f"feature set [bold]{report.feature_set}[/] in {out}: {len(report.done)} extracted, "
                  f"{len(report.skipped)} skipped, {len(report.failed)} failed, {report.patches} patches "
                  f"in {report.seconds:.1f} s")
    raise typer.Exit(report.exit_code)


# ------------------------------------------------------------------------------------------------
# fusion


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


def _print_summary(metrics: dict) -> None:
    t = Table(title=f"{metrics['head']}: {metrics['n_patients']} patients, positive class {metrics['positive_class']}"
              + (" [SIMULATED data]" if metrics.get("simulated") else ""))
    for col in ("metric", "pooled out-of-fold", "95% CI (patient bootstrap)", "fold mean ± sd"):
        t.add_column(col)

    def r3(v) -> str:
        return "nan" if v is None else f"{v:.3f}"

    for m, v in metrics["summary"].items():
        t.add_row(m, r3(v["pooled"]), f"[{r3(v['ci95'][0])}, {r3(v['ci95'][1])}]",
                  f"{r3(v['fold_mean'])} ± {r3(v['fold_std'])}")
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
        console.print(f"modality check, {modality} shuffled within test folds: ROC-AUC drop {chk['roc_auc_drop']:.3f} "
                      f"[{chk['ci95'][0]:.3f}, {chk['ci95'][1]:.3f}] -> [{colour}]{chk['verdict']}[/]")


@fusion_app.command("cv")
@_guard
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

    with _steps("cross-validating", quiet) as step:
        step(head, 0, 1)
        run = cv(store, head, opts, out)
    if quiet:
        s = run.metrics["summary"]["roc_auc"]
        console.print(f"{head}: ROC-AUC {s['pooled']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]")
        for w in run.metrics.get("warnings", []):
            err.print(w, style="bold red", soft_wrap=True, highlight=False, markup=False)
        return
    _print_summary(run.metrics)
    if out:
        console.print(f"wrote {out}/metrics.json, predictions.csv, splits.csv, curves.png, report.html")


@fusion_app.command("bench")
@_guard
@_with_cv_options
def fusion_bench(
    store: Annotated[Path, typer.Argument(help="Feature store")],
    heads: Annotated[str, typer.Option(help="all, or a comma list")] = "all",
    out: Annotated[Optional[Path], typer.Option(help="Folder for leaderboard.csv/.md and per-head results")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bar; only the leaderboard")] = False,
    opts=None,  # the shared training options, filled in by _with_cv_options
) -> None:
    """Every head on identical folds; a sorted leaderboard with CIs and paired tests against the best unimodal head."""
    from fusion.api import bench

    names = "all" if heads == "all" else [h.strip() for h in heads.split(",")]
    with _steps("heads", quiet) as step:
        rows, runs = bench(store, names, opts, out, on_head=step)
    first = next(iter(runs.values())).metrics
    t = Table(title=f"leaderboard: {first['n_patients']} patients, positive class {first['positive_class']}"
              + (" [SIMULATED data]" if first.get("simulated") else ""))
    for col in ("head", "modalities", "ROC-AUC", "PR-AUC", "F1", "s", "params", "vs best unimodal"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["head"], r["modalities"], f"{r['roc_auc']:.3f} [{r['roc_auc_lo']:.3f}, {r['roc_auc_hi']:.3f}]",
                  f"{r['pr_auc']:.3f}", f"{r['f1']:.3f}", f"{r['seconds']:.1f}", f"{r['params']:,}",
                  r["vs_best_unimodal"])
    console.print(t)
    console.print(f"genes: {first['genes']}")
    for h, run in runs.items():
        for chk in run.metrics.get("modality_check", {}).values():
            if not chk["informative"]:
                console.print(f"[red]{h}: {chk['verdict']}[/]")
    if out:
        console.print(f"wrote {out}/leaderboard.csv, leaderboard.md and one folder per head")


@fusion_app.command("fit")
@_guard
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

    with _steps("training", quiet) as step:
        step(head, 0, 1)
        res = fit(store, head, opts, out)
    m = res["model"]
    if not quiet:
        console.print(f"model {m['head']} trained on {len(res['patient_ids'])} patients -> {out} (threshold "
                      f"{m['threshold']:.3f}, calibration {m['calibrator']['method']})")


@fusion_app.command("predict")
@_guard
def fusion_predict(
    model: Annotated[Path, typer.Argument(help="A model folder, or a folder of fold models (cv --save-models)")],
    store: Annotated[Path, typer.Argument(help="Store with the patients to score")],
    out: Annotated[Path, typer.Option(help="CSV to write: patient_id, p_positive, predicted")],
    patients: Annotated[Optional[Path], typer.Option(help="File of patient ids to score (one per line, or a CSV "
                                                     "with a patient_id column); default: all who have the inputs")] = None,
    features: Annotated[Optional[str], typer.Option(help="Feature set (optional when the store has one)")] = None,
    genes: Annotated[Optional[str], typer.Option(help="Expression table (optional when the store has one)")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress display; only errors and warnings")] = False,
) -> None:
    """Score new patients with a trained model (or the mean of a fold ensemble); refuses other feature sets."""
    from fusion.model import predict, read_patient_list, write_predictions

    ids = read_patient_list(patients) if patients else None
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
@_guard
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
    with _steps("drawing", quiet) as step:
        step(slide or "every slide", 0, 1)
        res = explain(model, store, slide, out, features)
    if not quiet:
        console.print(f"{len(res)} heatmap(s) with per-patch scores (CSV beside each) -> {out}")


@fusion_app.command("heads")
def fusion_heads() -> None:
    """List the registered heads."""
    from fusion.heads import HEADS

    t = Table(title="heads")
    for col in ("name", "inputs", "what it is"):
        t.add_column(col)
    for spec in HEADS.values():
        t.add_row(spec.name, "+".join(sorted(spec.modalities)), spec.summary)
    console.print(t)


@fusion_app.command("simulate")
@_guard
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
) -> None:
    """Write a SIMULATED cohort with planted signal (documented in fusion/simulate.py)."""
    from fusion.simulate import simulate_cohort

    ids = labels = None
    if patients_from is not None:
        with featstore.open(patients_from) as src:
            lab = src.read_labels()
            ids, labels = lab.patient_ids, dict(zip(lab.patient_ids, lab.labels))
    simulate_cohort(out, patients=patients, patches=patches, dim=dim, genes=genes, gene_signal=gene_signal,
                    image_signal=image_signal, split=image_share, informative_fraction=informative_fraction,
                    image_pattern=image_pattern, null=null, seed=seed, overwrite=overwrite,
                    patient_ids=ids, labels=labels, labels_out=labels_out, patches_from=patches_from).close()
    console.print(f"[yellow]SIMULATED[/] cohort written to {out}" + (f" (labels: {labels_out})" if labels_out else ""))


def main_featstore() -> None:  # pragma: no cover - console-script entry
    featstore_app()


def main_fusion() -> None:  # pragma: no cover - console-script entry
    fusion_app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(featstore_app())
