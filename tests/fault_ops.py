"""Every kind of commit, as a child process that tests/test_faults.py kills at each step of it.

Run as ``python -m tests.fault_ops OP STORE``; FEATSTORE_TEST_KILL_AT names the step to die at.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

import featstore
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides
from featstore.interop import import_features
from featstore.tables import import_genes

from .conftest import CMU, MIXOMICS, TILES

SLIDE = "CMU-1-Small-Region"
CFG = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)


def clam_folder(store: Path) -> Path:
    """Two seeded CLAM-layout files beside the store (the same bytes every time)."""
    folder = store.parent / "clam"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        features, coords = rng.standard_normal((40, 16)).astype(np.float32), rng.integers(0, 5_000, (40, 2))
        if (folder / f"TCGA-AA-000{i}-01Z-00-DX1.h5").exists():  # made already (runs racing read them)
            continue
        with h5py.File(folder / f"TCGA-AA-000{i}-01Z-00-DX1.h5", "w") as f:
            f.create_dataset("features", data=features)
            f.create_dataset("coords", data=coords)
    return folder


def run(op: str, store: Path) -> None:
    if op.startswith("extract"):
        # "extract two": the CMU slide and a folder of tiles read as a second slide; "extract --overwrite":
        # the CMU slide redone beside the other
        slides = find_slides([CMU]) + (find_slides([TILES], tiles_as_slide=True) if op == "extract two" else [])
        report = extract(slides, store, CFG, mpp_default=0.5, overwrite=op == "extract --overwrite", run=RunConfig(num_workers=0))
        assert report.failed == {} and len(report.done) == len(slides), report
        return
    if op == "view":
        from fusion.views import build_view

        with featstore.open(store, "a") as s:
            build_view(s, "resnet50-trunc", {"P": [SLIDE]}, k=4)
        return
    with featstore.open(store, "a") as s:
        if op == "import-genes":
            import_genes(s, MIXOMICS / "data_train_mrna.csv", samples_as="columns")
        elif op == "import-genes (another table)":
            import_genes(s, MIXOMICS / "data_test_mrna.csv", samples_as="columns")
        elif op == "import-genes --overwrite":
            import_genes(s, MIXOMICS / "data_test_mrna.csv", samples_as="columns", overwrite=True)
        elif op == "import-features":
            import_features(s, [clam_folder(store)], "clam", dtype="float32")
        else:
            raise SystemExit(f"unknown op {op!r}")


def fingerprint(op: str, store: Path) -> list | None:
    """What the op committed, as plain values to compare with a clean run's; None where it committed nothing."""
    if not store.exists():
        return None
    with featstore.open(store) as s:
        if op.startswith("extract"):
            done = "resnet50-trunc" in s.feature_sets() and SLIDE in s.slides("resnet50-trunc")
            return s.read_slide("resnet50-trunc", SLIDE).features.tolist() if done else None
        if op == "view":
            return [s.read_view(key)[0]["tokens"].tolist() for key in s.views()] or None
        if op.startswith("import-genes"):
            if not s.tables("expression"):
                return None
            t = s.read_expression()
            return [t.sample_ids, t.values.tolist()]
        done = "clam" in s.feature_sets() and s.slides("clam")
        return [s.read_slide("clam", sid).features.tolist() for sid in s.slides("clam")] if done else None


if __name__ == "__main__":
    run(sys.argv[1], Path(sys.argv[2]))
