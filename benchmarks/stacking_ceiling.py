"""How far can late fusion of separately trained unimodal heads go on fusion_gain's cells? A nested stack.

For every outer fold, each unimodal head (genes: logreg, xgboost; image: image_abmil, image_logreg) is
cross-validated inside that fold's training part (4 inner folds, each inner model with its own early-stopping
rows, as ``fusion cv`` trains); a logistic meta-learner (L2, C=1, balanced, as the ``stack`` head's) is fitted
on those inner out-of-fold logits and applied to the outer models' logits on the test fold. Nothing is fitted
on a test fold. All 25 models of a head (5 outer, 20 inner) train together in one fold-batched run.

It says whether a cell's fusion gain is there to be had by the heads fusion_gain measures: where even this
stack of the best unimodal models does not beat the best of them, no fusion head can be expected to.
SIMULATED cohorts (fusion/simulate.py, fusion_gain's settings).

    python benchmarks/stacking_ceiling.py                       # minority cells and 200-patient genes only
    python benchmarks/stacking_ceiling.py --only "80:20 (minority), n=1000" --bootstrap 1000
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
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from fusion_gain import COMMON, cells  # noqa: E402

import featstore  # noqa: E402
from fusion.api import CVOptions, prepare_inputs  # noqa: E402
from fusion.calibration import logit  # noqa: E402
from fusion.metrics import paired_difference, pooled_metric  # noqa: E402
from fusion.simulate import simulate_cohort  # noqa: E402
from fusion.splits import make_splits, model_rows  # noqa: E402
from fusion.train import TrainConfig, cross_validate  # noqa: E402

HEADS = ("logreg", "xgboost", "image_abmil", "image_logreg")
FOLDS, INNER_FOLDS = 5, 4
STACKS = {"all four": HEADS, "logreg + image_abmil": ("logreg", "image_abmil"),
          "genes: logreg + xgboost": ("logreg", "xgboost"), "without image_abmil": ("logreg", "xgboost", "image_logreg")}


def nested_rows(y: np.ndarray, outer: list, inner_folds: int, inner_val: float, seed: int) -> list[list]:
    """Per outer model, the rows of its inner models: (train, val, test) inside the outer training part."""
    out = []
    for _, f, tr, val, _ in outer:
        part = np.sort(np.concatenate([tr, val]))
        inner = []
        for a, b in StratifiedKFold(inner_folds, shuffle=True, random_state=seed + f).split(part, y[part]):
            itr, ival = train_test_split(part[a], test_size=inner_val, stratify=y[part[a]], random_state=seed + f)
            inner.append((np.sort(itr), np.sort(ival), part[b]))
        out.append(inner)
    return out


def cell(store: Path, bootstrap: int, threads: int, seed: int = 0) -> dict:
    cfg = TrainConfig(seed=seed, threads=threads, calibrate="none")
    opts = CVOptions(bootstrap=bootstrap, train=cfg)
    with featstore.open(store, "a") as s:
        cohort, view = prepare_inputs(s, list(HEADS), opts)
    y = cohort.y
    assign = make_splits(cohort.patient_ids, y, FOLDS, 1, seed)
    outer = model_rows(assign, y, cfg.inner_val, seed)
    inner = nested_rows(y, outer, INNER_FOLDS, cfg.inner_val, seed)
    rows = [(j, 0, tr, val, test) for j, (_, _, tr, val, test) in enumerate(outer)]
    rows += [(FOLDS + INNER_FOLDS * k + j, 0, *r) for k, rs in enumerate(inner) for j, r in enumerate(rs)]
    pred = {}
    for h in HEADS:  # (FOLDS x (1 + INNER_FOLDS), P): row j holds model j's test predictions, NaN elsewhere
        res = cross_validate(cohort, h, np.zeros((len(rows), len(y)), int), view, cfg, permutations=0, rows=rows)
        pred[h] = logit(res.uncalibrated)
    # Every patient is in exactly one outer test fold, and in one inner test fold of each outer model it trains.
    oof = {h: np.nansum(p[:FOLDS], axis=0)[None] for h, p in pred.items()}
    stacked = {}
    for name, heads in STACKS.items():
        out = np.full(len(y), np.nan)
        for k, (_, _, _, _, test) in enumerate(outer):
            part = np.concatenate([r[2] for r in inner[k]])
            ins = [FOLDS + INNER_FOLDS * k + j for j in range(INNER_FOLDS)]
            x = np.stack([np.nansum(pred[h][ins][:, part], axis=0) for h in heads], 1)
            meta = LogisticRegression(C=1.0, class_weight="balanced").fit(x, y[part])
            out[test] = meta.decision_function(np.stack([pred[h][k, test] for h in heads], 1))
        stacked[name] = out[None]
    auc = {h: pooled_metric(y, o) for h, o in oof.items()}
    best = max(auc, key=auc.get)
    gaps = {n: paired_difference(y, o, oof[best], "roc_auc", bootstrap, 0) for n, o in stacked.items()}
    return {"auc": auc, "best": best, "stack": {n: pooled_metric(y, o) for n, o in stacked.items()}, "gaps": gaps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", default=["(minority)", "genes only, n=200"],
                    help="cells whose name contains one of these (default: the cells fusion heads miss most)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "stacking_ceiling.md"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    grid = [(n, kw) for n, kw in cells([200, 1000]) if any(s in n for s in args.only) and "null" not in kw]
    lines = [f"# Nested stacking of the unimodal heads (`python benchmarks/stacking_ceiling.py`, {time.strftime('%Y-%m-%d')})",
             "", f"{platform.machine()}, {args.threads} threads. SIMULATED cohorts, fusion_gain's settings. Pooled "
             "out-of-fold ROC-AUC; the stack's difference to the best unimodal head with a paired patient-bootstrap "
             f"95% CI ({args.bootstrap} resamples).", "",
             "| cell | " + " | ".join(HEADS) + " | " + " | ".join(f"stack: {n}" for n in STACKS) + " | "
             + " | ".join(f"{n} − best" for n in STACKS) + " | minutes |",
             "|---" * (len(HEADS) + 2 * len(STACKS) + 2) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in grid:
            t0 = time.perf_counter()
            store = Path(tmp) / f"{len(lines)}.h5"
            simulate_cohort(store, **{**COMMON, **kw}).close()
            r = cell(store, args.bootstrap, args.threads)
            gap = [f"{g['difference']:+.3f} [{g['ci95'][0]:+.3f}, {g['ci95'][1]:+.3f}]" for g in r["gaps"].values()]
            lines.append(f"| {name} | " + " | ".join(f"{r['auc'][h]:.3f}" + (" (best)" if h == r["best"] else "")
                                                     for h in HEADS)
                         + " | " + " | ".join(f"{v:.3f}" for v in r["stack"].values()) + " | " + " | ".join(gap)
                         + f" | {(time.perf_counter() - t0) / 60:.1f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
