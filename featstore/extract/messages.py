"""What the reader workers and the main process tell each other: small frozen records, handled with ``match``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from featstore.extract.plan import SlidePlan
from featstore.tiling import Geometry


@dataclass(frozen=True)
class Planned:
    """A slide's plan: its patch grid after the tissue mask; always before any of its rows."""

    slide: int
    plan: SlidePlan


@dataclass(frozen=True)
class Pixels:
    """Rows ``start`` to ``start + len(patches)`` of a slide, as uint8 NHWC patches."""

    slide: int
    start: int
    patches: torch.Tensor

    def pin_memory(self) -> Pixels:  # called by the DataLoader when it pins batches for a GPU
        return dataclasses.replace(self, patches=self.patches.pin_memory())


@dataclass(frozen=True)
class Coords:
    """Rows of a slide as level-0 coordinates, for the main process to decode on the device (--decoder gpu)."""

    slide: int
    start: int
    coords: np.ndarray


@dataclass(frozen=True)
class Failed:
    """A slide that cannot be read; nothing more of it follows."""

    slide: int
    reason: str


@dataclass(frozen=True)
class Split:
    """Rows ``first`` to ``end`` of a slide are not read by the worker that claimed it: the main process hands
    them out in ranges of ``size`` rows to idle workers."""

    slide: int
    first: int
    end: int
    size: int

    @property
    def ranges(self) -> int:
        return -(-(self.end - self.first) // self.size)


@dataclass(frozen=True)
class Range:
    """To a worker: read these rows of a slide someone else planned."""

    slide: int
    start: int
    coords: np.ndarray
    geometry: Geometry
