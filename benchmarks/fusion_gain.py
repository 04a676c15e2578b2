"""Does each fusion head beat its best single modality? A grid of SIMULATED cohorts, every head, one run.

Cells (5-fold patient-level CV, seed 0, the same hyper-parameters everywhere):
- where the signal sits: genes only, image only, 50:50, 80:20 and 20:80 (genes:image);
- the image pattern: ``shift`` (the bag mean moves) and ``minority`` (single patches tell);
- 200 and 1,000 patients; 1,024-d tokens, 2,000 genes of which 20 informative;
- null cells: image bags permuted across patients, expression rows permuted across patients;
- real TCGA-BRCA expression and PAM50 labels from ``data/`` with pure-noise (null) image bags.
Writes ``benchmarks/fusion_gain.md`` (each head's ROC-AUC and its paired-bootstrap gap to the best
unimodal head per cell) and ``benchmarks/fusion_gain.png`` (a heat map of the gaps).

    python benchmarks/fusion_gain.py            # the whole grid (under 30 min on 2 cores)
    python benchmarks/fusion_gain.py --quick    # 200-patient cells only
    python benchmarks/fusion_gain.py --quick --seed 1 --out /tmp/seed1   # another draw of the cohorts
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import featstore  # noqa: E402
from featstore.tables import import_genes, import_labels  # noqa: E402
from fusion.api import CVOptions, bench  # noqa: E402
from fusion.heads import get_head, list_heads  # noqa: E402
from fusion.metrics import paired_difference, pooled_metric  # noqa: E402
from fusion.simulate import simulate_cohort  # noqa: E402
from fusion.train import TrainConfig  # noqa: E402

HEADS = {h: get_head(h) for h in list_heads("binary")}  # the grid's targets are two-class

COMMON = dict(patches=32, dim=1024, genes=2000, n_informative_genes=20, gene_signal=0.5, image_signal=2.0, seed=0)


def cells(patients: list[int]) -> list[tuple[str, dict]]:
    out = []
    for n in patients:
        out.append((f"genes only, n={n}", dict(patients=n, split=0.0)))
        for pattern in ("shift", "minority"):
            out.append((f"image only ({pattern}), n={n}", dict(patients=n, split=1.0, image_pattern=pattern)))
            for share, name in ((0.5, "50:50"), (0.2, "80:20"), (0.8, "20:80")):
                out.append((f"split {name} ({pattern}), n={n}", dict(patients=n, split=share, image_pattern=pattern)))
    big = max(patients)
    out.append((f"null image (bags permuted), split 50:50, n={big}", dict(patients=big, split=0.5, null="image")))
    out.append((f"null genes (rows permuted), split 50:50, n={big}", dict(patients=big, split=0.5, null="genes")))
    return out


def real_store(path: Path) -> Path:
    """Real mixOmics TCGA-BRCA expression and PAM50 labels, with pure-noise SIMULATED image bags."""
    data = ROOT / "data" / "mixomics_breast_tcga"
    with featstore.open(path, "a") as s:
        import_genes(s, data / "mrna_all.csv", "expression")
        import_labels(s, data / "subtype_all.csv", "labels", label_column="pam50")
        lab = s.read_labels()
    simulate_cohort(path, patches=COMMON["patches"], dim=COMMON["dim"], image_signal=0.0, seed=0,
                    patient_ids=lab.patient_ids, labels=dict(zip(lab.patient_ids, lab.labels))).close()
    return path


def run_cell(store: Path, label_map: str | None, bootstrap: int, threads: int) -> dict:
    # Uncalibrated: each fold's calibration map moves every head's pooled ROC-AUC by about 0.01 either way
    # (benchmarks/calibration.md), noise that says nothing about fusion; the heads' own predictions are compared.
    opts = CVOptions(label_map=label_map, bootstrap=bootstrap,
                     train=TrainConfig(seed=0, threads=threads, calibrate="none"))
    t0 = time.perf_counter()
    rows, runs = bench(store, "all", opts)
    y = next(iter(runs.values())).cohort.y
    auc = {h: pooled_metric(y, r.result.oof) for h, r in runs.items()}
    unimodal = [h for h in runs if not HEADS[h].multimodal]
    best = max(unimodal, key=auc.get)
    gaps = {}
    for h, r in runs.items():
        if HEADS[h].multimodal:
            d = paired_difference(y, r.result.oof, runs[best].result.oof, "roc_auc", bootstrap, 0)
            gaps[h] = (d["difference"], d["ci95"])
    checks = {h: {m: c["informative"] for m, c in r.metrics.get("modality_check", {}).items()} for h, r in runs.items()}
    return {"auc": auc, "best": best, "gaps": gaps, "checks": checks, "seconds": time.perf_counter() - t0}


def measure(kw: dict | None, store: Path, bootstrap: int, threads: int, seed: int = 0) -> dict:
    """One cell, in a worker process: simulate its cohort (HDF5: five times faster to write than Zarr for a
    thousand small bags, and the store is not what this measures), then every head on it."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    if kw is None:
        return run_cell(real_store(store), "pam50-binary", bootstrap, threads)
    simulate_cohort(store, **{**COMMON, **kw, "seed": seed}).close()
    return run_cell(store, None, bootstrap, threads)


def heatmap(results: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    heads = [h for h in HEADS if HEADS[h].multimodal]
    gap = np.array([[results[c]["gaps"][h][0] for h in heads] for c in names])
    fig, ax = plt.subplots(figsize=(1.4 * len(heads) + 4, 0.38 * len(names) + 1.5))
    lim = max(0.05, float(np.nanmax(np.abs(gap))))
    im = ax.imshow(gap, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(heads)), heads)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    for i in range(len(names)):
        for j in range(len(heads)):
            ax.text(j, i, f"{gap[i, j]:+.3f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, label="ROC-AUC minus best unimodal head")
    ax.set_title("Fusion gain over the best unimodal head (SIMULATED cohorts; last row real genes, null image)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200-patient cells only")
    ap.add_argument("--patients", type=int, nargs="+", default=None, help="patient counts (default: 200 1000)")
    ap.add_argument("--only", nargs="+", default=None, help="run only cells whose name contains one of these")
    ap.add_argument("--bootstrap", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the simulated cohorts (the folds and training keep seed 0): another draw of each cell")
    ap.add_argument("--workers", type=int, default=None,
                    help="cells measured at once, one process each (default: one per core)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    workers = args.workers or cores
    # Cells side by side on one thread each finish a little sooner than one at a time on every core
    # (measured on 2 cores: about 1.1x; the heads' small batched steps do not use two threads well).
    threads = max(1, cores // workers)
    grid: list[tuple[str, dict | None]] = list(cells(args.patients or ([200] if args.quick else [200, 1000])))
    grid.append(("REAL mixOmics TCGA-BRCA genes, null image", None))
    if args.only:
        grid = [(n, kw) for n, kw in grid if any(o in n for o in args.only)]
    order = [n for n, _ in grid]
    t_all = time.perf_counter()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Largest cohorts first, so the last cell to finish is a short one.
        jobs = {pool.submit(measure, kw, Path(tmp) / f"cell{order.index(name)}.h5", args.bootstrap, threads,
                            args.seed): name
                for name, kw in sorted(grid, key=lambda c: -(c[1] or {"patients": 1000})["patients"])}
        for job in as_completed(jobs):
            name = jobs[job]
            r = results[name] = job.result()
            print(f"{name}: best unimodal {r['best']}, " + ", ".join(f"{h} {g[0]:+.3f}" for h, g in r["gaps"].items())
                  + f" ({r['seconds']:.0f} s)", flush=True)
            done = {n: results[n] for n in order if n in results}
            write_report(done, args, (time.perf_counter() - t_all) / 60, workers, threads, final=len(done) == len(order))


def write_report(results: dict[str, dict], args, minutes: float, workers: int, threads: int,
                 final: bool = False) -> None:
    """Written after every cell, so a run cut short still leaves what it measured."""
    heads = list(HEADS)
    fusion = [h for h in heads if HEADS[h].multimodal]
    lines = [f"# Fusion gain over the best unimodal head ({time.strftime('%Y-%m-%d')})", "",
             f"`python benchmarks/fusion_gain.py {' '.join(sys.argv[1:])}`".replace(" `", "`") + ": "
             f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, {minutes:.1f} min "
             f"({workers} cells at a time, {threads} thread(s) each). "
             "SIMULATED cohorts (fusion/simulate.py) with "
             f"{COMMON['patches']} patches x {COMMON['dim']} dims per bag, {COMMON['genes']} genes of which "
             f"{COMMON['n_informative_genes']} informative, simulated with seed {args.seed}; "
             "5-fold patient-level CV, seed 0, default hyper-parameters. "
             "Heads compared uncalibrated (their own predictions). The REAL cell is real expression with pure-noise image bags."
             + ("" if final else " (Run in progress: the cells measured so far.)"), "",
             "ROC-AUC of the pooled out-of-fold predictions per head; for each fusion head, its difference to the "
             "best unimodal head with a paired patient-bootstrap 95% CI. `*`: the modality check found an input "
             "*not* informative (g: genes, i: image).", "",
             "| cell | best unimodal | " + " | ".join(heads) + " | " + " | ".join(f"{h} − best" for h in fusion) + " |",
             "|---" * (2 + len(heads) + len(fusion)) + "|"]

    def flag(r: dict, h: str) -> str:
        bad = [m[0] for m, ok in r["checks"].get(h, {}).items() if not ok]
        return f" *{''.join(bad)}" if bad else ""

    for name, r in results.items():
        gaps = [f"{r['gaps'][h][0]:+.3f} [{r['gaps'][h][1][0]:+.3f}, {r['gaps'][h][1][1]:+.3f}]" for h in fusion]
        lines.append(f"| {name} | {r['best']} | " + " | ".join(f"{r['auc'][h]:.3f}{flag(r, h)}" for h in heads)
                     + " | " + " | ".join(gaps) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_gain.md").write_text("\n".join(lines) + "\n")
    heatmap(results, args.out / "fusion_gain.png")
    if final:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
