"""The scikit-learn / XGBoost heads: the bars every learned head has to clear."""

from __future__ import annotations

import numpy as np

import fusion.heads  # noqa: F401 - the torch heads register first, whichever module is imported first
from fusion.logistic import fit_logistic, fit_stack, linear_weights
from fusion.multinomial import SoftmaxPredictor, balanced_weights, fit_multinomial, fit_multinomial_stack
from fusion.registry import CLASS_TARGETS, GENES, IMAGE, register_head
from fusion.survival import is_survival

# ---- sklearn / XGBoost baselines ----------------------------------------------------------------------
# A builder ``(*, seed, threads)`` (and ``classes=C`` for a target of C > 2 classes) returns ``fit(inputs, y, train,
# val) -> (predictor, parameter count)``, where ``predictor(inputs)`` gives P(positive) for every row, or (rows, C)
# class probabilities. ``inputs`` maps a modality to one row per patient
# (genes: the fold-locally scaled genes; image: the bag mean of the fold-locally projected tokens); only
# the ``train``/``val`` rows are fitted on. A predictor saves itself as plain arrays (``arrays()``, read back
# by ``load_predictor``; XGBoost as its own JSON), never as a pickle, so every head can be deployed.


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


class LinearPredictor:
    """Logistic models as arrays: ``w[j]`` (one weight per input column, zeros where a model was left out
    or screened a column out) and ``b[j]`` per input ``modalities[j]``, combined as ``coef @ logits + bias``
    (one input: coef 1, bias 0; ``stack``: its meta-learner)."""

    def __init__(self, modalities: list[str], w: list[np.ndarray], b: np.ndarray, coef: np.ndarray, bias: float):
        self.modalities, self.w, self.b = modalities, [np.asarray(v, float) for v in w], np.asarray(b, float)
        self.coef, self.bias = np.asarray(coef, float), float(bias)

    @classmethod
    def of(cls, modalities: list[str], models: list, dims: list[int], coef=(1.0,), bias: float = 0.0):
        """From fitted ``fit_logistic`` models (None: an input that predicts nothing)."""
        w, b = zip(*(linear_weights(m) if m is not None else (np.zeros(d), 0.0) for m, d in zip(models, dims)))
        return cls(modalities, list(w), np.array(b), np.asarray(coef, float), bias)

    def logit(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        logits = np.stack([inputs[m] @ w + b for m, w, b in zip(self.modalities, self.w, self.b)], axis=1)
        return logits @ self.coef + self.bias

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return _sigmoid(self.logit(inputs))

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"w_{m}": w for m, w in zip(self.modalities, self.w)}, "b": self.b, "coef": self.coef,
                "bias": np.array(self.bias)}


class XGBoostPredictor:
    def __init__(self, booster, margin: bool = False):
        self.booster, self.margin = booster, margin  # margin: the raw score (survival:cox's log hazard ratio)

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        from xgboost import DMatrix

        return self.booster.predict(DMatrix(inputs[GENES]), output_margin=self.margin)

    def arrays(self) -> dict[str, np.ndarray]:
        # XGBoost's own JSON model format, as bytes: no pickle, readable by any XGBoost.
        return {"xgboost_json": np.frombuffer(bytes(self.booster.save_raw("json")), np.uint8)}


def load_predictor(arrays: dict[str, np.ndarray], modalities: list[str], risk: bool = False):
    """A predictor back from ``arrays()``; ``risk``: a survival model's, which predicts the linear risk itself."""
    if "xgboost_json" in arrays:
        from xgboost import Booster

        booster = Booster()
        booster.load_model(bytearray(arrays["xgboost_json"].tobytes()))
        return XGBoostPredictor(booster, margin=risk)
    if "softmax_coef" in arrays:
        return SoftmaxPredictor.from_arrays(arrays, modalities)
    order = sorted(modalities)
    from fusion.cox import RiskPredictor  # here: fusion.cox builds on this module

    kind = RiskPredictor if risk else LinearPredictor
    return kind(order, [arrays[f"w_{m}"] for m in order], arrays["b"], arrays["coef"], float(arrays["bias"]))


@register_head("logreg", {GENES}, "sklearn",
               "Logistic regression on the fold-locally scaled genes (scikit-learn): L1 or L2 at several strengths, "
               "or L2 on the genes of largest F statistic, chosen by inner CV on the fold's training part; "
               "multinomial (softmax) for more than two classes.", CLASS_TARGETS)
def _logreg(*, seed: int, threads: int, classes: int = 2):
    return _linear(GENES, seed, classes)


@register_head("image_logreg", {IMAGE}, "sklearn",
               "Logistic regression on the bag mean of the fold-locally projected tokens, L1 or L2 and its "
               "strength chosen by inner CV: the linear bar for the image, as logreg is for the genes.", CLASS_TARGETS)
def _image_logreg(*, seed: int, threads: int, classes: int = 2):
    return _linear(IMAGE, seed, classes)


def _linear(modality: str, seed: int, classes: int = 2):
    def fit(inputs, y, tr, val):
        rows, d = np.concatenate([tr, val]), inputs[modality].shape[1]
        if classes > 2:
            predictor = SoftmaxPredictor.of([modality], [fit_multinomial(inputs[modality], y, rows, classes, seed)],
                                            [d], classes)
            return predictor, predictor.n_weights()
        model = fit_logistic(inputs[modality], y, rows, seed)
        return LinearPredictor.of([modality], [model], [d]), 1 + (0 if model is None else _n_weights(model))
    return fit


def _n_weights(model) -> int:
    return int(np.count_nonzero(linear_weights(model)[0]))


@register_head("xgboost", {GENES}, "sklearn",
               "Gradient-boosted trees (XGBoost) with early stopping on the inner validation split; softmax "
               "objective for more than two classes, Cox's partial likelihood (survival:cox) for survival.",
               (*CLASS_TARGETS, "survival"))
def _xgboost(*, seed: int, threads: int, classes: int = 2):
    from xgboost import XGBClassifier, XGBRegressor

    def fit(inputs, y, tr, val):
        x, estimator, target = inputs[GENES], XGBClassifier, y
        if is_survival(y):  # XGBoost's survival label: the time, negative where it is censored
            estimator, target = XGBRegressor, np.where(y["event"], y["time"], -y["time"])
            weight, options = {}, {"objective": "survival:cox", "eval_metric": "cox-nloglik"}
        elif classes > 2:  # every class weighted as scale_pos_weight weighs two: balanced
            weight = {"sample_weight": balanced_weights(y[tr], classes)}
            options = {"objective": "multi:softprob", "num_class": classes, "eval_metric": "mlogloss"}
        else:
            pos = max(y[tr].sum(), 1)
            weight, options = {}, {"eval_metric": "logloss", "scale_pos_weight": (len(tr) - pos) / pos}
        model = estimator(n_estimators=400, learning_rate=0.05, max_depth=3, subsample=0.8,
                          colsample_bytree=0.5, early_stopping_rounds=30, random_state=seed, n_jobs=threads,
                          tree_method="hist", **options)
        model.fit(x[tr], target[tr], eval_set=[(x[val], target[val])], verbose=False, **weight)
        booster = model.get_booster()
        # A saved booster predicts with every tree; keep exactly the ones early stopping chose.
        booster = booster[: model.best_iteration + 1] if getattr(model, "best_iteration", None) is not None else booster
        # Parameters of a tree ensemble: its nodes (split or leaf), counted from the text dump.
        n_nodes = sum(tree.count("\n") for tree in booster.get_dump())
        return XGBoostPredictor(booster, margin=is_survival(y)), n_nodes
    return fit


@register_head("stack", {GENES, IMAGE}, "sklearn",
               "Stacking, the simplest learned late fusion: a gene logistic regression and an image logistic "
               "regression (on the bag mean), their inner-CV out-of-fold logits combined by a logistic "
               "meta-learner; everything fitted on the fold's training part.", CLASS_TARGETS)
def _stack(*, seed: int, threads: int, inner_folds: int = 5, classes: int = 2):
    def fit(inputs, y, tr, val):
        dims = [inputs[GENES].shape[1], inputs[IMAGE].shape[1]]
        if classes > 2:
            stack = fit_multinomial_stack([inputs[GENES], inputs[IMAGE]], y, np.concatenate([tr, val]), classes, seed,
                                          inner_folds)
            predictor = SoftmaxPredictor.of([GENES, IMAGE], stack.bases, dims, classes, stack.meta)
            return predictor, predictor.n_weights()
        stack = fit_stack([inputs[GENES], inputs[IMAGE]], y, np.concatenate([tr, val]), seed, inner_folds)
        predictor = LinearPredictor.of([GENES, IMAGE], stack.bases, dims, stack.meta_coef, stack.meta_intercept)
        return predictor, 3 + sum(1 + _n_weights(b) for b in stack.bases if b is not None)
    return fit


# The survival heads register after these (the order `fusion heads` lists).
from fusion import cox  # noqa: E402, F401
