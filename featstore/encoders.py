"""Patch encoders in a registry (as timm does for models) and the one place weights are resolved.

Weights are never downloaded here: ``imagenet`` looks in the torch hub cache, a path is loaded with
``weights_only=True``, and ``random`` is a seeded initialisation recorded as ``random:<seed>``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from featstore.errors import WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's IMAGENET1K_V1 ResNet-50 (what CLAM, TRIDENT's resnet50_trunc and the original study use).
RESNET50_IMAGENET_FILE = "resnet50-0676ba61.pth"


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    dim: int
    build: Callable[[], tuple[nn.Module, Callable[[nn.Module], nn.Module]]]
    description: str
    imagenet_file: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in ENCODERS:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    ENCODERS[spec.name] = spec
    return spec


def list_encoders() -> list[str]:
    return sorted(ENCODERS)


def _resnet50_full():
    from torchvision.models import resnet50

    def head(m: nn.Module) -> nn.Module:
        m.fc = nn.Identity()  # global average pool of layer4: 2048-d
        return m

    return resnet50(weights=None), head


def _resnet50_trunc():
    from torchvision.models import resnet50

    def head(m: nn.Module) -> nn.Module:
        return nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3,
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())

    return resnet50(weights=None), head


register_encoder(EncoderSpec(
    "resnet50", 2048, _resnet50_full,
    "torchvision ResNet-50, global average pool of layer4 (the original study's features)",
    imagenet_file=RESNET50_IMAGENET_FILE,
))
register_encoder(EncoderSpec(
    "resnet50-trunc", 1024, _resnet50_trunc,
    "torchvision ResNet-50 up to layer3, average pooled (CLAM / TRIDENT resnet50_trunc compatible)",
    imagenet_file=RESNET50_IMAGENET_FILE,
))


@dataclass
class Encoder:
    """A built encoder, ready for inference, and the facts that go into provenance."""

    name: str
    model: nn.Module
    dim: int
    weights_id: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def provenance(self) -> dict:
        return {"encoder": self.name, "dim": self.dim, "weights": self.weights_id,
                "mean": list(self.mean), "std": list(self.std)}


def imagenet_weights_path(spec: EncoderSpec) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / (spec.imagenet_file or f"{spec.name}.pth")


def resolve_weights(spec: EncoderSpec, weights: str, seed: int = 0) -> tuple[dict | None, str]:
    """State dict (None for random init) and a weights identity for provenance."""
    from featstore.provenance import sha256_file

    if weights == "random":
        return None, f"random:{seed}"
    if weights == "imagenet":
        if spec.imagenet_file is None:
            raise WeightsError(f"encoder {spec.name!r} has no ImageNet weights")
        path = imagenet_weights_path(spec)
        if not path.exists():
            raise WeightsError(
                f"ImageNet weights for {spec.name!r} not found: {path} does not exist, and nothing is downloaded "
                f"at run time. Put torchvision's {spec.imagenet_file} there (or point TORCH_HOME at a folder "
                f"with hub/checkpoints/{spec.imagenet_file}), or pass --weights PATH to a state dict, or "
                "--weights random for a dry run"
            )
    else:
        path = Path(weights)
        if not path.exists():
            raise WeightsError(f"--weights {weights}: no such file; give a state-dict path, 'imagenet' (read from "
                               f"{imagenet_weights_path(spec)}) or 'random' for a dry run")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot load weights {path} as a state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, f"sha256:{sha256_file(path)}"


def build_encoder(name: str, weights: str = "random", seed: int = 0) -> Encoder:
    """Build a registered encoder in eval mode with the given weights (see module docstring)."""
    if name not in ENCODERS:
        raise KeyError(f"unknown encoder {name!r}; registered: {list_encoders()}")
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
        # Drop the classifier so a backbone-only state dict loads too; everything else must match.
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        own = backbone.state_dict()
        wrong = [f"{k}: {tuple(v.shape)}, the encoder's {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise WeightsError(f"weights do not fit {name!r}: {len(wrong)} tensors have another shape (e.g. {wrong[:3]})")
        missing, unexpected = backbone.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise WeightsError(
                f"weights do not fit {name!r}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
            )
    model = head(backbone).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Encoder(name, model, spec.dim, weights_id, spec.mean, spec.std)
