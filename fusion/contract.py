"""One contract for every head, as scikit-learn has one for estimators and timm one ``create_model``.

``create_head(name)`` gives a ``Head``; ``head.fit(data, y, cfg)`` fits its M fold models together (``FoldData``:
every fold of every repeat, each preprocessed on its own training rows) and returns a ``Fitted`` with the
predictions its calibration and threshold are fitted on; a ``Fitted`` predicts any rows of any ``FoldData``
(``permute``: the modality check's shuffles), says what its rules decided (``verdicts``), counts its
parameters, and saves each of its models as plain arrays. ``head.load(folder)`` reads one back.

Two adapters sit behind it: ``TorchHead`` (the all-folds-at-once training loop of ``fusion.train``) and
``EstimatorHead`` (the scikit-learn / XGBoost baselines of ``fusion.baselines``, one fit per fold model). Who
trains, cross-validates, saves or predicts never asks which kind a head is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from featstore.errors import StoreError

# Through fusion.heads, which registers the torch heads and then the baselines: the registry's order is the
# order `fusion heads` lists and `fusion bench` runs.
from fusion.heads import GENES, IMAGE, HeadSpec, get_head


class Fitted(Protocol):
    n_params: int  # per fold model
    epochs: list[int]  # per fold model (0 for a head fitted in one go)
    verdicts: dict[str, list[bool]]  # what the trainer's rules decided, per fold model (metrics.json)

    def predict(self, data, rows: torch.Tensor, permute: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """P(positive), float64, of rows ``(M, R)`` of ``data`` by each of the M models, or (M, R, C) class
        probabilities for a target of C > 2 classes; ``permute`` maps a modality to an (M, P) row map per model
        (that input shuffled)."""

    def save(self, i: int, out: Path) -> None:
        """Model ``i``'s parameters into the model folder ``out``."""


class Head(Protocol):
    spec: HeadSpec

    def fit(self, data, y: np.ndarray, cfg, on_epoch=None) -> tuple[Fitted, list[np.ndarray]]:
        """The M models fitted on their inner-training rows (and validation rows where the head uses them), and
        each model's P(positive) on its inner-validation rows, predicted while those were held out."""

    def load(self, path: Path, meta: dict) -> Fitted:
        """One saved model (M=1) back from its folder."""


def probabilities(logits: torch.Tensor, risk: bool = False) -> np.ndarray:
    """P(positive) of (M, R) logits, class probabilities of (M, R, C) ones, or with ``risk`` the logits themselves
    (a survival head's risk), as float64: float32's sigmoid is exactly 1.0 past a logit of ~17, and those ties
    flatten PR curves."""
    logits = logits.double()
    if risk:
        return logits.numpy()
    return (torch.softmax(logits, -1) if logits.dim() == 3 else torch.sigmoid(logits)).numpy()


@dataclass
class TorchFitted:
    module: torch.nn.Module  # M models stacked on a leading axis
    n_params: int
    epochs: list[int]
    verdicts: dict[str, list[bool]] = field(default_factory=dict)
    risk: bool = False  # a survival head: its output is the risk itself

    def predict(self, data, rows, permute=None):
        from fusion.train import _predict

        return probabilities(_predict(self.module, data, rows, perm=permute), self.risk)

    def save(self, i, out):
        m = len(self.epochs)
        state = {k: (v[i:i + 1] if v.dim() and v.shape[0] == m else v).clone() for k, v in self.module.state_dict().items()}
        torch.save(state, out / "weights.pt")


@dataclass
class TorchHead:
    spec: HeadSpec
    kwargs: dict = field(default_factory=dict)

    def fit(self, data, y, cfg, on_epoch=None):
        from fusion.train import _padded, train_torch

        kwargs = self.kwargs | ({"outputs": data.n_classes} if data.n_classes > 2 else {})
        module, epochs, val_logits = train_torch(self.spec, data, y, cfg, kwargs, on_epoch)
        verdicts = {name: getattr(module, attr) for name, attr in (("trained_kept", "trained_kept"),
                                                                   ("fusion_term_kept", "fusion_kept"))
                    if getattr(module, attr, None) is not None}
        n_params = sum(p.numel() for p in module.parameters()) // len(data.test)
        _, val_valid = _padded(data.val)
        risk = data.target == "survival"
        vp = probabilities(val_logits, risk)
        return (TorchFitted(module, int(n_params), epochs, verdicts, risk),
                [vp[i, val_valid[i].numpy()] for i in range(len(data.val))])

    def load(self, path, meta):
        outputs = {"outputs": len(meta["classes"])} if len(meta["classes"]) > 2 else {}
        module = self.spec.build(1, meta["gene_dim"], meta["token_dim"], snn=bool(meta["train"].get("snn")),
                                 **outputs, **self.kwargs)
        try:
            module.load_state_dict(torch.load(path / "weights.pt", weights_only=True))
        except Exception as exc:  # a pickle refused, a truncated file, a tensor of another shape: one line each
            raise StoreError(f"{path}/weights.pt does not hold this model's weights "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]})") from exc
        module.eval()
        return TorchFitted(module, sum(p.numel() for p in module.parameters()), [0],
                           risk=meta.get("target") == "survival")


def estimator_inputs(data, i: int, modalities) -> dict[str, np.ndarray]:
    """What the baselines see of model ``i``: its scaled genes, and the bag mean of its projected tokens
    (zeros for a patient without image)."""
    from fusion.train import bag_means

    inputs = {GENES: data.genes[i].numpy()}
    if IMAGE in modalities:
        inputs[IMAGE] = bag_means(data, i)
    return inputs


@dataclass
class EstimatorFitted:
    predictors: list  # one per fold model: LinearPredictor or XGBoostPredictor
    modalities: frozenset
    n_params: int
    epochs: list[int]
    verdicts: dict[str, list[bool]] = field(default_factory=dict)

    def predict(self, data, rows, permute=None):
        out = []
        for i, predictor in enumerate(self.predictors):
            inputs = estimator_inputs(data, i, self.modalities)
            if permute:
                inputs = {m: (v[permute[m][i].numpy()] if m in permute else v) for m, v in inputs.items()}
            out.append(predictor(inputs)[rows[i].numpy()])
        return np.stack(out).astype(np.float64)

    def save(self, i, out):
        # Plain arrays (XGBoost's own JSON among them), never a pickle.
        np.savez(out / "head.npz", **self.predictors[i].arrays())


@dataclass
class EstimatorHead:
    spec: HeadSpec
    kwargs: dict = field(default_factory=dict)

    def fit(self, data, y, cfg, on_epoch=None):
        # XGBoost on as many threads as torch: its hist trees are the same on any number of threads (measured
        # bitwise), only faster.
        classes = {"classes": data.n_classes} if data.n_classes > 2 else {}
        fit = self.spec.build(seed=cfg.seed, threads=cfg.threads or torch.get_num_threads(), **classes, **self.kwargs)
        predictors, val_probs, n_params = [], [], 0
        for i in range(len(data.test)):
            inputs = estimator_inputs(data, i, self.spec.modalities)
            predictor, n_params = fit(inputs, y, data.train[i], data.val[i])
            predictors.append(predictor)
            val_probs.append(predictor(inputs)[data.val[i]])
        return EstimatorFitted(predictors, self.spec.modalities, int(n_params), [0] * len(data.test)), val_probs

    def load(self, path, meta):
        from fusion.baselines import LinearPredictor, load_predictor
        from fusion.multinomial import SoftmaxPredictor

        try:
            with np.load(path / "head.npz", allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            predictor = load_predictor(arrays, meta["modalities"], meta.get("target") == "survival")
        except Exception as exc:  # a pickle refused, a truncated file, arrays missing: one line
            raise StoreError(f"{path}/head.npz does not hold this model's arrays ({type(exc).__name__}: {exc})") from exc
        if isinstance(predictor, (LinearPredictor, SoftmaxPredictor)):
            dims = {GENES: meta["gene_dim"], IMAGE: meta["token_dim"]}
            per_class = (len(meta["classes"]),) if isinstance(predictor, SoftmaxPredictor) else ()
            for modality, w in zip(predictor.modalities, predictor.w):
                if w.shape != (dims[modality], *per_class):
                    raise StoreError(f"{path}/head.npz: the {modality} weights have shape {w.shape}, the model's "
                                     f"inputs {(dims[modality], *per_class)}")
        return EstimatorFitted([predictor], self.spec.modalities, 0, [0])


_ADAPTERS = {"torch": TorchHead, "sklearn": EstimatorHead}


def create_head(name: str, **kwargs) -> Head:
    """The head registered as ``name``, behind the one contract; ``kwargs`` go to its builder."""
    spec = get_head(name)
    return _ADAPTERS[spec.kind](spec, kwargs)
