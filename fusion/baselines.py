"""The scikit-learn / XGBoost heads: the bars every learned head has to clear."""

from __future__ import annotations

import numpy as np

from fusion.logistic import _logit, fit_logistic, fit_stack, linear_weights
from fusion.registry import GENES, IMAGE, register_head

# ---- sklearn / XGBoost baselines ----------------------------------------------------------------------
# A builder ``(*, seed, threads)`` returns ``fit(inputs, y, train, val) -> (predict, parameter count)``, where
# ``predict(inputs)`` gives P(positive) for every row. ``inputs`` maps a modality to one row per patient
# (genes: the fold-locally scaled genes; image: the bag mean of the fold-locally projected tokens); only
# the ``train``/``val`` rows are fitted on.


@register_head("logreg", {GENES}, "sklearn",
               "Logistic regression on the fold-locally scaled genes (scikit-learn): L1 or L2 at several strengths, "
               "or L2 on the genes of largest F statistic, chosen by inner CV on the fold's training part.")
def _logreg(*, seed: int, threads: int):
    return _linear(GENES, seed)


@register_head("image_logreg", {IMAGE}, "sklearn",
               "Logistic regression on the bag mean of the fold-locally projected tokens, L1 or L2 and its "
               "strength chosen by inner CV: the linear bar for the image, as logreg is for the genes.")
def _image_logreg(*, seed: int, threads: int):
    return _linear(IMAGE, seed)


def _linear(modality: str, seed: int):
    def fit(inputs, y, tr, val):
        model = fit_logistic(inputs[modality], y, np.concatenate([tr, val]), seed)
        return ((lambda inp: 1 / (1 + np.exp(-_logit(model, inp[modality])))),
                1 + (0 if model is None else _n_weights(model)))
    return fit


def _n_weights(model) -> int:
    return int(np.count_nonzero(linear_weights(model)[0]))


@register_head("xgboost", {GENES}, "sklearn",
               "Gradient-boosted trees (XGBoost) with early stopping on the inner validation split.")
def _xgboost(*, seed: int, threads: int):
    from xgboost import XGBClassifier

    def fit(inputs, y, tr, val):
        x = inputs[GENES]
        pos = max(y[tr].sum(), 1)
        model = XGBClassifier(n_estimators=400, learning_rate=0.05, max_depth=3, subsample=0.8,
                              colsample_bytree=0.5, early_stopping_rounds=30, eval_metric="logloss",
                              scale_pos_weight=(len(tr) - pos) / pos, random_state=seed, n_jobs=threads,
                              tree_method="hist")
        model.fit(x[tr], y[tr], eval_set=[(x[val], y[val])], verbose=False)
        # Parameters of a tree ensemble: its nodes (split or leaf), counted from the text dump.
        n_nodes = sum(tree.count("\n") for tree in model.get_booster().get_dump())
        return (lambda inp: model.predict_proba(inp[GENES])[:, 1]), n_nodes
    return fit


@register_head("stack", {GENES, IMAGE}, "sklearn",
               "Stacking, the simplest learned late fusion: a gene logistic regression and an image logistic "
               "regression (on the bag mean), their inner-CV out-of-fold logits combined by a logistic "
               "meta-learner; everything fitted on the fold's training part.")
def _stack(*, seed: int, threads: int, inner_folds: int = 5):
    def fit(inputs, y, tr, val):
        stack = fit_stack([inputs[GENES], inputs[IMAGE]], y, np.concatenate([tr, val]), seed, inner_folds)

        def predict(inp):
            return 1 / (1 + np.exp(-stack.decision_function([inp[GENES], inp[IMAGE]])))
        return predict, 3 + sum(1 + _n_weights(b) for b in stack.bases if b is not None)
    return fit
