"""End-to-end `featstore extract` throughput vs the bare model, same machine, batch size and precision.

Volume: ``--input pyramid`` (default) builds one larger pyramid from the real CMU-1-Small-Region.svs
(OpenSlide test data): the image tiled ``--mosaic`` x ``--mosaic`` times, written as a 3-level tiled
TIFF with JPEG (default, as in SVS files) or zlib tiles and its true 0.499 µm/px, then hard-linked
``--copies`` times; ``--input copies`` uses plain copies of the small single-level slide, where
per-slide set-up dominates. Prints a table and appends the figures with the machine to
benchmarks/RESULTS.md. Usage:
    python benchmarks/extract_throughput.py [--copies 8] [--device auto] [--batch-size 128] [--encoder resnet50]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from featstore.encoders import build_encoder  # noqa: E402
from featstore.extract import ExtractConfig, PatchEmbedder, extract, find_slides, resolve_device, resolve_precision  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from results_table import append_rows  # noqa: E402

COLUMNS = ["date", "machine", "input, workers", "device", "encoder", "precision", "batch", "patches", "pipeline patches/s",
           "bare model patches/s", "ratio", "reading alone patches/s", "reading alone, OpenSlide only", "peak memory"]
SLIDE = next(p for p in (ROOT.parent / "shared" / "data" / "wsi_cmu1_small_region" / "CMU-1-Small-Region.svs",
                         ROOT / "data" / "wsi_cmu1_small_region" / "CMU-1-Small-Region.svs") if p.exists())


def make_pyramid(path: Path, mosaic: int, codec: str) -> None:
    import numpy as np
    import openslide
    import tifffile

    with openslide.OpenSlide(str(SLIDE)) as s:
        img = np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))
        mpp = float(s.properties["openslide.mpp-x"])
    big = np.tile(img, (mosaic, mosaic, 1))
    px_per_cm = 1e4 / mpp
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 4, 16)):
            tif.write(np.ascontiguousarray(big[::f, ::f]), tile=(256, 256), compression=codec, photometric="rgb",
                      resolution=(px_per_cm / f, px_per_cm / f), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1)


def reader_throughput(specs, cfg: ExtractConfig, num_workers: int | None) -> float:
    """The reading side alone (workers planning, reading and shipping patches; no model): the ceiling
    the pipeline can reach when reading, not inference, is the slower half."""
    from featstore.extract import PatchReader
    from featstore.extract.run import _default_workers

    workers = _default_workers() if num_workers is None else num_workers
    n, t0 = 0, time.perf_counter()
    for item in PatchReader(list(enumerate(specs)), cfg, None, 32, workers):
        if item[0] == "patches":
            n += len(item[3])
    return n / (time.perf_counter() - t0)


def bare_throughput(embed: PatchEmbedder, batch: int, size: int, seconds: float) -> float:
    x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if embed.device.type == "cuda":
        x = x.pin_memory()
    for _ in range(3):
        embed(x)
    sync = torch.cuda.synchronize if embed.device.type == "cuda" else (lambda: None)
    sync()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        embed(x)
        n += batch
    sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--target-mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.0)
    ap.add_argument("--input", choices=("pyramid", "copies"), default="pyramid")
    ap.add_argument("--mosaic", type=int, default=3)
    ap.add_argument("--codec", choices=("jpeg", "zlib"), default="jpeg",
                    help="tile compression of the pyramid; jpeg (as in Aperio SVS) needs imagecodecs")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    dev = resolve_device(args.device)
    # Resolved once here, so the pipeline and the bare model run in the same precision.
    precision, why = resolve_precision(args.precision, dev, build_encoder(args.encoder, "random"))
    print(f"precision {precision} ({why})")
    cfg = ExtractConfig(encoder=args.encoder, weights="random", target_mpp=args.target_mpp, precision=precision,
                        min_tissue=args.min_tissue)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "slides"
        d.mkdir()
        if args.input == "pyramid":
            source = Path(tmp) / "pyramid.tif"
            make_pyramid(source, args.mosaic, args.codec)
            for i in range(args.copies):
                os.link(source, d / f"CMU-mosaic-{i:03d}.tif")
        else:
            for i in range(args.copies):
                shutil.copy(SLIDE, d / f"CMU-{i:03d}.svs")
        specs = find_slides([d])
        # Warm-up run on one slide (model load, worker start-up) kept out of the figures.
        extract(specs[:1], Path(tmp) / "warm.zarr", cfg, device=args.device, batch_size=args.batch_size,
                num_workers=args.num_workers)
        t0 = time.perf_counter()
        report = extract(specs, Path(tmp) / "bench.zarr", cfg, device=args.device, batch_size=args.batch_size,
                         num_workers=args.num_workers)
        wall = time.perf_counter() - t0
        reading = reader_throughput(specs, cfg, args.num_workers)
        # The same readers with every pixel through OpenSlide: what direct tile decoding buys, same run.
        reading_openslide = reader_throughput(specs, replace(cfg, decoder="openslide"), args.num_workers)
    pipeline = report.patches / wall
    embed = PatchEmbedder(build_encoder(args.encoder, "random"), dev, precision)
    bare = bare_throughput(embed, args.batch_size, cfg.patch_size, seconds=max(5.0, min(wall, 20.0)))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0
    machine = (torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine())
    cores = len(os.sched_getaffinity(0))
    workers = {None: "default workers", 1: "1 worker"}.get(args.num_workers, f"{args.num_workers} workers")
    what = f"{args.copies} x {args.mosaic}x{args.mosaic} mosaic pyramid ({args.codec})" if args.input == "pyramid" else \
        f"{args.copies} copies of the small slide"
    if args.target_mpp != 0.5:
        what += f", read at {args.target_mpp} µm/px"
    row = (f"| {time.strftime('%Y-%m-%d')} | {machine}, {cores} cores | {what}, {workers} | "
           f"{dev.type} | {args.encoder} | {precision} | {args.batch_size} | {report.patches} | {pipeline:,.1f} | "
           f"{bare:,.1f} | {pipeline / bare:.2f} | {reading:,.1f} | {reading_openslide:,.1f} | "
           f"{peak_rss:,.0f} MiB RSS" + (f", {peak_gpu:,.0f} MiB GPU" if peak_gpu else "") + " |")
    print("| " + " | ".join(COLUMNS) + " |")
    print(row)
    append_rows("Extraction throughput (benchmarks/extract_throughput.py)", "", COLUMNS, [row], Path(args.results))

if __name__ == "__main__":
    main()
