"""Trainer speed on a SIMULATED TCGA-sized cohort: 1,000 patients, 256 patches x 1,024 dims, 2,000 genes.

Times `fusion cv --head cross_attn` (5 folds) with views built and then cached, `fusion bench` over
every head, and a naive reference loop (folds one after another, one full patient bag per optimiser
step, as MCAT/PORPOISE-style code trains) measured for a fixed number of steps in the same run and
extrapolated to the same number of epochs. Appends the figures to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
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

import featstore  # noqa: E402
from fusion import memo  # noqa: E402
from fusion.api import CVOptions, bench, cv  # noqa: E402
from fusion.cohort import load_cohort  # noqa: E402
from fusion.heads import get_head  # noqa: E402
from fusion.simulate import simulate_cohort  # noqa: E402


def naive_seconds_per_epoch(store_path: Path, steps: int = 100) -> tuple[float, int]:
    """One fold's training part, one full bag per step, through the same cross_attn module with M=1."""
    with featstore.open(store_path) as s:
        cohort = load_cohort(s, label_map=None)
        sid = [cohort.slides[p][0] for p in cohort.patient_ids[:steps]]
        bags = [torch.from_numpy(s.read_slide(None, x).features.astype(np.float32)) for x in sid]
    genes = torch.from_numpy(np.nan_to_num(cohort.genes[:steps]))
    model = get_head("cross_attn").build(1, genes.shape[1], bags[0].shape[1])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.from_numpy(cohort.y[:steps]).float()
    t0 = time.perf_counter()
    for i in range(steps):
        tok = bags[i][None, None]
        mask = torch.ones(tok.shape[:3], dtype=torch.bool)
        logit = model(genes[i][None, None], tok, mask, mask.float())
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[i].view(1, 1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    per_step = (time.perf_counter() - t0) / steps
    n_train = int(0.8 * 0.85 * len(cohort.patient_ids))
    return per_step * n_train, n_train


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "sim.zarr"
        t0 = time.perf_counter()
        simulate_cohort(store, patients=1000, patches=256, dim=1024, genes=2000, seed=0).close()
        t_sim = time.perf_counter() - t0
        opts = CVOptions(label_map=None)
        t0 = time.perf_counter()
        first = cv(store, "cross_attn", opts)
        t_first = time.perf_counter() - t0
        memo.clear()  # timed as a second `fusion cv` would run: the view cached on disk, no fit kept in memory
        t0 = time.perf_counter()
        cached = cv(store, "cross_attn", opts)
        t_cached = time.perf_counter() - t0
        memo.clear()
        t0 = time.perf_counter()
        rows, runs = bench(store, "all", opts)
        t_bench = time.perf_counter() - t0
        naive_epoch, n_train = naive_seconds_per_epoch(store)
    epochs = sum(cached.metrics["epochs"])  # epochs our trainer ran, summed over the 5 folds
    naive_total = naive_epoch * epochs
    machine = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU"
    lines = [
        f"\n## Trainer speed (benchmarks/trainer_speed.py), {time.strftime('%Y-%m-%d')}, {machine}\n",
        "SIMULATED cohort: 1,000 patients, 256 patches x 1,024 dims, 2,000 genes; 5-fold patient-level CV.\n",
        "| what | seconds |", "|---|---|",
        f"| simulate + write the store | {t_sim:.1f} |",
        f"| `fusion cv --head cross_attn`, building the K=16 view | {t_first:.1f} |",
        f"| `fusion cv --head cross_attn`, view cached | {t_cached:.1f} |",
        f"| `fusion bench --heads all` ({len(rows)} heads, view cached) | {t_bench:.1f} |",
        f"| naive loop, same epochs ({epochs} fold-epochs x {n_train} one-bag steps; {naive_epoch:.1f} s per fold-epoch, "
        f"measured over 100 steps) | {naive_total:.0f} (extrapolated) |",
        "", f"Our trainer vs the naive loop, same head and epochs: **{naive_total / t_cached:.0f}x** faster.",
        "", "| head | ROC-AUC | seconds |", "|---|---|---|",
        *[f"| {r['head']} | {r['roc_auc']:.3f} | {r['seconds']:.1f} |" for r in rows],
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    with (ROOT / "benchmarks" / "RESULTS.md").open("a") as fh:
        fh.write(text)
    del first, runs


if __name__ == "__main__":
    main()
