"""Patch encoders in a registry (as timm does for models) and the one place weights are resolved.

An :class:`EncoderSpec` says what an encoder is: its architecture (torchvision, or a timm model name and its
keyword arguments), how the embedding is read out, its dim, input size, native mpp, normalisation and the
precision its authors run it in. The pathology foundation models are presets (``featstore/encoder_presets.py``,
named as TRIDENT names them) built with timm; ``featstore encoders`` lists them.

Weights are never downloaded here: ``imagenet`` looks in the torch hub cache (the ResNets), a path is a local
``.safetensors``, ``.bin``/``.pth`` state dict (loaded with ``weights_only=True``) or a Hugging Face cache folder
holding one, loaded strictly; ``random`` is a seeded initialisation recorded as ``random:<seed>``. The weights'
SHA-256 is the feature set's ``weights`` identity, so a resume or ``fusion predict`` refuses features made
from other weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from featstore.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V1 ResNet-50 (what CLAM, TRIDENT's resnet50_trunc and the original study use).
RESNET50_IMAGENET_FILE = "resnet50-0676ba61.pth"
READOUTS = ("pooled", "cls", "cls+mean")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what a Hugging Face model folder holds


@dataclass(frozen=True)
class EncoderSpec:
    """What an encoder is. ``build()`` returns the backbone (whose state dict the weights must fit) and a
    function that puts the readout on it."""

    name: str
    dim: int
    build: Callable[[], tuple[nn.Module, Callable[[nn.Module], nn.Module]]] = field(repr=False, compare=False)
    description: str
    architecture: str = ""  # "torchvision:resnet50" or "timm:<model name>"
    arch_kwargs: tuple[tuple[str, object], ...] = ()
    readout: str = "pooled"  # pooled (the model's own pooling), cls, cls+mean (CLS beside the mean patch token)
    input_size: int = 224  # the size it was trained at; --patch-size should match
    patch_multiple: int = 1  # a ViT's patch: the input side must be a multiple of it
    native_mpp: float | None = None  # the resolution its authors extract at (None: natural images)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    precision: str = "fp32"  # what its authors run it in on a GPU
    weights_from: str = ""  # where a user gets the weights (nothing here downloads them)
    imagenet_file: str | None = None

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"encoder {self.name!r}: readout must be one of {', '.join(READOUTS)}, got {self.readout!r}")

    def describe(self) -> dict:
        """The spec as provenance records it and ``featstore encoders`` lists it."""
        return {"name": self.name, "architecture": self.architecture,
                "arch_kwargs": {k: str(v) for k, v in self.arch_kwargs}, "readout": self.readout, "dim": self.dim,
                "input_size": self.input_size, "native_mpp": self.native_mpp, "mean": list(self.mean),
                "std": list(self.std), "precision": self.precision, "weights_from": self.weights_from}

    def input_problem(self, patch_size: int) -> str | None:
        """Why patches of ``patch_size`` px cannot go through this encoder, or None."""
        if patch_size % self.patch_multiple:
            return (f"--patch-size {patch_size} is not a multiple of {self.name}'s ViT patch of {self.patch_multiple} "
                    f"px; use {self.input_size} (the size it was trained at)")
        return None


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in ENCODERS:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    ENCODERS[spec.name] = spec
    return spec


def list_encoders() -> list[str]:
    return sorted(ENCODERS)


@dataclass
class Encoder:
    """A built encoder, ready for inference, and the facts that go into provenance."""

    name: str
    model: nn.Module
    dim: int
    weights_id: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    spec: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {"encoder": self.name, "dim": self.dim, "weights": self.weights_id,
                "mean": list(self.mean), "std": list(self.std), "encoder_spec": self.spec}


def imagenet_weights_path(spec: EncoderSpec) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / (spec.imagenet_file or f"{spec.name}.pth")


def weights_file(spec: EncoderSpec, weights: str) -> Path:
    """The one file ``weights`` names: itself, or the one weights file inside a (Hugging Face cache) folder."""
    path = Path(weights)
    if not path.exists():
        hint = (f"'imagenet' (read from {imagenet_weights_path(spec)}), " if spec.imagenet_file else "")
        raise WeightsError(f"--weights {weights}: no such file or folder; give a local weights file or folder, "
                           f"{hint}or 'random' for a dry run" + (f" ({spec.name}: {spec.weights_from})"
                                                                  if spec.weights_from else ""))
    if path.is_file():
        return path
    found = sorted({p.resolve() for n in WEIGHT_FILES for p in path.rglob(n)})
    if len(found) != 1:
        raise WeightsError(f"--weights {weights}: a folder must hold exactly one of {', '.join(WEIGHT_FILES)} "
                           f"(a Hugging Face model folder); found {len(found)}" +
                           (f": {', '.join(map(str, found[:3]))}" if found else ""))
    return found[0]


def load_state(path: Path) -> dict:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot load weights {path} as a state dict ({type(exc).__name__}: {exc}); is the file "
                           "complete?") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def resolve_weights(spec: EncoderSpec, weights: str, seed: int = 0) -> tuple[dict | None, str]:
    """State dict (None for random init) and a weights identity for provenance."""
    from featstore.provenance import sha256_file

    if weights == "random":
        return None, f"random:{seed}"
    if weights == "imagenet":
        if spec.imagenet_file is None:
            raise WeightsError(f"encoder {spec.name!r} needs --weights PATH: a local copy of its weights "
                               f"({spec.weights_from or 'a state dict'}), a file or its Hugging Face folder; nothing "
                               "is downloaded (--weights random for a dry run)")
        path = imagenet_weights_path(spec)
        if not path.exists():
            raise WeightsError(
                f"ImageNet weights for {spec.name!r} not found: {path} does not exist, and nothing is downloaded "
                f"at run time. Put torchvision's {spec.imagenet_file} there (or point TORCH_HOME at a folder "
                f"with hub/checkpoints/{spec.imagenet_file}), or pass --weights PATH to a state dict, or "
                "--weights random for a dry run"
            )
    else:
        path = weights_file(spec, weights)
    return load_state(path), f"sha256:{sha256_file(path)}"


def _fit(spec: EncoderSpec, backbone: nn.Module, state: dict) -> None:
    """Load ``state`` strictly: every tensor present and of the encoder's shape (a classifier head aside)."""
    own = backbone.state_dict()
    heads = ("fc.", "head.")  # a classifier the encoder does not use (num_classes=0)
    state = {k: v for k, v in state.items() if not (k.startswith(heads) and k not in own)}
    wrong = [f"{k}: {tuple(v.shape)}, expected {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state and not k.startswith(heads)]
    unexpected = [k for k in state if k not in own]
    if wrong or missing or unexpected:
        raise WeightsError(
            f"these weights do not fit the {spec.name!r} preset ({spec.architecture or spec.description}): "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:3]}); are they another model's?")
    backbone.load_state_dict(state, strict=False)  # checked above; a classifier left out stays unused


def build_encoder(name: str, weights: str = "random", seed: int = 0) -> Encoder:
    """Build a registered encoder in eval mode with the given weights (see module docstring)."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; registered: {list_encoders()} (featstore encoders lists them)")
    spec = ENCODERS[name]
    state, weights_id = resolve_weights(spec, weights, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, head = spec.build()
    if state is None:
        warnings.warn(
            f"encoder {name!r} uses seeded random weights ({weights_id}): features are for tests and demos, "
            "not for biology", stacklevel=2,
        )
    else:
        _fit(spec, backbone, state)
    model = head(backbone).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Encoder(name, model, spec.dim, weights_id, spec.mean, spec.std, spec.describe())


import featstore.encoder_presets  # noqa: E402, F401  (registers the presets; it needs the names above)
