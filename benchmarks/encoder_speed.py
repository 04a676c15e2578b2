"""Bare throughput of every encoder preset (random weights: none are on these machines), on this CPU or a GPU.

The model alone, as `featstore extract` runs it (PatchEmbedder: uint8 patches in, normalised on the device, the
precision `--precision auto` picks), at each preset's input size; one warm-up batch, then batches for at
least ``--seconds``. Prints a table and appends it, with the machine, to benchmarks/RESULTS.md. Usage:
    python benchmarks/encoder_speed.py [--device auto] [--batch-size 8] [--seconds 5] [--only uni_v1,lunit-vits8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from results_table import append_rows  # noqa: E402

from featstore.encoders import ENCODERS, build_encoder  # noqa: E402
from featstore.extract import PatchEmbedder, resolve_device, resolve_precision  # noqa: E402

COLUMNS = ["date", "machine", "device", "encoder", "parameters", "dim", "input", "precision", "batch",
           "patches/s", "build s"]


def measure(name: str, device: torch.device, batch: int, seconds: float, precision: str) -> tuple[float, float, str]:
    spec = ENCODERS[name]
    t0 = time.perf_counter()
    encoder = build_encoder(name, "random", 0)
    built = time.perf_counter() - t0
    precision, _ = resolve_precision(precision, device, encoder, spec.input_size)
    embed = PatchEmbedder(encoder, device, precision)
    x = torch.randint(0, 256, (batch, spec.input_size, spec.input_size, 3), dtype=torch.uint8)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    embed(x)
    sync()
    n, t0 = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t0 < seconds:
        embed(x)
        n += batch
    sync()
    return n / (time.perf_counter() - t0), built, precision


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", default=None, help="comma-separated preset names (default: all)")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    device = resolve_device(args.device)
    names = args.only.split(",") if args.only else sorted(ENCODERS)
    machine = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or platform.machine()
    cores = len(os.sched_getaffinity(0))
    rows = []
    for name in names:
        rate, built, precision = measure(name, device, args.batch_size, args.seconds, args.precision)
        spec = ENCODERS[name]
        with torch.device("meta"):
            backbone, head = spec.build()
            params = sum(p.numel() for p in head(backbone).parameters())  # what runs: a truncated ResNet's part
        row = (f"| {time.strftime('%Y-%m-%d')} | {machine}, {cores} cores | {device.type} | {name} | {params / 1e6:,.0f} M | "
               f"{spec.dim} | {spec.input_size} px | {precision} | {args.batch_size} | {rate:,.1f} | {built:.1f} |")
        print(row, flush=True)
        rows.append(row)
    append_rows("Encoder throughput (benchmarks/encoder_speed.py)",
                "The model alone with random weights, as extract runs it (PatchEmbedder), at each preset's input size.",
                COLUMNS, rows, Path(args.results))


if __name__ == "__main__":
    main()
