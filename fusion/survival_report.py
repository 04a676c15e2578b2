"""The outputs of a survival run: predictions.csv (risks), metrics.json, Kaplan-Meier figures, the leaderboard and
report.html, as ``fusion.report`` and ``fusion.html_report`` write them for two-class targets."""

from __future__ import annotations

import csv
import html
import json
from pathlib import Path

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
from fusion.report import _default, _r3, ci_cell, write_leaderboard_csv
from fusion.splits import write_splits
from fusion.survival import SURVIVAL_METRICS

LABELS = {"c_index": "Harrell's c-index", "c_index_uno": "Uno's c-index"}
METHOD = ("each fold's cut into risk groups is the median risk of its inner-validation rows; Uno's c-index is "
          "truncated at the last event time, its censoring weights estimated on the pooled patients")


def _km_figure(groups: dict, title: str, unit: str):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    for k, (name, g) in enumerate(groups["groups"].items()):
        ax.step(g["time"], g["survival"], where="post", color=f"C{k}",
                label=f"{name}: {g['patients']} patients, {g['events']} events")
    p = groups.get("logrank_p")
    ax.set(xlabel=f"time ({unit})", ylabel="survival", ylim=(0, 1.02),
           title=f"{title}\nlog-rank p = {'–' if p is None else f'{p:.3g}'}")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def write_survival_cv(out: Path, result, metrics: dict) -> None:
    """metrics.json, predictions.csv (each patient's out-of-fold risk), splits.csv, km.png and report.html."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_default))
    with (out / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "repeat", "fold", "time", "event", "risk"])
        for r in range(result.assign.shape[0]):
            for i, p in enumerate(result.patient_ids):
                w.writerow([p, r, int(result.assign[r, i]), f"{result.y['time'][i]:g}", int(result.y["event"][i]),
                            f"{result.oof[r, i]:.6f}"])
    write_splits(out / "splits.csv", result.patient_ids, result.assign)
    unit = metrics["cohort"]["survival"]["time_unit"]
    fig = _km_figure(metrics["risk_groups"], f"{metrics['head']}: predicted risk groups"
                     + (" [SIMULATED data]" if metrics.get("simulated") else ""), unit)
    fig.savefig(out / "km.png", dpi=110)
    _plt().close(fig)
    body = cohort_section(metrics) + head_section(metrics)
    (out / "report.html").write_text(page(f"fusion cv: {metrics['head']} (survival)", body,
                                          metrics.get("simulated", False), METHOD))


def head_section(metrics: dict, p: str = "") -> str:
    """One survival head: its c-indices with CIs, risk groups with the log-rank test, per-fold table, modality
    check."""
    head = metrics["head"]
    rows = summary_rows(metrics["summary"], SURVIVAL_METRICS, LABELS, f"{p}summary")
    groups = metrics["risk_groups"]
    km = _png(_km_figure(groups, "predicted risk groups (first repeat)", metrics["cohort"]["survival"]["time_unit"]))
    out = [f"<section class='head' data-head='{html.escape(head)}'><h2>{html.escape(head)}</h2>",
           f"<table><tr><th>metric</th><th>pooled out-of-fold</th><th>95% CI</th><th>fold mean ± sd</th></tr>{rows}"
           "</table>",
           f"<div class='plots'>{km}<p>High and low risk: {html.escape(groups['cut'])}. Log-rank p "
           f"{_num(f'{p}risk_groups.logrank_p', groups['logrank_p'])}.</p></div>",
           _time_auc(metrics.get("time_dependent_auc"), metrics["cohort"]["survival"]["time_unit"], p),
           _brier(metrics.get("integrated_brier"), p),
           fold_table(metrics["folds"], SURVIVAL_METRICS, LABELS), top_genes_section(metrics, p)]
    if metrics.get("modality_check"):
        out.append(modality_section(metrics["modality_check"], p, "c-index"))
    out.append("</section>")
    return "\n".join(out)


def _brier(ibs: dict | None, p: str) -> str:
    if not ibs:
        return "<p>Integrated Brier score: undefined here (too few events).</p>"
    return (f"<p>Integrated Brier score over the {html.escape(ibs['at'])} (each fold model's risks through its Breslow "
            f"baseline hazard; lower is better): {_num(f'{p}integrated_brier.ibs', ibs['ibs'])}, against "
            f"{_num(f'{p}integrated_brier.ibs_kaplan_meier', ibs['ibs_kaplan_meier'])} for the Kaplan-Meier curve "
            "of all patients (no model).</p>")


def _time_auc(tdauc: dict | None, unit: str, p: str) -> str:
    if not tdauc:
        return "<p>Time-dependent ROC-AUC: undefined here (too few events).</p>"
    cells = "".join(f"<td>{_num(f'{p}time_dependent_auc.auc.{i}', a)}</td>" for i, a in enumerate(tdauc["auc"]))
    return (f"<p>Time-dependent (cumulative/dynamic) ROC-AUC at the {html.escape(tdauc['at'])}:</p><table><tr><th>"
            f"time ({html.escape(unit)})</th>" + "".join(f"<th>{t:g}</th>" for t in tdauc["times"])
            + f"<th>mean</th></tr><tr><td>ROC-AUC</td>{cells}<td>{_num(f'{p}time_dependent_auc.mean_auc', tdauc['mean_auc'])}"
            "</td></tr></table>")


def write_survival_leaderboard(out: Path, rows: list[dict], runs: dict, note: str) -> None:
    """leaderboard.csv, leaderboard.md and report.html of a survival bench: the answer first (what each fusion
    head adds over the best single modality, in c-index), then the table and every head's section."""
    write_leaderboard_csv(out, rows, SURVIVAL_METRICS)
    lines = ["# Leaderboard (survival)", "", note, "",
             "| head | modalities | c-index [95% CI] | fold mean ± sd | Uno's c [95% CI] | seconds | params | "
             "vs best unimodal (c-index) | modality check (c-index drop when shuffled) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['modalities']} | {ci_cell(r, 'c_index')} | "
                     f"{_r3(r['c_index_fold_mean'])} ± {_r3(r['c_index_fold_std'])} | {ci_cell(r, 'c_index_uno')} | "
                     f"{r['seconds']:.1f} | {r['params']:,} | {r['vs_best_unimodal']} | {r.get('modality_check', '')} |")
    lines += ["", "Harrell's c-index on the pooled out-of-fold risks of all patients, with a 95% CI from a patient-level "
              "bootstrap; 'within noise': the paired bootstrap CI of the difference to the best unimodal head contains "
              "0. Modality check: the drop in c-index when one input is shuffled among the patients of each test fold."]
    (out / "leaderboard.md").write_text("\n".join(lines) + "\n")
    first = next(iter(runs.values())).metrics
    sentences = verdicts(rows, runs, "c-index")
    answer = ("<h2>Does histology add to expression?</h2>"
              + ("<ul>" + "".join(f"<li class='verdict'>{html.escape(v)}</li>" for v in sentences) + "</ul>"
                 if sentences else "<p>No fusion head was run.</p>") + f"<div class='plots'>{forest(rows, 'c-index')}</div>")
    board = ("<h2>Leaderboard</h2><p>" + html.escape(note).replace("\n\n", "<br>") + "</p><table><tr><th>head</th>"
             "<th>modalities</th><th>c-index [95% CI]</th><th>Uno's c</th><th>vs best unimodal</th></tr>"
             + "".join(f"<tr data-head='{html.escape(r['head'])}'><td>{html.escape(r['head'])}</td><td>"
                       f"{html.escape(r['modalities'])}</td><td>{_num(r['head'] + '.summary.c_index.pooled', r['c_index'])}"
                       f" [{_fmt(r['c_index_lo'])}, {_fmt(r['c_index_hi'])}]</td><td>{_fmt(r['c_index_uno'])}</td>"
                       f"<td>{html.escape(r['vs_best_unimodal'])}</td></tr>" for r in rows) + "</table>")
    sections = "".join(f"<details id='{html.escape(h)}'><summary>{html.escape(h)}</summary>"
                       f"{head_section(run.metrics, f'{h}.')}</details>" for h, run in runs.items())
    (out / "report.html").write_text(page("fusion bench (survival)", answer + board + cohort_section(
        first, f"{first['head']}.") + sections, first.get("simulated", False), METHOD))
