"""TCGA barcode and gene-id parsing.

A TCGA barcode reads ``TCGA-<site>-<participant>-<sample><vial>-<portion><analyte>-<plate>-<centre>``;
e.g. ``TCGA-A7-A13D-01A-13R-A12P-07``. The patient is the first three fields, the tissue source site
the second, and the two-digit sample type (01 primary tumour, 06 metastatic, 11 solid normal, ...)
the first two characters of the fourth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BARCODE = re.compile(
    r"^(?P<project>TCGA)-(?P<site>[A-Z0-9]{2})-(?P<participant>[A-Z0-9]{4})"
    r"(?:-(?P<sample>\d{2})(?P<vial>[A-Z])?(?:-.*)?)?$",
    re.IGNORECASE,
)

SAMPLE_TYPES = {
    "01": "primary_tumour",
    "02": "recurrent_tumour",
    "03": "primary_blood_cancer",
    "05": "additional_primary",
    "06": "metastatic",
    "07": "additional_metastatic",
    "10": "blood_normal",
    "11": "solid_tissue_normal",
}

_ENSEMBL_VERSION = re.compile(r"^(ENS[A-Z]*[GTP]\d{11})\.\d+(_PAR_Y)?$")


@dataclass(frozen=True)
class Barcode:
    """The parts of a TCGA barcode that matter for joining data by patient."""

    patient: str
    site: str
    sample_type: str | None  # two-digit code, None when the barcode stops at the patient

    @property
    def is_primary_tumour(self) -> bool:
        return self.sample_type == "01"


def parse_barcode(text: str) -> Barcode | None:
    """Parse a TCGA barcode; return None for anything that is not one."""
    m = _BARCODE.match(text.strip())
    if m is None:
        return None
    project, site, participant = (m.group(g).upper() for g in ("project", "site", "participant"))
    return Barcode(f"{project}-{site}-{participant}", site, m.group("sample"))


def patient_of(sample_id: str) -> str:
    """The patient a sample id belongs to: the TCGA patient for barcodes, the id itself otherwise."""
    bc = parse_barcode(sample_id)
    return bc.patient if bc else sample_id.strip()


def site_of(patient_id: str) -> str | None:
    """TCGA tissue source site (second barcode field), or None for non-TCGA ids."""
    bc = parse_barcode(patient_id)
    return bc.site if bc else None


def strip_ensembl_version(gene_id: str) -> str:
    """``ENSG00000141510.16`` -> ``ENSG00000141510``; PAR_Y copies keep their suffix so they stay unique."""
    m = _ENSEMBL_VERSION.match(gene_id)
    if m is None:
        return gene_id
    return m.group(1) + (m.group(2) or "")


def gene_symbol(gene_id: str) -> str:
    """Symbol part of ``SYMBOL|ENTREZ`` ids (the TCGA RNASeqV2 convention); other ids pass through."""
    return gene_id.split("|", 1)[0]
