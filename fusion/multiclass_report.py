"""The outputs of a multi-class run: predictions.csv (a probability per class), metrics.json, the confusion
matrix, the leaderboard and report.html, as ``fusion.report`` and ``fusion.html_report`` write them for two
classes."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

import numpy as np

from fusion.html_report import (
    _fmt,
    _num,
    _plt,
    _png,
    cohort_section,
    fold_table,
    forest,
    modality_section,
    page,
    summary_rows,
    top_genes_section,
    verdicts,
)
from fusion.multiclass import DECISION, MULTICLASS_METRICS
from fusion.report import _default, _r3, ci_cell, write_leaderboard_csv
from fusion.splits import write_splits

LABELS = {"roc_auc": "ROC-AUC (macro one-vs-rest)", "f1": "F1 (macro)", "balanced_accuracy": "balanced accuracy",
          "accuracy": "accuracy", "brier": "Brier score (multi-class)"}
METHOD = (f"calibration (temperature scaling) is fitted on each fold's inner validation rows; the class decision is "
          f"{DECISION}")


def write_multiclass_cv(out: Path, result, metrics: dict) -> None:
    """metrics.json, predictions.csv (each patient's out-of-fold probability of every class and the decision),
    splits.csv, confusion.png and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    classes = metrics["classes"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_default))
    with (out / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "repeat", "fold", "y_true", *(f"p_{c}" for c in classes), "predicted"])
        for r in range(result.assign.shape[0]):
            for i, p in enumerate(result.patient_ids):
                probs = result.oof[r, i]
                w.writerow([p, r, int(result.assign[r, i]), classes[int(result.y[i])], *(f"{v:.6f}" for v in probs),
                            classes[int(np.argmax(probs))]])
    write_splits(out / "splits.csv", result.patient_ids, result.assign)
    fig = _confusion_figure(metrics["operating_point"],
                            metrics["head"] + (" [SIMULATED data]" if metrics.get("simulated") else ""))
    fig.savefig(out / "confusion.png", dpi=110)
    _plt().close(fig)
    body = cohort_section(metrics) + head_section(result, metrics)
    (out / "report.html").write_text(page(f"fusion cv: {metrics['head']} ({len(classes)} classes)", body,
                                          metrics.get("simulated", False), METHOD))


def _confusion_figure(op: dict, title: str):
    cm, classes = np.array(op["confusion"]), op["classes"]
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.0 * len(classes) + 2.2, 1.0 * len(classes) + 1.6))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted (argmax)", ylabel="true class", title=f"{title}: confusion (count, share of the row)")
    fig.tight_layout()
    return fig


def _ovr_curves(result, classes: list[str]) -> str:
    """One-vs-rest ROC curve of each class, pooled out-of-fold (first repeat)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 3.9))
    for k, c in enumerate(classes):
        truth = result.y == k
        if 0 < truth.sum() < len(truth):
            fpr, tpr, _ = roc_curve(truth, result.oof[0, :, k])
            ax.plot(fpr, tpr, color=f"C{k}", label=f"{c} {roc_auc_score(truth, result.oof[0, :, k]):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="one-vs-rest ROC per class")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _reliability(cal: dict) -> str:
    """Each class's reliability after calibration, the patients in each bin marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.4, 3.9))
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    for k, (c, rel) in enumerate(cal["after"].items()):
        xs = [b["mean_predicted"] for b in rel["bins"]]
        ys = [b["observed"] for b in rel["bins"]]
        ax.plot(xs, ys, "o-", color=f"C{k}", ms=3, label=f"{c}: ECE {rel['ece']:.3f}")
        for x, y, b in zip(xs, ys, rel["bins"]):
            ax.annotate(str(b["n"]), (x, y), fontsize=6, color=f"C{k}", xytext=(2, 2), textcoords="offset points")
    ax.set(xlabel="mean predicted P(class)", ylabel="observed share of the class",
           title=f"reliability per class ({cal['method']}); numbers: patients per bin")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def head_section(result, metrics: dict, p: str = "") -> str:
    """One multi-class head: the macro metrics with CIs, each class's one-vs-rest ROC-AUC, the confusion matrix,
    per-class ROC and reliability, the folds, the modality check."""
    head, classes = metrics["head"], metrics["classes"]
    macro = summary_rows(metrics["summary"], MULTICLASS_METRICS, LABELS, f"{p}summary")
    per_class = summary_rows({c: v["roc_auc"] for c, v in metrics["per_class"].items()}, classes,
                             {c: f"{c} ({v['patients']} patients)" for c, v in metrics["per_class"].items()},
                             lambda c: f"{p}per_class.{c}.roc_auc")
    op = metrics["operating_point"]
    out = [f"<section class='head' data-head='{html.escape(head)}'><h2>{html.escape(head)}</h2>",
           "<table><tr><th>metric</th><th>pooled out-of-fold</th><th>95% CI</th><th>fold mean ± sd</th></tr>"
           f"{macro}</table>",
           "<h3>Each class against the rest</h3><table><tr><th>class</th><th>ROC-AUC</th><th>95% CI"
           f"</th><th>fold mean ± sd</th></tr>{per_class}</table>",
           f"<div class='plots'>{_png(_confusion_figure(op, head))}{_ovr_curves(result, classes)}"
           f"{_reliability(metrics['calibration'])}</div>",
           f"<p>Decision: {html.escape(op['chosen_on'])}. Recall per class: "
           + ", ".join(f"{html.escape(c)} {_num(f'{p}operating_point.recall.{c}', v)}" for c, v in op["recall"].items())
           + ".</p>",
           fold_table(metrics["folds"], MULTICLASS_METRICS, LABELS), top_genes_section(metrics, p)]
    if metrics.get("modality_check"):
        out.append(modality_section(metrics["modality_check"], p, "macro ROC-AUC"))
    out.append("</section>")
    return "\n".join(out)


def write_multiclass_leaderboard(out: Path, rows: list[dict], runs: dict, note: str) -> None:
    """leaderboard.csv, leaderboard.md and report.html of a multi-class bench: the answer first (what each fusion
    head adds over the best single modality, in macro ROC-AUC), then the table and every head's section."""
    write_leaderboard_csv(out, rows, MULTICLASS_METRICS)
    first = next(iter(runs.values())).metrics
    lines = [f"# Leaderboard ({len(first['classes'])} classes: {', '.join(first['classes'])})", "", note, "",
             "| head | modalities | macro ROC-AUC [95% CI] | fold mean ± sd | macro F1 [95% CI] | bal. acc. [95% CI] | "
             "seconds | params | vs best unimodal (macro ROC-AUC) | modality check (macro ROC-AUC drop when shuffled) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['modalities']} | {ci_cell(r, 'roc_auc')} | "
                     f"{_r3(r['roc_auc_fold_mean'])} ± {_r3(r['roc_auc_fold_std'])} | {ci_cell(r, 'f1')} | "
                     f"{ci_cell(r, 'balanced_accuracy')} | {r['seconds']:.1f} | {r['params']:,} | "
                     f"{r['vs_best_unimodal']} | {r.get('modality_check', '')} |")
    lines += ["", "Macro ROC-AUC: the mean over the classes of each class's one-vs-rest ROC-AUC, on the pooled "
              "out-of-fold probabilities of all patients, with a 95% CI from a patient-level bootstrap; macro F1 and "
              f"balanced accuracy score {DECISION}. 'within noise': the paired bootstrap CI of the difference to the "
              "best unimodal head contains 0."]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    sentences = verdicts(rows, runs, "macro ROC-AUC")
    answer = ("<h2>Does histology add to expression?</h2>"
              + ("<ul>" + "".join(f"<li class='verdict'>{html.escape(v)}</li>" for v in sentences) + "</ul>"
                 if sentences else "<p>No fusion head was run.</p>")
              + f"<div class='plots'>{forest(rows, 'macro ROC-AUC')}</div>")
    board = ("<h2>Leaderboard</h2><p>" + html.escape(note).replace("\n\n", "<br>") + "</p><table><tr><th>head</th>"
             "<th>modalities</th><th>macro ROC-AUC [95% CI]</th><th>macro F1</th><th>bal. acc.</th>"
             "<th>vs best unimodal</th></tr>"
             + "".join(f"<tr data-head='{html.escape(r['head'])}'><td>{html.escape(r['head'])}</td><td>"
                       f"{html.escape(r['modalities'])}</td><td>{_num(r['head'] + '.summary.roc_auc.pooled', r['roc_auc'])}"
                       f" [{_fmt(r['roc_auc_lo'])}, {_fmt(r['roc_auc_hi'])}]</td><td>{_fmt(r['f1'])}</td>"
                       f"<td>{_fmt(r['balanced_accuracy'])}</td><td>{html.escape(r['vs_best_unimodal'])}</td></tr>"
                       for r in rows) + "</table>")
    sections = "".join(f"<details id='{html.escape(h)}'><summary>{html.escape(h)}</summary>"
                       f"{head_section(run.result, run.metrics, f'{h}.')}</details>" for h, run in runs.items())
    (out / "report.html").write_text(page(f"fusion bench ({len(first['classes'])} classes)", answer + board
                                          + cohort_section(first, f"{first['head']}.") + sections,
                                          first.get("simulated", False), METHOD))
