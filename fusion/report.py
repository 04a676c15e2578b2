"""Writing results: metrics.json, predictions.csv, splits.csv, ROC/PR curves and the leaderboard."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from fusion.metrics import METRICS
from fusion.splits import write_splits


def write_cv(out: Path, result, metrics: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_default))
    with (out / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "repeat", "fold", "y_true", "p_positive"])
        for r in range(result.assign.shape[0]):
            for i, p in enumerate(result.patient_ids):
                w.writerow([p, r, int(result.assign[r, i]), int(result.y[i]), f"{result.oof[r, i]:.6f}"])
    write_splits(out / "splits.csv", result.patient_ids, result.assign)
    plot_curves(out / "curves.png", result, metrics)


def plot_curves(path: Path, result, metrics: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 4))
    for r in range(result.oof.shape[0]):
        fpr, tpr, _ = roc_curve(result.y, result.oof[r])
        prec, rec, _ = precision_recall_curve(result.y, result.oof[r])
        ax1.plot(fpr, tpr, lw=1.2, label=f"repeat {r}")
        ax2.plot(rec, prec, lw=1.2, label=f"repeat {r}")
    ax1.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax1.set(xlabel="false positive rate", ylabel="true positive rate",
            title=f"ROC, AUC {metrics['summary']['roc_auc']['pooled']:.3f}")
    ax2.axhline(result.y.mean(), color="k", ls="--", lw=0.6)
    ax2.set(xlabel="recall", ylabel="precision", title=f"PR (positive: {metrics['positive_class']})")
    fig.suptitle(f"{metrics['head']}: pooled out-of-fold predictions" + (" (SIMULATED data)" if metrics.get("simulated") else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_leaderboard_csv(out: Path, rows: list[dict], metrics: tuple[str, ...]) -> None:
    """leaderboard.csv: one row per head, each metric with its CI and fold mean and spread."""
    out.mkdir(parents=True, exist_ok=True)
    cols = ["head", "modalities"] + [f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi", "_fold_mean", "_fold_std")] + \
        ["seconds", "params", "vs_best_unimodal", "within_noise", "modality_check"]
    with (out / "leaderboard.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k) for k in cols})


def write_leaderboard(out: Path, rows: list[dict], positive: str, note: str) -> None:
    write_leaderboard_csv(out, rows, METRICS)
    lines = [f"# Leaderboard (positive class: {positive})", "", note, "",
             "| head | modalities | ROC-AUC [95% CI] | ROC-AUC fold mean ± sd | PR-AUC [95% CI] | F1 [95% CI] | "
             "bal. acc. [95% CI] | seconds | params | vs best unimodal (ROC-AUC) | modality check (ROC-AUC drop when "
             "shuffled) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    for r in rows:
        lines.append(f"| {r['head']} | {r['modalities']} | {ci_cell(r, 'roc_auc')} | "
                     f"{_r3(r['roc_auc_fold_mean'])} ± {_r3(r['roc_auc_fold_std'])} | {ci_cell(r, 'pr_auc')} | "
                     f"{ci_cell(r, 'f1')} | {ci_cell(r, 'balanced_accuracy')} | {r['seconds']:.1f} | {r['params']:,} | "
                     f"{r['vs_best_unimodal']} | {r.get('modality_check', '')} |")
    lines += ["", "Each metric is computed on the pooled out-of-fold predictions of all patients, with a 95% CI from a "
              "patient-level bootstrap of those predictions; the fold mean ± sd is shown apart. "
              "'within noise': the paired bootstrap CI of the ROC-AUC difference to the best unimodal head "
              "contains 0. Modality check: the drop in ROC-AUC when one input is shuffled among the patients of each "
              "test fold (5 permutations), with a paired patient-bootstrap 95% CI; an input whose CI reaches 0 "
              "adds nothing measurable."]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")


def ci_cell(r: dict, m: str) -> str:
    """A leaderboard row's metric ``m`` with its 95% CI, to 3 decimals."""
    return f"{_r3(r[m])} [{_r3(r[f'{m}_lo'])}, {_r3(r[f'{m}_hi'])}]"


def _r3(v) -> str:
    return "nan" if v is None else f"{v:.3f}"


def _default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(type(o))
