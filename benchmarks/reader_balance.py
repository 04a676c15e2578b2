"""Reader workers on a cohort of uneven slides: claimed one at a time, largest file first, items taken
from whichever worker has one (as `featstore extract` does); the same taken from each worker in turn
(DataLoader's default); and the earlier code, slides dealt round-robin in id order, taken in turn.

The cohort is one big pyramid (a ``--big`` x ``--big`` mosaic of the real CMU-1-Small-Region.svs) and
``--small`` copies of a 3x3 mosaic, as TCGA cohorts mix slides of 2,000 and 100,000 patches. All three
readers run with ``--num-workers`` workers and no model (the reading ceiling); the round-robin deal is
the earlier code's baseline, as a fixed ``specs[worker::workers]`` split does it. Appends to benchmarks/RESULTS.md.
Usage:
    python benchmarks/reader_balance.py [--num-workers 2] [--big 6] [--small 6]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

from torch.utils.data import DataLoader, get_worker_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from extract_throughput import make_pyramid  # noqa: E402
from results_table import append_rows  # noqa: E402

from featstore.extract import ExtractConfig, _PatchStream, find_slides, patch_loader  # noqa: E402

COLUMNS = ["date", "machine", "cohort", "workers", "patches", "largest first, from any worker (extract), patches/s",
           "largest first, in turn, patches/s", "round-robin, in turn (earlier code), patches/s", "extract / earlier"]


class RoundRobinStream(_PatchStream):
    """The baseline: each worker reads a fixed share of the slides, fixed before any is opened."""

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for idx, spec in self.specs[wid::nw]:
            yield from self._slide(idx, spec)


def patches_per_second(loader: DataLoader) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    for item in loader:
        if item[0] == "patches":
            n += len(item[3])
    return n / (time.perf_counter() - t0), n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--big", type=int, default=6)
    ap.add_argument("--small", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cfg = ExtractConfig(min_tissue=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "slides"
        d.mkdir()
        make_pyramid(Path(tmp) / "big.tif", args.big, "jpeg")
        make_pyramid(Path(tmp) / "small.tif", 3, "jpeg")
        os.link(Path(tmp) / "big.tif", d / "z-big.tif")  # last by name, as often as not in a real cohort
        for i in range(args.small):
            os.link(Path(tmp) / "small.tif", d / f"small-{i:02d}.tif")
        specs = list(enumerate(find_slides([d])))
        # As the extractor orders them: largest file first.
        largest_first = sorted(specs, key=lambda s: -Path(s[1].path).stat().st_size)
        claimed, in_turn, dealt = [], [], []
        for _ in range(args.repeats):  # alternate, so drift on a noisy machine hits all three
            rate, n = patches_per_second(patch_loader(_PatchStream(largest_first, cfg, None, 32), args.num_workers))
            claimed.append(rate)
            # DataLoader's default: one item from each worker in turn.
            in_turn.append(patches_per_second(DataLoader(_PatchStream(largest_first, cfg, None, 32), batch_size=None,
                                                         num_workers=args.num_workers, prefetch_factor=4))[0])
            dealt.append(patches_per_second(DataLoader(RoundRobinStream(specs, cfg, None, 32), batch_size=None,
                                                       num_workers=args.num_workers, prefetch_factor=4))[0])
    best_c, best_t, best_d = max(claimed), max(in_turn), max(dealt)
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    row = (f"| {time.strftime('%Y-%m-%d')} | {machine} | one {args.big}x{args.big} (last by id) + {args.small} x 3x3 | "
           f"{args.num_workers} | {n:,} | {best_c:,.0f} | {best_t:,.0f} | {best_d:,.0f} | {best_c / best_d:.2f} |")
    print("| " + " | ".join(COLUMNS) + " |")
    print(row)
    append_rows("Reader balance on uneven slides (benchmarks/reader_balance.py)",
                "Reading alone (no model), best of the repeats, all three ways in the same run.", COLUMNS, [row])


if __name__ == "__main__":
    main()
