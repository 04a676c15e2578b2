"""Which operating point to default to: how each fold's threshold is chosen on its inner-validation rows.

On the real TCGA-BRCA expression bundled in data/ (mixOmics, 220 patients x 200 genes, PAM50 Luminal vs
Basal/Her2; as it is, 110:110, and with every third Basal/Her2 patient kept, 110:37), cross-validates
logreg and xgboost with each rule of ``fusion.calibration.OPERATING_POINTS`` over several seeds (splits and
training), and prints the mean and range of F1 (positive class), balanced accuracy and accuracy at the
chosen thresholds, beside ROC-AUC (which no rule changes).
Writes benchmarks/operating_point.md.

    python benchmarks/operating_point.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import featstore  # noqa: E402
from featstore.tables import import_genes, import_labels  # noqa: E402
from fusion.api import CVOptions, cv  # noqa: E402
from fusion.calibration import OPERATING_POINTS  # noqa: E402
from fusion.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEADS = ["logreg", "xgboost"]
SCORES = ("f1", "balanced_accuracy", "accuracy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        stores = {"balanced (110:110)": Path(tmp) / "brca.zarr", "Basal/Her2 a third (110:37)": Path(tmp) / "third.zarr"}
        for store in stores.values():
            with featstore.open(store, "a") as s:
                import_genes(s, ROOT / "data/mixomics_breast_tcga/mrna_all.csv")
                labels, _ = import_labels(s, ROOT / "data/mixomics_breast_tcga/subtype_all.csv", label_column="pam50")
                if store.stem == "third":  # real patients, every third Basal/Her2 one kept: the minority case
                    minority = [i for i, lab in enumerate(labels.labels) if lab == "Basal_Her2"]
                    keep = [i for i in range(len(labels.labels)) if i not in minority or minority.index(i) % 3 == 0]
                    s.write_labels("labels", featstore.LabelTable(*([getattr(labels, f)[i] for i in keep] for f in (
                        "patient_ids", "labels", "raw_labels")), labels.provenance), overwrite=True)
        for cohort, store in stores.items():
            for head in HEADS:
                for rule in OPERATING_POINTS:
                    got = {k: [] for k in (*SCORES, "roc_auc")}
                    for seed in range(args.seeds):
                        opts = CVOptions(seed=seed, bootstrap=100, train=TrainConfig(seed=seed, operating_point=rule))
                        summary = cv(store, head, opts).metrics["summary"]
                        for k in got:
                            got[k].append(summary[k]["pooled"])
                    rows.append((cohort, head, rule, {k: np.asarray(v) for k, v in got.items()}))
                    print(cohort, head, rule, {k: round(float(np.mean(v)), 3) for k, v in got.items()}, flush=True)
    lines = ["# Operating point: how each fold's threshold is chosen", "",
             f"Real TCGA-BRCA expression (mixOmics, 200 genes), PAM50 Luminal vs Basal/Her2 (F1 of Basal/Her2), 5-fold CV, "
             f"seeds 0-{args.seeds - 1} (splits and training); pooled out-of-fold scores at each fold's threshold, mean "
             f"[min, max] over the seeds. `python benchmarks/operating_point.py`, {time.perf_counter() - t0:.0f} s on "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores.", "",
             "| labels | head | rule | F1 | balanced accuracy | accuracy | ROC-AUC |", "|---|---|---|---|---|---|---|"]
    for cohort, head, rule, got in rows:
        cells = [f"{v.mean():.3f} [{v.min():.3f}, {v.max():.3f}]" for v in (got[k] for k in (*SCORES, "roc_auc"))]
        lines.append(f"| {cohort} | {head} | {rule} | " + " | ".join(cells) + " |")
    out = Path(__file__).with_name("operating_point.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
