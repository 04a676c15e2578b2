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
from featstore.extract import ExtractConfig, PatchEmbedder, RunConfig, extract, find_slides, resolve_device, resolve_precision  # noqa: E402

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


def make_tcga_like(path: Path, side: int = 40_000, tile: int = 256) -> None:
    """A 40x-like slide: 0.25 µm/px, ``side`` px square, RGB-stored JPEG tiles (as Aperio writes every TCGA
    slide; until 2026-12-07 this slide had YCbCr 4:2:0 tiles, which decode faster), levels at 4x and 16x, built
    from the real CMU tissue (upsampled 2x) laid out in a grid with white margins, so the tissue mask matters.
    Written tile by tile: memory stays at one upsampled CMU block whatever ``side`` is."""
    import numpy as np
    import openslide
    import tifffile
    from PIL import Image

    with openslide.OpenSlide(str(SLIDE)) as s:
        cmu = s.read_region((0, 0), 0, s.dimensions).convert("RGB")
        mpp = float(s.properties["openslide.mpp-x"]) / 2  # upsampled 2x: 40x-like
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, f in enumerate((1, 4, 16)):
            block = np.asarray(cmu.resize((round(cmu.width * 2 / f), round(cmu.height * 2 / f)), Image.BILINEAR))
            margin = max(1, 1000 // f)
            step_x, step_y = block.shape[1] + margin, block.shape[0] + margin
            size = -(-side // f)

            def tiles(block=block, margin=margin, step_x=step_x, step_y=step_y, size=size):
                for ty in range(0, size, tile):
                    ys = np.arange(ty, ty + tile)
                    ry = ys % step_y - margin
                    in_y = (ry >= 0) & (ys < size)
                    for tx in range(0, size, tile):
                        xs = np.arange(tx, tx + tile)
                        rx = xs % step_x - margin
                        in_x = (rx >= 0) & (xs < size)
                        out = np.full((tile, tile, 3), 255, np.uint8)
                        out[np.ix_(in_y, in_x)] = block[np.ix_(ry[in_y], rx[in_x])]
                        yield out
            tif.write(tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                      photometric="rgb", subsampling=(1, 1), compressionargs={"outcolorspace": "rgb"},
                      resolution=(1e4 / mpp / f, 1e4 / mpp / f), resolutionunit="CENTIMETER",
                      subfiletype=0 if i == 0 else 1)


def reader_throughput(specs, cfg: ExtractConfig, run: RunConfig, dev: torch.device) -> tuple[float, str]:
    """The reading side alone (no model): the workers planning, reading and shipping patches, and under
    --decoder gpu the main process reading the tile bytes, decoding them on ``dev`` and cropping there. The
    ceiling the pipeline can reach when reading, not inference, is the slower half. Also returns the slides'
    ``pixels`` notes (under --decoder gpu they say whether the device decoder passed its check, with figures)."""
    from featstore.extract import PatchReader
    from featstore.extract.device_decode import DeviceSlides
    from featstore.extract.messages import Coords, Pixels, Planned

    run = run.resolved(str(dev))
    decoders, notes = DeviceSlides({i: s.path for i, s in enumerate(specs)}, dev), set()
    n, t0 = 0, time.perf_counter()
    for item in PatchReader(list(enumerate(specs)), cfg, None, 32, run.num_workers, on_device=decoders, run=run):
        if isinstance(item, Planned):
            notes.add(item.plan.info["pixels"])
        elif isinstance(item, Coords):
            n += len(decoders[item.slide].patches(item.coords))
        elif isinstance(item, Pixels):
            n += len(item.patches)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), "; ".join(sorted(notes))


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
    ap.add_argument("--input", choices=("pyramid", "copies", "tcga40x"), default="pyramid",
                    help="tcga40x: a 40,000 px square 0.25 µm/px JPEG pyramid of the CMU tissue, read at --target-mpp")
    ap.add_argument("--side", type=int, default=40_000, help="side of the tcga40x slide")
    ap.add_argument("--decoder", default="auto", help="auto | cpu | gpu | openslide")
    ap.add_argument("--inputs-dir", default=None, help="keep the built input slides here and reuse them")
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
    run = RunConfig(device=args.device, decoder=args.decoder, batch_size=args.batch_size, num_workers=args.num_workers)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "slides"
        d.mkdir()
        built = Path(args.inputs_dir) if args.inputs_dir else Path(tmp)
        built.mkdir(parents=True, exist_ok=True)
        if args.input == "pyramid":
            source = built / f"pyramid-{args.mosaic}-{args.codec}.tif"
            if not source.exists():
                make_pyramid(source, args.mosaic, args.codec)
            for i in range(args.copies):
                os.link(source, d / f"CMU-mosaic-{i:03d}.tif")
        elif args.input == "tcga40x":
            source = built / f"tcga40x-rgb-{args.side}.tif"
            if not source.exists():
                make_tcga_like(source, args.side)
            for i in range(args.copies):
                os.link(source, d / f"TCGA-like-{i:03d}.tif")
        else:
            for i in range(args.copies):
                shutil.copy(SLIDE, d / f"CMU-{i:03d}.svs")
        specs = find_slides([d])
        # Warm-up run on one slide (model load, worker start-up) kept out of the figures.
        extract(specs[:1], Path(tmp) / "warm.zarr", cfg, run)
        t0 = time.perf_counter()
        report = extract(specs, Path(tmp) / "bench.zarr", cfg, run)
        wall = time.perf_counter() - t0
        # The reading side alone: the workers' decoding, or under --decoder gpu the main process's.
        reading, pixels = reader_throughput(specs, cfg, run, dev)
        # The same readers with every pixel through OpenSlide: what direct tile decoding buys, same run.
        reading_openslide, _ = reader_throughput(specs, cfg, replace(run, decoder="openslide"), dev)
    pipeline = report.patches / wall
    embed = PatchEmbedder(build_encoder(args.encoder, "random"), dev, precision)
    bare = bare_throughput(embed, args.batch_size, cfg.patch_size, seconds=max(5.0, min(wall, 20.0)))
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else 0.0
    machine = (torch.cuda.get_device_name() if dev.type == "cuda" else platform.processor() or platform.machine())
    cores = len(os.sched_getaffinity(0))
    workers = {None: "default workers", 1: "1 worker"}.get(args.num_workers, f"{args.num_workers} workers")
    what = {"pyramid": f"{args.copies} x {args.mosaic}x{args.mosaic} mosaic pyramid ({args.codec})",
            "tcga40x": f"{args.copies} x TCGA-like 40x slide ({args.side:,} px, RGB JPEG)",
            "copies": f"{args.copies} copies of the small slide"}[args.input]
    what += f", decoder {args.decoder}" + (f" ({pixels})" if run.decoder == "gpu" else "")
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
