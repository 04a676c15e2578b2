"""Records that travel in and out of the store."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

import numpy as np


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class ExpressionTable:
    """Samples x genes expression with the ids needed to join it to slides and labels."""

    values: np.ndarray  # (samples, genes) float32
    sample_ids: list[str]
    gene_ids: list[str]
    patient_ids: list[str]
    sample_types: list[str]  # two-digit TCGA code, or "" where unknown
    provenance: dict = field(default_factory=dict)


@dataclass
class LabelTable:
    """One label per patient, as read (``raw_labels``) and after the label map (``labels``)."""

    patient_ids: list[str]
    labels: list[str]
    raw_labels: list[str]
    provenance: dict = field(default_factory=dict)


@dataclass
class SurvivalTable:
    """One follow-up per patient: ``time`` (in ``provenance["time_unit"]``) and whether it ended in the event
    (``True``) or was censored."""

    patient_ids: list[str]
    time: np.ndarray  # float64
    event: np.ndarray  # bool
    provenance: dict = field(default_factory=dict)


@dataclass
class SlideFeatures:
    features: np.ndarray
    coords: np.ndarray
    tissue_fraction: np.ndarray
    attrs: dict
