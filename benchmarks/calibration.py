"""Which calibration to default to: none, platt or isotonic, each fitted on every fold's inner validation rows.

Measures, on the cohorts of the fusion tests and the bundled real expression, the pooled out-of-fold Brier
score, expected calibration error (10 bins) and ROC-AUC of each head under each method; writes
benchmarks/calibration.md. Simulated cohorts are labelled SIMULATED.

    python benchmarks/calibration.py
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featstore  # noqa: E402
from featstore.tables import import_genes, import_labels  # noqa: E402
from fusion.api import CVOptions, bench  # noqa: E402
from fusion.calibration import CALIBRATIONS  # noqa: E402
from fusion.simulate import simulate_cohort  # noqa: E402
from fusion.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["logreg", "xgboost", "gene_mlp", "image_abmil", "concat", "cross_attn"]


def cohorts(tmp: Path) -> dict[str, tuple[Path, list[str], str | None]]:
    out = {}
    for name, kw in {"SIMULATED split 50:50, 300 patients": dict(split=0.5),
                     "SIMULATED null image, 300 patients": dict(split=0.5, null="image")}.items():
        path = tmp / f"{len(out)}.zarr"
        simulate_cohort(path, patients=300, patches=48, dim=32, genes=60, gene_signal=2.0, image_signal=2.0, seed=4,
                        **kw).close()
        out[name] = (path, HEADS, None)
    real = tmp / "real.zarr"
    with featstore.open(real, "a") as s:
        import_genes(s, ROOT / "data" / "mixomics_breast_tcga" / "mrna_all.csv")
        import_labels(s, ROOT / "data" / "mixomics_breast_tcga" / "subtype_all.csv", label_column="pam50")
    out["real TCGA-BRCA expression (mixOmics, 150 patients)"] = (real, ["logreg", "xgboost", "gene_mlp"], "pam50-binary")
    return out


def main() -> None:
    threads = len(os.sched_getaffinity(0))
    lines = ["# Calibration: none vs platt vs isotonic (fitted on each fold's inner validation rows)", "",
             f"Machine: {platform.processor() or platform.machine()}, {threads} threads. Pooled out-of-fold "
             "predictions of 5-fold CV, seed 0. Lower Brier and ECE are better.", "",
             "| cohort | head | " + " | ".join(f"{c} Brier / ECE / AUC" for c in CALIBRATIONS) + " |",
             "|---|---|" + "---|" * len(CALIBRATIONS)]
    means = {c: [] for c in CALIBRATIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for cname, (path, heads, label_map) in cohorts(Path(tmp)).items():
            res = {}
            for c in CALIBRATIONS:
                opts = CVOptions(label_map=label_map, bootstrap=200,
                                 train=TrainConfig(calibrate=c, threads=threads))
                _, runs = bench(path, heads, opts)
                res[c] = {h: runs[h].metrics for h in heads}
            for h in heads:
                cells = []
                for c in CALIBRATIONS:
                    m = res[c][h]
                    cal = m["calibration"]["after"]
                    means[c].append((cal["brier"], cal["ece"]))
                    cells.append(f"{cal['brier']:.3f} / {cal['ece']:.3f} / {m['summary']['roc_auc']['pooled']:.3f}")
                lines.append(f"| {cname} | {h} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    lines += ["", "Mean over all rows: " + "; ".join(
        f"{c}: Brier {np.mean([b for b, _ in v]):.3f}, ECE {np.mean([e for _, e in v]):.3f}" for c, v in means.items())]
    print(lines[-1])
    (ROOT / "benchmarks" / "calibration.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
