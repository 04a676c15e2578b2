"""CLAM/TRIDENT per-slide h5 files: import, export, round trip, and bad files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import featstore
from featstore.interop import export_clam, import_features
from featstore.tables import InputError


def _clam_file(path, n, d, seed, leading_axis=False):
    rng = np.random.default_rng(seed)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    coords = rng.integers(0, 50_000, (n, 2))
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats[None] if leading_axis else feats)
        ds = f.create_dataset("coords", data=coords)
        ds.attrs["patch_size"] = 256
        ds.attrs["patch_level"] = 0
    return feats, coords


def test_clam_round_trip(tmp_path, store_path):
    src = tmp_path / "clam" / "h5_files"
    src.mkdir(parents=True)
    originals = {f"TCGA-AA-000{i}-01Z-00-DX1": _clam_file(src / f"TCGA-AA-000{i}-01Z-00-DX1.h5", 50 + i, 32, i,
                                                          leading_axis=i == 1) for i in range(3)}
    with featstore.open(store_path, "a") as s:
        ids = import_features(s, [src], "uni", encoder="my-own-encoder", dtype="float32")
        assert sorted(ids) == sorted(originals)
        assert s.read_slide("uni", ids[0]).attrs["patient_id"] == "TCGA-AA-0000"
        assert s.validate() == []
        export_clam(s, None, tmp_path / "out")
    for sid, (feats, coords) in originals.items():
        with h5py.File(tmp_path / "out" / "h5_files" / f"{sid}.h5") as f:
            np.testing.assert_array_equal(f["features"][()], feats)
            np.testing.assert_array_equal(f["coords"][()], coords)
        pt = torch.load(tmp_path / "out" / "pt_files" / f"{sid}.pt", weights_only=True)
        np.testing.assert_array_equal(pt.numpy(), feats)


def test_bad_clam_files_leave_store_unchanged(tmp_path, store_path):
    good = tmp_path / "good.h5"
    _clam_file(good, 10, 8, 0)
    no_coords = tmp_path / "nocoords.h5"
    with h5py.File(no_coords, "w") as f:
        f.create_dataset("features", data=np.zeros((3, 8)))
    mismatch = tmp_path / "mismatch.h5"
    with h5py.File(mismatch, "w") as f:
        f.create_dataset("features", data=np.zeros((3, 8)))
        f.create_dataset("coords", data=np.zeros((4, 2)))
    not_h5 = tmp_path / "junk.h5"
    not_h5.write_bytes(b"not hdf5")

    def clam(name, feats, coords):
        path = tmp_path / f"{name}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=feats)
            f.create_dataset("coords", data=coords)
        return path

    degenerate = [
        (clam("empty", np.zeros((0, 8)), np.zeros((0, 2))), r"features are 0 x 8: a slide needs at least one patch"),
        (clam("nodim", np.zeros((3, 0)), np.zeros((3, 2))), r"features are 3 x 0"),
        (clam("nancoord", np.zeros((2, 8)), np.array([[0, 0], [np.nan, 1]])), r"coords must be whole.*row 1"),
        (clam("negcoord", np.zeros((2, 8)), np.array([[0, 0], [-5, 1]])), r"non-negative level-0 pixels; row 1"),
        (clam("floatcoord", np.zeros((2, 8)), np.array([[0, 0], [2.5, 1]])), r"coords must be whole.*row 1"),
        # uint64 past int64's range would wrap to a negative coordinate in the cast
        (clam("widecoord", np.zeros((2, 8)), np.array([[0, 0], [2**63 + 5, 1]], np.uint64)), r"coords must be whole.*row 1"),
        (clam("strings", np.array([["a"] * 8] * 2, dtype="S1"), np.zeros((2, 2))), r"features hold \|S1 values, not numbers"),
        (clam("overflow", np.full((2, 8), 1e5, np.float32), np.zeros((2, 2))), r"row 0, column 0 \(100000.0\) overflows float16"),
    ]
    with featstore.open(store_path, "a") as s:
        for bad, msg in ((no_coords, "no dataset 'coords'"), (mismatch, r"do not form N x D and N x 2"),
                         (not_h5, "not a readable HDF5 file"), *degenerate):
            with pytest.raises(InputError, match=msg):
                import_features(s, [good, bad], "x")
            assert s.feature_sets() == []


def test_imported_features_take_the_presets_names_and_widths(tmp_path):
    """TRIDENT's resnet50 (1024-d) is our resnet50-trunc; a preset name with features of another width is refused
    before anything is written; a name featstore does not know is recorded as given."""
    src = tmp_path / "h5"
    src.mkdir()
    _clam_file(src / "TCGA-AA-0001-01Z-00-DX1.h5", 20, 1024, 0)
    store = tmp_path / "s.zarr"
    with featstore.open(store, "a") as s:
        import_features(s, [src], "trident", encoder="resnet50", dtype="float32")
        assert s.feature_set_info("trident")["config"]["encoder"] == "resnet50-trunc"
        with pytest.raises(InputError, match="--encoder uni_v2: the files hold 1024-d features, but uni_v2 gives 1536-d"):
            import_features(s, [src], "uni2", encoder="uni_v2")
        assert "uni2" not in s.feature_sets()
        import_features(s, [src], "mine", encoder="my-encoder")
        assert s.feature_set_info("mine")["config"]["encoder"] == "my-encoder"
