"""What `--downscale dct` (JPEG tiles decoded at 1/2 by libjpeg-turbo's scaled IDCT) changes against
`--downscale resize` (full decode, then antialiased bilinear): reading speed and the features.

Two inputs, each read both ways in this process (reading alone, no model, one core: what one reader
worker does), and the 40x slide also by the reader workers (default count, 4 links of the slide):
- real: CMU-1-Small-Region.svs (real Aperio RGB JPEG tiles, 0.499 µm/px) read at 1.0 µm/px, so every patch
  is a 2x reduction of real tissue with its real high frequencies;
- tcga40x: the TCGA-like 40x slide of benchmarks/extract_throughput.py (the CMU tissue upsampled 2x to
  0.25 µm/px, RGB-stored JPEG tiles as in TCGA's SVS files, levels at 4x and 16x) read at 0.5 µm/px.

Features: ResNet-50 (random weights, seed 0: no ImageNet weights on these machines). A random network maps
every patch near one direction (raw cosines are all above 0.999), so features are centred on their mean over
the patches first; then the cosine per patch between the two methods, beside the cosine between neighbouring
patches of one method (how far apart different tissue lands: the scale to read the first against). The
real slide is small (one level): planning decodes all of it, so its tiles are cached and its speed is not
shown. Usage:
    python benchmarks/downscale.py [--side 20000] [--inputs-dir /tmp/bench40]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from extract_throughput import SLIDE, make_tcga_like  # noqa: E402
from results_table import append_rows  # noqa: E402

from featstore.encoders import build_encoder  # noqa: E402
from featstore.extract import ExtractConfig, PatchEmbedder, RunConfig  # noqa: E402
from featstore.extract.config import SlideSpec  # noqa: E402
from featstore.extract.plan import plan_slide, read_patch  # noqa: E402
from featstore.slides import open_slide  # noqa: E402

COLUMNS = ["date", "machine", "input", "patches", "resize patches/s", "dct patches/s", "speed-up",
           "reader workers: resize patches/s", "dct patches/s", "speed-up",
           "centred cosine dct vs resize: median", "1st percentile", "min", "neighbours' centred cosine: median", "dct note"]


def read_all(path: Path, cfg: ExtractConfig, run: RunConfig, limit: int) -> tuple[np.ndarray, float, str]:
    """The slide's first ``limit`` tissue patches, patches/s reading them (after planning), the method note."""
    with open_slide(path) as reader:
        plan = plan_slide(reader, cfg, SlideSpec(str(path), path.stem, path.stem), None, run)
        coords = plan.coords[:limit]
        t0 = time.perf_counter()
        patches = np.stack([read_patch(reader, plan.geometry, x, y) for x, y in coords])
        rate = len(coords) / (time.perf_counter() - t0)
    return patches, rate, plan.info["downscale"]


def pool_reading(path: Path, cfg: ExtractConfig, run: RunConfig, copies: int) -> float:
    """patches/s of the reader workers (default count) reading ``copies`` links of the whole slide, reading
    alone (no model); several copies, so the workers' start-up is not most of the time."""
    from extract_throughput import reader_throughput

    from featstore.extract import find_slides

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(copies):
            (Path(tmp) / f"copy-{i}{path.suffix}").hardlink_to(path)
        return reader_throughput(find_slides([tmp]), cfg, run, torch.device("cpu"))[0]


def compare(path: Path, mpp: float, size: int, limit: int, embed: PatchEmbedder) -> dict:
    cfg = ExtractConfig(target_mpp=mpp, patch_size=size, min_tissue=0.25)
    runs = {}
    for method in ("resize", "dct", "resize", "dct"):  # twice each, interleaved: the second of each counts
        runs[method] = read_all(path, cfg, RunConfig(downscale=method), limit)
    feats = {}
    for method, (patches, _, _) in runs.items():
        x = torch.from_numpy(patches)
        feats[method] = torch.cat([embed(x[i:i + 64]) for i in range(0, len(x), 64)]).float()
    centre = torch.cat(list(feats.values())).mean(0)
    dct, resize = feats["dct"] - centre, feats["resize"] - centre
    cos = torch.nn.functional.cosine_similarity(dct, resize).numpy()
    neighbours = torch.nn.functional.cosine_similarity(resize[1:], resize[:-1]).numpy()
    pool = {m: pool_reading(path, cfg, RunConfig(downscale=m), 4) for m in ("resize", "dct", "resize", "dct")}
    return {"patches": len(cos), "resize": runs["resize"][1], "dct": runs["dct"][1], "pool": pool, "cos": cos,
            "neighbours": neighbours, "note": runs["dct"][2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=20_000, help="side of the TCGA-like 40x slide")
    ap.add_argument("--limit", type=int, default=1500, help="patches per input")
    ap.add_argument("--inputs-dir", default=None, help="keep the built 40x slide here and reuse it")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)  # in-process reading is one reader worker's core
    embed = PatchEmbedder(build_encoder("resnet50", "random", 0), torch.device("cpu"), "fp32")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        built = Path(args.inputs_dir or tmp)
        built.mkdir(parents=True, exist_ok=True)
        big = built / f"tcga40x-rgb-{args.side}.tif"
        if not big.exists():
            make_tcga_like(big, args.side)
        inputs = [("real CMU-1-Small-Region (Aperio RGB JPEG, 0.499 µm/px) at 1.0 µm/px, 96 px patches", SLIDE, 1.0,
                   96, False),
                  (f"TCGA-like 40x slide ({args.side:,} px, RGB JPEG, 0.25 µm/px) at 0.5 µm/px, 224 px patches", big,
                   0.5, 224, True)]
        for what, path, mpp, size, timed in inputs:
            r = compare(path, mpp, size, args.limit, embed)
            pool = r["pool"]
            speed = (f"{r['resize']:,.0f} | {r['dct']:,.0f} | {r['dct'] / r['resize']:.2f}x | {pool['resize']:,.0f} | "
                     f"{pool['dct']:,.0f} | {pool['dct'] / pool['resize']:.2f}x" if timed
                     else "— | — | — | — | — | — (tiles cached by planning)")
            row = (f"| {time.strftime('%Y-%m-%d')} | {platform.processor() or platform.machine()}, 1 thread | {what} | "
                   f"{r['patches']} | {speed} | "
                   f"{np.median(r['cos']):.4f} | {np.percentile(r['cos'], 1):.4f} | {r['cos'].min():.4f} | "
                   f"{np.median(r['neighbours']):.4f} | {r['note']} |")
            print(row)
            rows.append(row)
    append_rows("Half-scale JPEG decoding (benchmarks/downscale.py)",
                "Reading alone in one process (what one reader worker does), then ResNet-50 features (random "
                "weights, seed 0) of the same patches read both ways.", COLUMNS, rows, Path(args.results))


if __name__ == "__main__":
    main()
