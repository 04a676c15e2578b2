"""The genes a head's gene branch leans on: its linear gene weights, per standard deviation of each gene (the genes
are z-scored fold-locally), averaged over the fold models, for every head with a linear gene model: logreg, stack,
coxnet, stack_cox, and the fusion heads' linear gene logit (the stacked gene model they start from). A head
without one (XGBoost, gene_mlp) reports none rather than an attribution of another kind."""

from __future__ import annotations

import numpy as np

from fusion.registry import GENES

TOP = 20


def linear_gene_weights(models, i: int) -> np.ndarray | None:
    """Model ``i``'s weight of each of its gene columns, in its output's units ((columns,), or (columns, C) for C
    classes), the meta-learner's weighting included; None for a head without a linear gene model."""
    from fusion.baselines import LinearPredictor
    from fusion.multinomial import SoftmaxPredictor

    predictors = getattr(models, "predictors", None)
    if predictors is not None:
        p = predictors[i]
        if GENES not in getattr(p, "modalities", ()):
            return None
        j = p.modalities.index(GENES)
        if isinstance(p, SoftmaxPredictor):
            c = p.bias.shape[0]
            return p.w[j] @ p.coef[j * c:(j + 1) * c]
        return p.w[j] * p.coef[j] if isinstance(p, LinearPredictor) else None
    genes = getattr(getattr(models, "module", None), "genes", None)
    if genes is None or not hasattr(genes, "logit"):
        return None
    w = genes.logit.weight[i].detach().double().numpy()
    return w[:, 0] if w.shape[1] == 1 else w


def top_genes(result, gene_ids: list[str], classes: tuple[str, ...], k: int = TOP) -> dict | None:
    """The ``k`` genes of largest mean weight (for C classes: of largest mean weight for any class), each with its
    mean weight (per class) and the share of fold models that weigh it at all; None for a head without a linear
    gene model."""
    per_model = []
    for i, rec in enumerate(result.fitted):
        w = linear_gene_weights(result.models, i)
        if w is None or "gene_transform" not in rec:
            return None
        full = np.zeros((len(gene_ids),) + w.shape[1:])
        full[rec["gene_transform"].columns] = w
        per_model.append(full)
    weights = np.stack(per_model)  # (models, genes[, C])
    mean = weights.mean(0)
    size = np.abs(mean) if mean.ndim == 1 else np.abs(mean).max(1)
    order = [j for j in np.argsort(-size, kind="stable")[:k] if size[j] > 0]
    nonzero = (np.abs(weights) > 0).reshape(len(weights), len(gene_ids), -1).any(2).mean(0)
    rows = [{"gene": gene_ids[j], "models_weighing_it": float(nonzero[j]),
             "weight": float(mean[j]) if mean.ndim == 1 else dict(zip(classes, map(float, mean[j])))}
            for j in order]
    return {"genes": rows, "of": f"linear gene weight per standard deviation, mean over {len(weights)} fold models"}
