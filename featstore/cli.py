"""The ``featstore`` command line: parse, call the Python API, print with rich."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

import featstore
from featstore.cli_common import StoreArg, console, err, fail, guard, print_notes, root_options, writable_output
from featstore.errors import InputError

featstore_app = typer.Typer(help="Frozen patch embeddings of whole-slide images, gene tables and labels in one store.",
                            no_args_is_help=True, pretty_exceptions_enable=False)
featstore_app.callback()(root_options)


@featstore_app.command("import-genes")
@guard
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
    with featstore.writing(store) as s:
        s.write_expression(name, t, overwrite=overwrite)
    console.print(f"[green]imported[/] {table.name} -> {store}:{name}: {len(t.sample_ids)} samples x {len(t.gene_ids)} genes, "
                  f"{len(set(t.patient_ids))} patients")
    print_notes(notes)


@featstore_app.command("import-labels")
@guard
def import_labels(
    table: Annotated[Path, typer.Argument(help="CSV/TSV with a patient (or sample barcode) column and a label column")],
    store: StoreArg,
    name: Annotated[str, typer.Option(help="Table name in the store")] = "labels",
    id_column: Annotated[str, typer.Option(help="Column with patient ids or TCGA sample barcodes")] = "patient_id",
    label_column: Annotated[str, typer.Option(help="Column with the labels (PAM50 calls in any spelling)")] = "label",
    label_map: Annotated[str, typer.Option(help="pam50-binary (Luminal vs Basal_Her2) | pam50 (the five calls; "
                                                "then fusion --positive CLASS) | none (labels as they are)")]
    = "pam50-binary",
    overwrite: Annotated[bool, typer.Option(help="Replace a table of the same name")] = False,
    time_column: Annotated[Optional[str], typer.Option(
        help="Survival: the follow-up time column; several comma-separated, the first filled in per row (TCGA: "
             "days_to_death,days_to_last_followup). With --event-column it imports a survival table, not labels")] = None,
    event_column: Annotated[Optional[str], typer.Option(
        help="Survival: the event column (1/0, true/false, Dead/Alive, cBioPortal's 1:DECEASED)")] = None,
    time_unit: Annotated[str, typer.Option(help="Survival: the unit of the times, days | months | years")] = "days",
    skip_bad_times: Annotated[bool, typer.Option(help="Survival: leave out (and name) rows whose time is negative or "
                                                      "not a number, instead of stopping")] = False,
) -> None:
    """Import labels (PAM50 calls in either spelling; pam50-binary: Luminal vs Basal_Her2, Normal excluded), or
    with --time-column and --event-column a survival table (overall survival, a progression-free interval)."""
    if (time_column is None) != (event_column is None):
        raise InputError("a survival table needs both --time-column and --event-column")
    if time_column is not None:
        from featstore.survival import read_survival

        st, notes = read_survival(table, id_column=id_column, time_column=time_column, event_column=event_column,
                                  time_unit=time_unit, skip_bad_times=skip_bad_times)
        with featstore.writing(store) as s:
            s.write_survival(name, st, overwrite=overwrite)
        console.print(f"[green]imported[/] {table.name} -> {store}:{name}: survival of {len(st.patient_ids)} patients")
        print_notes(notes)
        return
    from featstore.tables import read_labels

    t, notes = read_labels(table, id_column=id_column, label_column=label_column,
                           label_map=None if label_map == "none" else label_map)
    with featstore.writing(store) as s:
        s.write_labels(name, t, overwrite=overwrite)
    console.print(f"[green]imported[/] {table.name} -> {store}:{name}: {len(t.patient_ids)} patients")
    print_notes(notes)


@featstore_app.command("encoders")
@guard
def encoders(
    as_json: Annotated[bool, typer.Option("--json", help="Every spec in full, as JSON")] = False,
) -> None:
    """List the encoders extract knows: dim, native mpp, input size, readout, and what weights each needs."""
    from featstore.encoders import ENCODERS

    specs = [ENCODERS[n].describe() for n in sorted(ENCODERS)]
    if as_json:
        console.print_json(json.dumps(specs))
        return
    t = Table(title="encoders (--encoder NAME --weights PATH; nothing is downloaded)")
    for col in ("name", "dim", "mpp", "input", "readout", "architecture", "weights"):
        t.add_column(col)
    for d in specs:
        t.add_row(d["name"], str(d["dim"]), "-" if d["native_mpp"] is None else f"{d['native_mpp']:g}",
                  f"{d['input_size']} px", d["readout"], d["architecture"], d["weights_from"])
    console.print(t)


@featstore_app.command("import-features")
@guard
def import_features(
    paths: Annotated[list[Path], typer.Argument(help="CLAM/TRIDENT per-slide .h5 files or folders of them")],
    store: StoreArg,
    name: Annotated[str, typer.Option(help="Feature set name")],
    encoder: Annotated[str, typer.Option(help="Encoder that made the features (recorded): a name from "
                                              "`featstore encoders` (TRIDENT's names; its resnet50 is our "
                                              "resnet50-trunc), so imported and extracted features compare like for "
                                              "like")] = "unknown",
    dtype: Annotated[str, typer.Option(help="Stored type of the features: float16 | float32")] = "float16",
) -> None:
    """Import per-slide feature files in the CLAM/TRIDENT layout (datasets 'features' and 'coords')."""
    from featstore.interop import read_feature_files, write_features

    if dtype not in ("float16", "float32"):
        fail(f"--dtype must be float16 or float32, got {dtype!r}")
    loaded = read_feature_files(paths, dtype)  # every file read and checked before the store is opened
    with featstore.writing(store) as s:
        ids = write_features(s, loaded, name, encoder)
    console.print(f"[green]imported[/] {len(ids)} slides into feature set {name!r}")


@featstore_app.command("export")
@guard
def export(
    store: Annotated[Path, typer.Argument(help="Store path")],
    out: Annotated[Path, typer.Option(help="Output folder")],
    name: Annotated[Optional[str], typer.Option(help="Feature set (optional when there is one)")] = None,
    format: Annotated[str, typer.Option(help="clam")] = "clam",
) -> None:
    """Export a feature set as CLAM's h5_files/ and pt_files/."""
    from featstore.interop import export_clam

    if format != "clam":
        fail(f"unknown export format {format!r}; supported: clam")
    writable_output(out, folder=True)
    with featstore.open(store) as s:
        files = export_clam(s, name, out)
    console.print(f"[green]exported[/] {len(files)} slides to {out}")


@featstore_app.command("ls")
@guard
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
@guard
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
@guard
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
@guard
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
    downscale: Annotated[str, typer.Option(help="dct (a patch read finer than --mpp, e.g. a 40x slide at 0.5 µm/px, "
                                                "comes from JPEG tiles decoded at 1/2 or 1/4 by libjpeg-turbo's "
                                                "scaled IDCT, checked per slide; else resized) | resize (decode in "
                                                "full, then antialiased bilinear)")] = "dct",
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
            fail(f"--shard must look like I/N (e.g. 0/4), got {shard!r}")
        specs = ex.shard(specs, i, n)
    cfg = ex.ExtractConfig(encoder=encoder, weights=weights, seed=seed, target_mpp=mpp, patch_size=patch_size,
                           min_tissue=min_tissue, precision=precision)
    run = ex.RunConfig(device=device, devices=devices, decoder=decoder, downscale=downscale, batch_size=batch_size,
                       num_workers=num_workers, max_patches=max_patches, scheduler=scheduler, dask_workers=dask_workers)
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
            report = ex.extract(specs, out, cfg, run, name=name, mpp_default=mpp_default, overwrite=overwrite,
                                strict=strict, on_event=on_event)
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
