"""Reader workers on uneven work: a cohort whose biggest slide is last by id, and one big slide alone.

Three ways, each in the same run, reading alone (no model: the reading ceiling):
- `featstore extract`'s readers: slides claimed one at a time, largest file first, items taken from
  whichever worker has one, and a slide's remaining rows shared out in ranges as soon as a worker is
  idle (so a big slide is read by every worker, not one);
- the same without sharing (the previous code: a slide is read whole by the worker that claimed it);
- the earliest code: slides dealt round-robin in id order before any is opened, items taken in turn.

The big slide is a ``--big`` x ``--big`` mosaic of the real CMU-1-Small-Region.svs (a JPEG pyramid at its
true 0.499 µm/px), the small ones 3x3 mosaics, as TCGA cohorts mix slides of 2,000 and 100,000 patches.
Appends to benchmarks/RESULTS.md. Usage:
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
from collections.abc import Iterable
from pathlib import Path

from torch.utils.data import DataLoader, get_worker_info

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from extract_throughput import make_pyramid  # noqa: E402
from results_table import append_rows  # noqa: E402

from featstore.extract import ExtractConfig, PatchReader, RunConfig, find_slides  # noqa: E402
from featstore.extract.messages import Pixels  # noqa: E402
from featstore.extract.pool import _PatchStream, _ReaderCache  # noqa: E402

COLUMNS = ["date", "machine", "slides", "workers", "patches", "extract (shared ranges), patches/s",
           "whole slides, claimed (previous code), patches/s", "round-robin, in turn (earliest code), patches/s",
           "extract / previous"]


class RoundRobinStream(_PatchStream):
    """The earliest code: each worker reads a fixed share of the slides, fixed before any is opened."""

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        readers = _ReaderCache()
        for idx, _ in self.specs[wid::nw]:
            yield from self._slide(idx, readers)
        readers.close()


def patches_per_second(items: Iterable[tuple]) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    for item in items:
        if isinstance(item, Pixels):
            n += len(item.patches)
    return n / (time.perf_counter() - t0), n


def measure(specs, cfg: ExtractConfig, workers: int, repeats: int) -> tuple[list[float], int]:
    largest_first = sorted(specs, key=lambda s: -Path(s[1].path).stat().st_size)  # as the extractor orders them
    rates: list[list[float]] = [[], [], []]
    for _ in range(repeats):  # alternate, so drift on a noisy machine hits all three
        rate, n = patches_per_second(PatchReader(largest_first, cfg, None, 32, workers))
        rates[0].append(rate)
        rates[1].append(patches_per_second(PatchReader(largest_first, cfg, None, 32, workers, share=False))[0])
        stream = RoundRobinStream(specs, cfg, None, 32, share=False, run=RunConfig())
        rates[2].append(patches_per_second(DataLoader(stream, batch_size=None, num_workers=workers,
                                                      prefetch_factor=4))[0])
    return [max(r) for r in rates], n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-workers", type=int, default=2)
    ap.add_argument("--big", type=int, default=6)
    ap.add_argument("--small", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    cfg = ExtractConfig(min_tissue=0.0)
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_pyramid(Path(tmp) / "big.tif", args.big, "jpeg")
        make_pyramid(Path(tmp) / "small.tif", 3, "jpeg")
        cohort, alone = Path(tmp) / "cohort", Path(tmp) / "alone"
        cohort.mkdir()
        alone.mkdir()
        os.link(Path(tmp) / "big.tif", cohort / "z-big.tif")  # last by name, as often as not in a real cohort
        os.link(Path(tmp) / "big.tif", alone / "big.tif")
        for i in range(args.small):
            os.link(Path(tmp) / "small.tif", cohort / f"small-{i:02d}.tif")
        for what, d in ((f"one {args.big}x{args.big} (last by id) + {args.small} x 3x3", cohort),
                        (f"one {args.big}x{args.big} alone", alone)):
            (shared, whole, dealt), n = measure(list(enumerate(find_slides([d]))), cfg, args.num_workers, args.repeats)
            rows.append(f"| {time.strftime('%Y-%m-%d')} | {machine} | {what} | {args.num_workers} | {n:,} | "
                        f"{shared:,.0f} | {whole:,.0f} | {dealt:,.0f} | {shared / whole:.2f} |")
    print("| " + " | ".join(COLUMNS) + " |")
    print("\n".join(rows))
    append_rows("Reader balance on uneven work (benchmarks/reader_balance.py)",
                "Reading alone (no model), best of the repeats, all three ways in the same run.", COLUMNS, rows)


if __name__ == "__main__":
    main()
