"""The head registry, as timm has for models: a name, the inputs a head uses, its kind, and its builder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

GENES, IMAGE = "genes", "image"


@dataclass(frozen=True)
class HeadSpec:
    name: str
    modalities: frozenset[str]
    kind: str  # "torch" or "sklearn"
    build: Callable
    summary: str

    @property
    def multimodal(self) -> bool:
        return len(self.modalities) > 1


HEADS: dict[str, HeadSpec] = {}


def register_head(name: str, modalities: set[str], kind: str, summary: str):
    def deco(build):
        if name in HEADS:
            raise ValueError(f"head {name!r} is already registered")
        HEADS[name] = HeadSpec(name, frozenset(modalities), kind, build, summary)
        return build
    return deco


def list_heads() -> list[str]:
    return list(HEADS)


def get_head(name: str) -> HeadSpec:
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; registered: {', '.join(HEADS)}")
    return HEADS[name]
