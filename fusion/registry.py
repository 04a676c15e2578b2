"""The head registry, as timm has for models: a name, the inputs a head uses, its kind, and its builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GENES, IMAGE = "genes", "image"
CLASS_TARGETS = ("binary", "multiclass")  # the targets of a head that trains two classes or a softmax over C
TORCH_TARGETS = (*CLASS_TARGETS, "survival")  # the torch heads: a survival outcome through the Cox loss too


@dataclass(frozen=True)
class HeadSpec:
    name: str
    modalities: frozenset[str]
    kind: str  # "torch" or "sklearn"
    build: Callable
    summary: str
    targets: frozenset[str] = frozenset({"binary"})  # "binary" (two classes), "multiclass" and/or "survival"

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1


HEADS: dict[str, HeadSpec] = {}


def register_head(name: str, modalities: set[str], kind: str, summary: str, targets: tuple[str, ...] = ("binary",)):
    def deco(build):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = HeadSpec(name, frozenset(modalities), kind, build, summary, frozenset(targets))
        return build
    return deco


def list_heads(target: str | None = None) -> list[str]:
    """Every registered head, or those that train ``target`` ("binary", "multiclass" or "survival")."""
    return [n for n, s in HEADS.items() if target is None or target in s.targets]


def get_head(name: str) -> HeadSpec:
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; registered: {', '.join(HEADS)}")
    return HEADS[name]
