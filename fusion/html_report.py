"""report.html: one self-contained page per ``fusion cv`` / ``fusion bench`` run (inline PNGs and CSS, no
network), for a colleague to open from a USB stick.

Every number shown carries ``data-metric="<path in metrics.json>"`` and is that value rounded to 3
decimals, so a test can check the page against metrics.json in a real browser.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from fusion.metrics import METRICS, bootstrap_indices

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.banner{background:#b00020;color:#fff;padding:.6em 1em;font-weight:bold;border-radius:4px}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em}
.good{background:#e6f4ea}.bad{background:#fde7e9}.muted{color:#777}
img{max-width:100%;height:auto}.plots{display:flex;flex-wrap:wrap;gap:1em}
"""


# The page checks its own figures once loaded: a figure that failed to decode is said in a banner, and the
# count is left in <body data-figures="loaded/total"> (tests/test_report.py reads it in Chromium).
SELF_CHECK = """<script>
window.addEventListener("load", () => {
  const imgs = [...document.images], ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.figures = ok + "/" + imgs.length;
  if (ok < imgs.length) {
    const p = document.createElement("p");
    p.className = "banner";
    p.textContent = (imgs.length - ok) + " of " + imgs.length + " figures failed to load";
    document.body.prepend(p);
  }
});
</script>"""


def _fmt(v) -> str:
    if isinstance(v, (int, np.integer)):
        return str(v)
    return "–" if v is None else f"{v:.3f}"


def _num(path: str, value) -> str:
    return f'<span data-metric="{html.escape(path)}">{_fmt(value)}</span>'


def summary_rows(summary: dict, names, labels: dict[str, str], path) -> str:
    """Table rows: each metric's pooled value, 95% CI and fold mean ± sd, the numbers tagged with their place in
    metrics.json: ``path.<metric>``, or ``path(metric)`` for a function."""
    at = path if callable(path) else (lambda m: f"{path}.{m}")
    return "".join(
        f"<tr><td>{html.escape(labels.get(m, m))}</td><td>{_num(f'{at(m)}.pooled', s['pooled'])}</td>"
        f"<td>[{_num(f'{at(m)}.ci95.0', s['ci95'][0])}, {_num(f'{at(m)}.ci95.1', s['ci95'][1])}]</td>"
        f"<td>{_fmt(s['fold_mean'])} ± {_fmt(s['fold_std'])}</td></tr>"
        for m, s in ((m, summary[m]) for m in names))


def fold_table(folds: list[dict], names, labels: dict[str, str]) -> str:
    """The per-fold metrics, folded away."""
    rows = "".join(f"<tr><td>{f['repeat']}</td><td>{f['fold']}</td><td>{f['n_test']}</td>"
                   + "".join(f"<td>{_fmt(f[m])}</td>" for m in names) + "</tr>" for f in folds)
    return ("<details><summary>per fold</summary><table><tr><th>repeat</th><th>fold</th><th>patients</th>"
            + "".join(f"<th>{html.escape(labels.get(m, m))}</th>" for m in names) + f"</tr>{rows}</table></details>")


def top_genes_section(metrics: dict, p: str = "") -> str:
    """The genes the head's linear gene model leans on most (metrics.json ``top_genes``), folded away."""
    top = metrics.get("top_genes")
    if not top:
        return ""
    classes = list(top["genes"][0]["weight"]) if top["genes"] and isinstance(top["genes"][0]["weight"], dict) else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes) or "<th>weight</th>"
    rows = "".join(
        f"<tr><td>{html.escape(g['gene'])}</td>"
        + ("".join(f"<td>{_num(f'{p}top_genes.genes.{i}.weight.{c}', g['weight'][c])}</td>" for c in classes)
           if classes else f"<td>{_num(f'{p}top_genes.genes.{i}.weight', g['weight'])}</td>")
        + f"<td>{g['models_weighing_it']:.0%}</td></tr>" for i, g in enumerate(top["genes"]))
    return (f"<details><summary>top genes ({html.escape(top['of'])})</summary><table><tr><th>gene</th>{head}"
            f"<th>fold models weighing it</th></tr>{rows}</table></details>")


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(y: np.ndarray, p: np.ndarray, seed: int, resamples: int = 200) -> str:
    """ROC and PR curves of the pooled predictions with 95% patient-bootstrap bands; PR drawn as steps
    (scikit-learn's convention: tied scores are one threshold)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = _plt()
    grid = np.linspace(0, 1, 101)
    rocs, prs = [], []
    for idx in bootstrap_indices(len(y), resamples, seed):
        if y[idx].min() == y[idx].max():
            continue
        fpr, tpr, _ = roc_curve(y[idx], p[idx])
        rocs.append(np.interp(grid, fpr, tpr))
        prec, rec, _ = precision_recall_curve(y[idx], p[idx])
        prs.append(np.interp(grid, rec[::-1], prec[::-1]))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8))
    fpr, tpr, _ = roc_curve(y, p)
    a1.fill_between(grid, *np.percentile(rocs, [2.5, 97.5], axis=0), color="C0", alpha=0.2, label="95% bootstrap band")
    a1.plot(fpr, tpr, color="C0", label="pooled out-of-fold")
    a1.plot([0, 1], [0, 1], "k--", lw=0.6)
    a1.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    a1.legend(loc="lower right", fontsize=8)
    prec, rec, _ = precision_recall_curve(y, p)
    a2.fill_between(grid, *np.percentile(prs, [2.5, 97.5], axis=0), color="C1", alpha=0.2, step="post")
    a2.step(rec, prec, where="post", color="C1")
    a2.axhline(y.mean(), color="k", ls="--", lw=0.6)
    a2.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    fig.tight_layout()
    return _png(fig)


def _reliability(cal: dict) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    for key, colour in (("before", "C7"), ("after", "C2")):
        bins = cal[key]["bins"]
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", color=colour,
                label=f"{key} ({cal['method'] if key == 'after' else 'raw'}): ECE {cal[key]['ece']:.3f}")
    for b in cal["after"]["bins"]:  # how many patients each point stands on: a bin of 3 says little
        ax.annotate(str(b["n"]), (b["mean_predicted"], b["observed"]), textcoords="offset points", xytext=(4, -9),
                    fontsize=7, color="C2")
    ax.set(xlabel="mean predicted P(positive)", ylabel="observed share positive",
           title="reliability (patients per bin)", xlim=(0, 1),
           ylim=(0, 1))
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def _modality_bars(check: dict, label: str = "ROC-AUC") -> str:
    plt = _plt()
    names = sorted(check)
    drop = [check[m]["drop"] for m in names]
    # Error bar lengths from the point estimate; a percentile CI need not contain it (here it missed by one
    # ulp where shuffling a noise input moved nothing), and matplotlib refuses a negative length.
    lo = [max(0.0, check[m]["drop"] - check[m]["ci95"][0]) for m in names]
    hi = [max(0.0, check[m]["ci95"][1] - check[m]["drop"]) for m in names]
    fig, ax = plt.subplots(figsize=(4.2, 2.4))
    ax.barh(names, drop, xerr=[lo, hi], color=["C2" if check[m]["informative"] else "C7" for m in names], capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel=f"{label} drop when shuffled (95% CI)", title="modality check")
    fig.tight_layout()
    return _png(fig)


def head_section(result, metrics: dict, p: str = "") -> str:
    """One head: metrics with CIs, curves, per-fold table, operating point, calibration, modality check.
    ``p`` prefixes the data-metric paths (a bench page names the head's own metrics.json)."""
    name = metrics["head"]
    y, oof = result.y, np.nanmean(result.oof, axis=0)
    rows = "".join(
        f"<tr><td>{m}</td><td>{_num(f'{p}summary.{m}.pooled', s['pooled'])}</td>"
        f"<td>[{_num(f'{p}summary.{m}.ci95.0', s['ci95'][0])}, {_num(f'{p}summary.{m}.ci95.1', s['ci95'][1])}]</td>"
        f"<td>{_fmt(s['fold_mean'])} ± {_fmt(s['fold_std'])}</td></tr>"
        for m, s in ((m, metrics["summary"][m]) for m in METRICS))
    folds = "".join(
        f"<tr><td>{f['repeat']}</td><td>{f['fold']}</td><td>{f['n_test']}</td>"
        + "".join(f"<td>{_fmt(f[m])}</td>" for m in ("roc_auc", "pr_auc", "balanced_accuracy", "brier")) + "</tr>"
        for f in metrics["folds"])
    op = metrics["operating_point"]
    c = op["confusion"]
    cal = metrics["calibration"]
    out = [f'<section data-head="{html.escape(name)}"><h2>{html.escape(name)} '
           f'<span class="muted">({"+".join(metrics["modalities"])})</span></h2>']
    for w in metrics.get("warnings", []):
        out.append(f'<p class="warn">{html.escape(w)}</p>')
    out.append("<table><tr><th>metric</th><th>pooled out-of-fold</th><th>95% CI (patient bootstrap)</th>"
               f"<th>fold mean ± sd</th></tr>{rows}</table>")
    out.append(f'<div class="plots">{_curves(y, oof, metrics["split"]["seed"])}</div>')
    out.append("<h3>Per fold</h3><table><tr><th>repeat</th><th>fold</th><th>test patients</th><th>ROC-AUC</th>"
               f"<th>PR-AUC</th><th>bal. acc.</th><th>Brier</th></tr>{folds}</table>")
    out.append(
        "<h3>Operating point</h3><p>Each fold's threshold (this confusion matrix, F1 and accuracy) is chosen on its "
        f"own inner validation rows, never on its test fold ({html.escape(op['chosen_on'])}); thresholds: "
        + ", ".join(f"{t:.3f}" for t in np.ravel(op["thresholds"])) + ".</p>"
        f"<table><tr><th></th><th>predicted {html.escape(metrics['positive_class'])}</th>"
        f"<th>predicted {html.escape(metrics['negative_class'])}</th></tr>"
        f"<tr><td>true {html.escape(metrics['positive_class'])}</td><td>{_num(p + 'operating_point.confusion.tp', c['tp'])}</td>"
        f"<td>{_num(p + 'operating_point.confusion.fn', c['fn'])}</td></tr>"
        f"<tr><td>true {html.escape(metrics['negative_class'])}</td><td>{_num(p + 'operating_point.confusion.fp', c['fp'])}</td>"
        f"<td>{_num(p + 'operating_point.confusion.tn', c['tn'])}</td></tr></table>"
        f"<p>sensitivity {_num(f'{p}operating_point.sensitivity', op['sensitivity'])}, specificity "
        f"{_num(f'{p}operating_point.specificity', op['specificity'])}</p>")
    out.append(
        f"<h3>Calibration ({html.escape(cal['method'])}, fitted on {html.escape(cal['fitted_on'])})</h3><div class='plots'>"
        f"{_reliability(cal)}<p>Brier {_num(f'{p}calibration.after.brier', cal['after']['brier'])} "
        f"(raw {_num(f'{p}calibration.before.brier', cal['before']['brier'])}); ECE "
        f"{_num(f'{p}calibration.after.ece', cal['after']['ece'])} "
        f"(raw {_num(f'{p}calibration.before.ece', cal['before']['ece'])})</p></div>")
    out.append(top_genes_section(metrics, p))
    check = metrics.get("modality_check")
    if check:
        out.append(modality_section(check, p))
    out.append("</section>")
    return "\n".join(out)


def modality_section(check: dict, p: str = "", label: str = "ROC-AUC") -> str:
    """The modality check: each input's drop in ``label`` when shuffled, its CI and verdict."""
    verdicts = "; ".join(
        f"{m}: drop {_num(f'{p}modality_check.{m}.drop', v['drop'])} "
        f"[{_num(f'{p}modality_check.{m}.ci95.0', v['ci95'][0])}, {_num(f'{p}modality_check.{m}.ci95.1', v['ci95'][1])}]"
        f" <b class='{'good' if v['informative'] else 'bad'}'>{html.escape(v['verdict'])}</b>"
        for m, v in sorted(check.items()))
    return f"<h3>Modality check</h3><div class='plots'>{_modality_bars(check, label)}<p>{verdicts}</p></div>"


def cohort_section(metrics: dict, p: str = "") -> str:
    c, prov = metrics["cohort"], metrics.get("provenance", {})
    classes = ", ".join(f"{html.escape(k)}: {v}" for k, v in c["classes"].items())
    sites = prov.get("sites_per_class") or {}
    site_rows = "".join(f"<tr><td>{html.escape(s)}</td>" + "".join(f"<td>{n.get(k, 0)}</td>" for k in c["classes"])
                        + "</tr>" for s, n in sorted(sites.items()))
    excluded = ", ".join(f"{html.escape(str(k))}: {v}" for k, v in (c.get("excluded_labels") or {}).items()) or "none"
    out = ["<h2>Cohort</h2>",
           f"<p><span data-metric=\"{p}cohort.patients\">{c['patients']}</span> patients of {c['labelled_patients']} "
           f"labelled ({classes}{'' if c['positive_class'] is None else '; positive class ' + html.escape(c['positive_class'])})"
           ". Dropped for a missing modality: "
           f"{c['dropped_missing_modality']} (missing: {html.escape(c['missing'])}). Label rows excluded (Normal, "
           f"normal-tissue samples, unmapped): {excluded}. With genes: {c['with_genes']}, with image: {c['with_image']}, "
           f"slides: {c['slides']}. Genes: {html.escape(str(metrics['genes']))}.</p>"]
    if site_rows:
        out.append("<details><summary>patients per tissue source site and class</summary><table><tr><th>site</th>"
                   + "".join(f"<th>{html.escape(k)}</th>" for k in c["classes"]) + f"</tr>{site_rows}</table></details>")
    if prov:
        items = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
                        for k, v in prov.items() if k != "sites_per_class")
        out.append(f"<h3>Provenance</h3><table>{items}</table>")
    return "\n".join(out)


def page(title: str, body: str, simulated: bool,
         method: str = "calibration and thresholds are fitted on each fold's inner validation rows") -> str:
    banner = ("<p class='banner'>SIMULATED data: image bags and/or genes come from `fusion simulate`; these "
              "figures say nothing about biology.</p>") if simulated else ""
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{banner}{body}"
            "<p class='muted'>Every metric is computed on the pooled out-of-fold predictions of all patients with a "
            f"patient-level bootstrap 95% CI; {method}. Written by featstore + fusion.</p>{SELF_CHECK}</body></html>")


def write_cv_report(out: Path, result, metrics: dict) -> Path:
    body = cohort_section(metrics) + head_section(result, metrics)
    path = out / "report.html"
    path.write_text(page(f"fusion cv: {metrics['head']}", body, metrics.get("simulated", False)))
    return path


def verdicts(rows: list[dict], runs: dict, label: str = "ROC-AUC") -> list[str]:
    """One sentence per fusion head: what it adds over the best single-modality head (paired bootstrap CI of
    the difference in ``label`` on the same patients) and whether it uses each input (the modality check)."""
    best = next((r["head"] for r in rows if r["vs_best_unimodal"] == "best unimodal"), None)
    out = []
    for r in rows:
        ci = r.get("vs_best_unimodal_ci95")
        if best is None or "+" not in r["modalities"] or not ci:
            continue
        d = f"{r['vs_best_unimodal_difference']:+.3f} {label} [{ci[0]:+.3f}, {ci[1]:+.3f}]"
        if ci[0] > 0:
            sentence = f"{r['head']} adds {d} over the best single modality, {best}"
        elif ci[1] < 0:
            sentence = f"{r['head']} is below the best single modality, {best}, by {d}"
        else:
            sentence = f"{r['head']} is level with the best single modality, {best}: {d}, within noise"
        check = runs[r["head"]].metrics.get("modality_check", {})
        unused = [m for m, c in check.items() if not c["informative"]]
        sentence += ("; it uses both inputs" if check and not unused else
                     "; " + "; ".join(check[m]["verdict"] for m in unused) if unused else "")
        out.append(sentence + ".")
    return out


def forest(rows: list[dict], label: str = "ROC-AUC") -> str:
    """Every head's difference in ``label`` from the best single-modality head, with its paired 95% CI."""
    plt = _plt()
    shown = [r for r in rows if r.get("vs_best_unimodal_ci95") or r["vs_best_unimodal"] == "best unimodal"]
    fig, ax = plt.subplots(figsize=(6.2, 0.32 * len(shown) + 1.3))
    for i, r in enumerate(shown):
        d = r.get("vs_best_unimodal_difference") or 0.0
        lo, hi = r.get("vs_best_unimodal_ci95") or (0.0, 0.0)
        color = "C2" if lo > 0 else "C3" if hi < 0 else "C7"
        ax.errorbar(d, i, xerr=[[max(0.0, d - lo)], [max(0.0, hi - d)]], fmt="o", color=color, capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(shown)), [f"{r['head']} ({r['modalities']})" for r in shown])
    ax.invert_yaxis()
    ax.set(xlabel=f"{label} minus the best single modality's (paired 95% CI)")
    fig.tight_layout()
    return _png(fig)


def _best_per_modality(rows: list[dict], runs: dict) -> str:
    """ROC curves of the best head of each modality set (genes, image, both), overlaid."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    for k, mods in enumerate(dict.fromkeys(r["modalities"] for r in rows)):
        r = next(r for r in rows if r["modalities"] == mods)  # rows are sorted by ROC-AUC
        result = runs[r["head"]].result
        fpr, tpr, _ = roc_curve(result.y, np.nanmean(result.oof, axis=0))
        ax.plot(fpr, tpr, color=f"C{k}", label=f"{r['head']} ({mods}) {r['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="best head per modality")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return _png(fig)


def write_bench_report(out: Path, rows: list[dict], runs: dict, note: str) -> Path:
    first = next(iter(runs.values())).metrics
    lines = []
    for r in rows:
        diff = r.get("vs_best_unimodal_ci95")
        cls = "" if not diff else ("good" if diff[0] > 0 else "bad" if diff[1] < 0 else "")
        vs = (f"{r['vs_best_unimodal_difference']:+.3f} [{diff[0]:+.3f}, {diff[1]:+.3f}]" if diff else
              html.escape(r["vs_best_unimodal"]))
        lines.append(
            f"<tr data-head='{html.escape(r['head'])}'><td><a href='#{html.escape(r['head'])}'>{html.escape(r['head'])}</a>"
            f"</td><td>{html.escape(r['modalities'])}</td><td>{_num(r['head'] + '.summary.roc_auc.pooled', r['roc_auc'])} "
            f"[{_fmt(r['roc_auc_lo'])}, {_fmt(r['roc_auc_hi'])}]</td><td>{_fmt(r['pr_auc'])}</td>"
            f"<td>{_fmt(r['balanced_accuracy'])}</td><td class='{cls}'>{vs}</td>"
            f"<td style='text-align:left'>{html.escape(r.get('modality_check', ''))}</td></tr>")
    board = ("<h2>Leaderboard</h2><p>" + html.escape(note).replace("\n\n", "<br>") + "</p><table><tr><th>head</th>"
             "<th>modalities</th><th>ROC-AUC [95% CI]</th><th>PR-AUC</th><th>bal. acc.</th><th>vs best unimodal "
             "(paired bootstrap; green/red: CI excludes 0)</th><th>modality check</th></tr>" + "".join(lines)
             + "</table>")
    sentences = verdicts(rows, runs)
    answer = ("<h2>Does histology add to expression?</h2>"
              + ("<ul>" + "".join(f"<li class='verdict'>{html.escape(v)}</li>" for v in sentences) + "</ul>"
                 if sentences else "<p>No fusion head was run.</p>")
              + f"<div class='plots'>{forest(rows)}{_best_per_modality(rows, runs)}</div>")
    sections = "".join(f"<details id='{html.escape(h)}'><summary>{html.escape(h)}</summary>"
                       f"{head_section(run.result, run.metrics, f'{h}.')}</details>" for h, run in runs.items())
    path = out / "report.html"
    body = answer + board + cohort_section(first, f"{first['head']}.") + sections
    path.write_text(page("fusion bench", body, first.get("simulated", False)))
    return path
