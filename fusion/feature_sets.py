"""The encoder as a factor: every head on each of several feature sets of the same patients (say ResNet-50 and
UNI features of one cohort), on identical folds, and the difference between encoders per head with a paired
patient-bootstrap CI, the question users ask first when fusion gains differ between papers."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

from fusion.api import CVOptions, CVRun, _open_existing, bench, cohort_for
from fusion.metrics import paired_difference
from fusion.registry import list_heads


def bench_feature_sets(store_path, feature_sets: list[str], heads: list[str] | str = "all",
                       opts: CVOptions = CVOptions(), out: str | Path | None = None, on_head=None,
                       on_epoch=None) -> tuple[list[dict], dict[str, dict[str, CVRun]]]:
    """``bench`` on each feature set, then one row per head and feature set: its pooled ROC-AUC and, against the
    first feature set, the paired difference on the same patients and folds. The feature sets must cover the
    same patients (else the folds, and so the comparison, would differ)."""
    if len(feature_sets) < 2 or len(set(feature_sets)) != len(feature_sets):
        raise ValueError(f"--features needs two or more different feature sets to compare, got {feature_sets}")
    if opts.survival is not None:
        raise ValueError("--features a,b compares feature sets on two-class targets only for now; bench each "
                         "feature set with --survival on its own")
    names = list_heads("binary") if heads == "all" else list(heads)
    with _open_existing(store_path) as store:
        missing = [fs for fs in feature_sets if fs not in store.feature_sets()]
        if missing:
            raise ValueError(f"no feature set {', '.join(missing)} in {store.path} (it has: "
                             f"{', '.join(store.feature_sets()) or 'none'})")
        patients = {fs: cohort_for(store, names, dataclasses.replace(opts, features=fs)).patient_ids
                    for fs in feature_sets}
        encoders = {fs: str(store.feature_set_info(fs).get("config", {}).get("encoder", "?")) for fs in feature_sets}
    first = feature_sets[0]
    for fs in feature_sets[1:]:
        if list(patients[fs]) != list(patients[first]):
            only_a, only_b = set(patients[first]) - set(patients[fs]), set(patients[fs]) - set(patients[first])
            raise ValueError(f"feature sets {first} and {fs} cover different patients ({len(only_a)} only in {first}, "
                             f"{len(only_b)} only in {fs}, e.g. {sorted(only_a | only_b)[:3]}): extract the same slides "
                             "with both encoders, so every head is compared on the same patients and folds")
    runs = {}
    for fs in feature_sets:
        _, runs[fs] = bench(store_path, names, dataclasses.replace(opts, features=fs),
                            Path(out) / fs if out else None, on_head=on_head, on_epoch=on_epoch)
    rows = []
    for h in names:
        ref = runs[first][h]
        for fs in feature_sets:
            run = runs[fs][h]
            s = run.metrics["summary"]["roc_auc"]
            row = {"head": h, "features": fs, "encoder": encoders[fs], "roc_auc": s["pooled"],
                   "roc_auc_lo": s["ci95"][0], "roc_auc_hi": s["ci95"][1]}
            if fs != first:
                d = paired_difference(ref.cohort.y, run.result.oof, ref.result.oof, "roc_auc", opts.bootstrap, opts.seed)
                row.update({f"vs_{first}": d["difference"], f"vs_{first}_lo": d["ci95"][0],
                            f"vs_{first}_hi": d["ci95"][1], "within_noise": d["within_noise"]})
            rows.append(row)
    if out is not None:
        write_feature_sets(Path(out), rows, feature_sets, runs)
    return rows, runs


def table_cells(rows: list[dict], feature_sets: list[str], with_ci: bool) -> list[tuple[str, list[str]]]:
    """Per head, one cell per feature set: the ROC-AUC (with its CI when ``with_ci``) and, after the first
    feature set, the paired difference from it."""
    first = feature_sets[0]
    by = {(r["head"], r["features"]): r for r in rows}
    out = []
    for h in dict.fromkeys(r["head"] for r in rows):
        cells = []
        for fs in feature_sets:
            r = by[(h, fs)]
            cell = f"{r['roc_auc']:.3f}" + (f" [{r['roc_auc_lo']:.3f}, {r['roc_auc_hi']:.3f}]" if with_ci else "")
            if fs != first:
                cell += (f"; {r[f'vs_{first}']:+.3f} [{r[f'vs_{first}_lo']:+.3f}, {r[f'vs_{first}_hi']:+.3f}]"
                         + (" within noise" if r["within_noise"] else ""))
            cells.append(cell)
        out.append((h, cells))
    return out


def write_feature_sets(out: Path, rows: list[dict], feature_sets: list[str], runs: dict) -> None:
    """features.csv, features.md (heads x feature sets) and features.png (the differences with their CIs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = feature_sets[0]
    out.mkdir(parents=True, exist_ok=True)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with (out / "features.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, cols)
        w.writeheader()
        w.writerows(rows)
    heads = list(dict.fromkeys(r["head"] for r in rows))
    by = {(r["head"], r["features"]): r for r in rows}
    simulated = any(run.metrics.get("simulated") for fs in runs.values() for run in fs.values())
    lines = ["# Heads x feature sets" + (" [SIMULATED data]" if simulated else ""), "",
             f"Pooled out-of-fold ROC-AUC [95% CI] on the same patients and folds; for each feature set after the "
             f"first, its difference from {first} with a paired patient-bootstrap CI.", "",
             "| head | " + " | ".join(f"{fs} ({by[(heads[0], fs)]['encoder']})" for fs in feature_sets) + " |",
             "|---" * (len(feature_sets) + 1) + "|"]
    for h, cells in table_cells(rows, feature_sets, with_ci=True):
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    (out / "features.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(heads) * (len(feature_sets) - 1) + 1.5))
    y = 0
    labels = []
    for h in heads:
        for fs in feature_sets[1:]:
            r = by[(h, fs)]
            d, lo, hi = r[f"vs_{first}"], r[f"vs_{first}_lo"], r[f"vs_{first}_hi"]
            ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", color="tab:gray" if r["within_noise"] else "tab:blue")
            labels.append(f"{h}: {fs}")
            y += 1
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"ROC-AUC difference from {first} (paired 95% CI)")
    ax.set_title("feature sets compared per head" + (" [SIMULATED data]" if simulated else ""))
    fig.tight_layout()
    fig.savefig(out / "features.png", dpi=120)
    plt.close(fig)

