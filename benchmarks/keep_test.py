"""What the fusion heads' fallback rules (``TrainConfig.fallback``, fusion/fallback.py) cost and save, on
SIMULATED cohorts of benchmarks/fusion_gain.py: ``fusion`` (the default: the fusion term must rank the
inner-validation patients significantly better than the unimodal branches alone), ``significant`` (all of
training must, against the warm start) and ``never`` (what early stopping picks).

Training is identical under the three (same seed); they differ only in what a fold keeps afterwards. Writes
``benchmarks/keep_test.md``: per cell and head, the pooled out-of-fold ROC-AUC under each rule and the paired
patient-bootstrap difference of each other rule to the default.

    python benchmarks/keep_test.py        # 1,000-patient cells, about 30 min on 2 cores
    python benchmarks/keep_test.py --cells "split 80:20 (minority)" "null genes (rows permuted), split 50:50"
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion_gain import COMMON  # noqa: E402

from fusion.api import CVOptions, cv  # noqa: E402
from fusion.heads import HEADS  # noqa: E402
from fusion.metrics import paired_difference, pooled_metric  # noqa: E402
from fusion.simulate import simulate_cohort  # noqa: E402
from fusion.train import TrainConfig  # noqa: E402

CELLS = {
    "genes only": dict(split=0.0),
    "image only (shift)": dict(split=1.0, image_pattern="shift"),
    "split 80:20 (minority)": dict(split=0.2, image_pattern="minority"),
    "null image (bags permuted), split 50:50": dict(split=0.5, null="image"),
    "null genes (rows permuted), split 50:50": dict(split=0.5, null="genes"),
}
RULES = ("fusion", "significant", "never")


def measure(name: str, patients: int, store: Path, bootstrap: int) -> list[dict]:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    simulate_cohort(store, **{**COMMON, **CELLS[name], "patients": patients}).close()
    rows = []
    for head in (h for h in HEADS if HEADS[h].multimodal and HEADS[h].kind == "torch"):
        runs = {rule: cv(store, head, CVOptions(label_map=None, bootstrap=bootstrap, train=TrainConfig(
            seed=0, threads=1, calibrate="none", fallback=rule))) for rule in RULES}
        y = runs["fusion"].cohort.y
        row = {"cell": name, "head": head, **{r: pooled_metric(y, runs[r].result.oof) for r in RULES}}
        for r in RULES[1:]:
            row[f"{r} − fusion"] = paired_difference(y, runs[r].result.oof, runs["fusion"].result.oof, "roc_auc",
                                                     bootstrap, 0)
        row["fusion terms kept"] = runs["fusion"].metrics["trained_kept"].get("fusion_term_kept")
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=1000)
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--cells", nargs="+", choices=list(CELLS), default=list(CELLS), metavar="CELL",
                    help="which cells (default: all of " + ", ".join(CELLS) + ")")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "keep_test.md")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(measure, name, args.patients, Path(tmp) / f"cell{i}.h5", args.bootstrap)
                for i, name in enumerate(args.cells)]
        rows = [row for job in jobs for row in job.result()]
    minutes = (time.perf_counter() - t0) / 60
    lines = [f"# Fallback rules of the fusion heads ({time.strftime('%Y-%m-%d')})", "",
             f"`{shlex.join(['python', 'benchmarks/keep_test.py', *sys.argv[1:]])}`: "
             f"{platform.processor() or platform.machine()}, {cores} cores, {minutes:.1f} min. SIMULATED cohorts "
             f"of fusion_gain.py ({args.patients} patients, seed 0), 5-fold CV, heads uncalibrated. Pooled "
             "out-of-fold ROC-AUC under each rule; each other rule's difference to `fusion` (the default) with a "
             "paired patient-bootstrap 95% CI; the folds whose fusion term the default rule kept.", "",
             "| cell | head | " + " | ".join(RULES) + " | " + " | ".join(f"{r} − fusion" for r in RULES[1:])
             + " | fusion terms kept |", "|---" * (3 + 2 * len(RULES)) + "|"]
    for r in rows:
        kept = r["fusion terms kept"]
        lines.append(f"| {r['cell']} | {r['head']} | " + " | ".join(f"{r[x]:.3f}" for x in RULES) + " | "
                     + " | ".join(f"{r[k]['difference']:+.3f} [{r[k]['ci95'][0]:+.3f}, {r[k]['ci95'][1]:+.3f}]"
                                  for k in (f"{x} − fusion" for x in RULES[1:]))
                     + f" | {'–' if kept is None else f'{sum(kept)}/{len(kept)}'} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
