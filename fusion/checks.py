"""What a run checks besides its metrics: whether having a modality predicts the label by itself (``--missing
mask``), whether a head trains the run's target, and whether a multimodal head uses each input (the modality
check)."""

from __future__ import annotations

import numpy as np

from fusion.cohort import Cohort
from fusion.heads import GENES, IMAGE, get_head, list_heads
from fusion.metrics import headline, permutation_importance
from fusion.train import CVResult

LEAK_AUC = 0.6


def missingness_leak(cohort: Cohort, modalities: frozenset[str]) -> dict | None:
    """With ``--missing mask``, whether having a modality at all predicts the label: if only one class has
    images, "has an image" is a perfect classifier and a head will score it. ROC-AUC of each presence
    indicator (either direction); above LEAK_AUC it is reported."""
    from fusion.metrics import roc_auc

    present = {GENES: cohort.has_genes, IMAGE: cohort.has_image}
    aucs = {}
    for m in sorted(modalities):
        if present[m].all() or not present[m].any():
            continue
        # Each class against the rest (for two classes, the positive one): the class presence tells best.
        cuts = range(len(cohort.classes)) if cohort.target == "multiclass" else [1]
        a = np.array([roc_auc((cohort.strata == k).astype(int), present[m].astype(float))[0] for k in cuts])
        aucs[m] = float(np.max(np.maximum(a, 1 - a)))
    worst = max(aucs, key=aucs.get, default=None)
    if worst is None or aucs[worst] <= LEAK_AUC:
        return None
    return {"presence_roc_auc": aucs, "warning": (
        f"WARNING: whether a patient has {worst} data predicts the label by itself (ROC-AUC {aucs[worst]:.3f} > "
        f"{LEAK_AUC}); with --missing mask a head can score that instead of the data. Use --missing drop, or "
        "make missingness unrelated to the label")}


def check_target(head: str, target: str) -> None:
    """A head trains the targets it was registered for; any other is refused, naming the heads that do."""
    if target not in get_head(head).targets:
        raise ValueError(f"head {head!r} does not train {target} targets; the heads that do: "
                         f"{', '.join(list_heads(target))}")


def modality_check(y: np.ndarray, result: CVResult, opts) -> dict:
    """Permutation importance of each input of a multimodal head, in the target's headline metric (ROC-AUC or
    c-index), with a verdict in words; ``drop`` is the fall in that metric."""
    metric = headline(y)
    out = {m: permutation_importance(y, result.oof, pred, metric, resamples=opts.bootstrap, seed=opts.seed)
           for m, pred in result.permuted.items()}
    for modality, chk in out.items():
        chk["drop"] = chk[f"{metric}_drop"]
        chk["verdict"] = (f"{modality} informative" if chk["informative"] else f"{modality} adds nothing measurable")
    return out
