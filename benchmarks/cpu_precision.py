"""CPU extraction: bf16 vs fp32 and glibc's allocator kept vs default, bare model and pipeline, in one run.

Bare model: ResNet-50 (random weights), batch 32 of 224 px, channels_last, each setting in its own process
(the allocator setting is process-wide). Pipeline: `featstore extract` on a 2x2 mosaic pyramid of the real
CMU slide (JPEG tiles, 0.5 µm/px). Drift: cosine similarity per patch of bf16 against fp32 features of the
real CMU slide. Writes a section of benchmarks/RESULTS.md.

    python benchmarks/cpu_precision.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

BARE = """
import sys, time, torch
sys.path.insert(0, {root!r})
from featstore.encoders import build_encoder
from featstore.extract import PatchEmbedder
from featstore.extract.allocator import keep_freed_memory
if sys.argv[2] == "kept":
    keep_freed_memory()
e = PatchEmbedder(build_encoder("resnet50", "random"), torch.device("cpu"), sys.argv[1])
x = torch.randint(0, 256, (32, 224, 224, 3), dtype=torch.uint8)
for _ in range(2):
    e(x)
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 12:
    e(x)
    n += 32
print(n / (time.perf_counter() - t0))
"""


def bare(precision: str, allocator: str) -> float:
    env = {**os.environ, "FEATSTORE_ALLOCATOR": "kept" if allocator == "kept" else "system"}
    out = subprocess.run([sys.executable, "-c", BARE.format(root=str(ROOT)), precision, allocator], check=True,
                         capture_output=True, text=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline(slides: list, out: Path, precision: str, allocator: str) -> tuple[float, int]:
    from featstore.extract import ExtractConfig, RunConfig, extract

    os.environ["FEATSTORE_ALLOCATOR"] = "kept" if allocator == "kept" else "system"
    cfg = ExtractConfig(encoder="resnet50", weights="random", precision=precision, min_tissue=0.0)
    t0 = time.perf_counter()
    report = extract(slides, out, cfg, run=RunConfig(batch_size=32))
    return report.patches / (time.perf_counter() - t0), report.patches


def drift(tmp: Path) -> tuple[float, float]:
    import featstore
    from featstore.extract import ExtractConfig, RunConfig, extract, find_slides

    cmu = ROOT / "data" / "wsi_cmu1_small_region" / "CMU-1-Small-Region.svs"
    feats = {}
    for precision in ("fp32", "bf16"):
        cfg = ExtractConfig(encoder="resnet50", weights="random", precision=precision, dtype="float32")
        extract(find_slides([cmu]), tmp / f"drift-{precision}.zarr", cfg, run=RunConfig(batch_size=32))
        with featstore.open(tmp / f"drift-{precision}.zarr") as s:
            feats[precision] = s.read_slide(None, "CMU-1-Small-Region").features.astype(np.float64)
    a, b = feats["fp32"], feats["bf16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(cos.min()), float(np.median(cos))


def main() -> None:
    from extract_throughput import make_pyramid
    from results_table import append_rows

    from featstore.extract import find_slides
    from featstore.extract.embed import cpu_bf16_flags

    warnings.simplefilter("ignore")
    rows = []
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, " \
              f"bf16 units: {'+'.join(cpu_bf16_flags()) or 'none'}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_pyramid(tmp / "pyramid.tif", 2, "jpeg")
        slides = find_slides([tmp / "pyramid.tif"])
        pipeline(slides, tmp / "warm.zarr", "fp32", "kept")
        for precision, allocator in (("fp32", "system"), ("fp32", "kept"), ("bf16", "system"), ("bf16", "kept")):
            b = bare(precision, allocator)
            p, n = pipeline(slides, tmp / f"{precision}-{allocator}.zarr", precision, allocator)
            rows.append(f"| {time.strftime('%Y-%m-%d')} | {machine} | {precision} | {allocator} | {b:.1f} | {p:.1f} "
                        f"| {p / b:.2f} | {n} |")
            print(rows[-1], flush=True)
        lo, med = drift(tmp)
    note = (f"bf16 against fp32 features of the real CMU slide (ResNet-50, random weights, 224 px at 0.5 µm/px): "
            f"cosine similarity per patch min {lo:.6f}, median {med:.6f} (random weights: ImageNet weights are not "
            "on this machine).")
    print(note)
    append_rows("CPU precision and allocator (benchmarks/cpu_precision.py)", note,
                ["date", "machine", "precision", "allocator", "bare model patches/s", "pipeline patches/s",
                 "pipeline / bare", "patches"], rows, ROOT / "benchmarks" / "RESULTS.md")


if __name__ == "__main__":
    main()
