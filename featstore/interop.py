"""Interop with the per-slide HDF5 files of CLAM and TRIDENT (datasets ``features`` and ``coords``)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from featstore.barcodes import patient_of
from featstore.errors import AlreadyCommittedError
from featstore.provenance import config_hash, file_fingerprint
from featstore.store import Store, check_name, now_iso
from featstore.tables import InputError

MAX_COORD = 2**31 - 1  # level-0 pixels; the largest slides are about 2^18 wide


def _read_clam_file(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        with h5py.File(path, "r") as f:
            for key in ("features", "coords"):
                if key not in f:
                    raise InputError(f"{path}: no dataset {key!r} (a CLAM/TRIDENT file has 'features' and 'coords')")
            feats, coords = f["features"][()], f["coords"][()]
            attrs = {k: _plain(v) for k, v in f["coords"].attrs.items()}
            attrs.update({f"file.{k}": _plain(v) for k, v in f.attrs.items()})
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from exc
    # Some CLAM versions save a leading batch axis of 1.
    if feats.ndim == 3 and feats.shape[0] == 1:
        feats = feats[0]
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if feats.ndim != 2 or coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(feats):
        raise InputError(f"{path}: features {feats.shape} and coords {coords.shape} do not form N x D and N x 2")
    for what, arr in (("features", feats), ("coords", coords)):
        if arr.dtype.kind not in "fiu":
            raise InputError(f"{path}: {what} hold {arr.dtype} values, not numbers")
    if len(feats) == 0 or feats.shape[1] == 0:
        raise InputError(f"{path}: features are {feats.shape[0]} x {feats.shape[1]}: a slide needs at least one "
                         "patch and one feature")
    if not np.isfinite(feats).all():
        raise InputError(f"{path}: features contain NaN or Inf (first at row {int(np.argwhere(~np.isfinite(feats))[0][0])})")
    # Bounded before the cast to int64, where uint64 or float values past its range would wrap to negatives.
    bad = ~np.isfinite(coords) | (coords != np.round(coords)) | (coords < 0) | (coords > MAX_COORD)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise InputError(f"{path}: coords must be whole, non-negative level-0 pixels; row {row} is "
                         f"{coords[row].tolist()} (at most 2^31 - 1)")
    return feats, coords.astype(np.int64), attrs


def _plain(v):
    return v.item() if isinstance(v, np.generic) else (v.tolist() if isinstance(v, np.ndarray) else
                                                        (v.decode() if isinstance(v, bytes) else v))


def read_feature_files(paths: list[str | Path], dtype: str = "float16") -> list[tuple]:
    """Read and check per-slide CLAM/TRIDENT ``.h5`` files (files, or folders of them) before anything is
    written: (slide id, features as stored, coords, source attributes, file) for each."""
    files: dict[Path, None] = {}
    for p in map(Path, paths):
        found = sorted(p.glob("*.h5")) if p.is_dir() else [p]
        files.update((f.resolve(), None) for f in found)  # the same file named twice is read once
    if not files:
        raise InputError(f"no .h5 files found in {', '.join(map(str, paths))}")
    loaded, source = [], {}
    for f in files:
        sid = check_name(f.stem, "slide id")
        if sid in source:  # never resolved by whichever file came last
            raise InputError(f"{source[sid]} and {f} would both be slide {sid!r}; import them into separate feature "
                             "sets, or rename one")
        source[sid] = f
        feats, coords, attrs = _read_clam_file(f)
        with np.errstate(over="ignore"):
            stored = feats.astype(dtype)
        if not np.isfinite(stored).all():  # finite as read, but beyond the stored type's range
            r, c = (int(v) for v in np.argwhere(~np.isfinite(stored))[0])
            raise InputError(f"{f}: feature row {r}, column {c} ({float(feats[r, c])!r}) overflows {dtype}, the stored "
                             "type (import with --dtype float32)")
        loaded.append((sid, stored, coords, attrs, f))
    dims = {x[1].shape[1] for x in loaded}
    if len(dims) > 1:
        raise InputError(f"files disagree on feature dimension: {sorted(dims)}")
    return loaded


def import_features(
    store: Store, paths: list[str | Path], name: str, encoder: str = "unknown", dtype: str = "float16",
    patient_map: dict[str, str] | None = None,
) -> list[str]:
    """Import per-slide CLAM/TRIDENT ``.h5`` files as one feature set; returns the slide ids written.

    Every file is checked before anything is written, so one bad file leaves the store untouched.
    """
    return write_features(store, read_feature_files(paths, dtype), name, encoder, patient_map)


def known_encoder(name: str, dim: int) -> str:
    """The preset name for features of width ``dim`` that a TRIDENT/CLAM user calls ``name``."""
    from featstore.encoder_presets import TRIDENT_NAMES
    from featstore.encoders import ENCODERS

    ours = TRIDENT_NAMES.get(name)
    if ours is not None and ENCODERS[ours].dim == dim:
        return ours
    if name in ENCODERS and ENCODERS[name].dim != dim:
        raise InputError(f"--encoder {name}: the files hold {dim}-d features, but {name} gives {ENCODERS[name].dim}-d; "
                         "name the encoder that made them (featstore encoders lists the presets)")
    return name


def write_features(store: Store, loaded: list[tuple], name: str, encoder: str = "unknown",
                   patient_map: dict[str, str] | None = None) -> list[str]:
    """Commit what :func:`read_feature_files` read as the feature set ``name``, slide by slide. ``encoder`` is
    recorded under the preset's name (TRIDENT's ``resnet50``, 1024-d, is our ``resnet50-trunc``), and features
    of another width than the named preset's are refused."""
    encoder = known_encoder(encoder, loaded[0][1].shape[1])
    config = {"source": "import", "format": "clam", "encoder": encoder, "dim": loaded[0][1].shape[1],
              "dtype": str(loaded[0][1].dtype)}
    store.create_feature_set(name, config, config_hash(config))
    store.mark_import(name, [x[0] for x in loaded])
    for sid, stored, coords, attrs, f in loaded:
        try:
            store.write_slide(name, sid, stored, coords, None, {
                "patient_id": (patient_map or {}).get(sid, patient_of(sid)),
                "provenance": {"imported_from": str(f), "file": file_fingerprint(f), "source_attrs": attrs,
                               "imported": now_iso()},
            })
        except AlreadyCommittedError:  # an import running beside this one committed it first: theirs stands
            pass
    store.mark_import(name, [])
    return [x[0] for x in loaded]


# The attributes CLAM's create_patches_fp.py writes on ``coords`` (wsi_core/WholeSlideImage.py,
# process_contour), which its feature extraction and heatmap code read back: ``patch_size`` is the side read
# at ``patch_level`` (read_region(coord, patch_level, (patch_size, patch_size))), not a level-0 size.
CLAM_COORDS_ATTRS = ("patch_size", "patch_level", "downsample", "downsampled_level_dim", "level_dim", "name",
                     "save_path")


def clam_coords_attrs(slide_id: str, prov: dict, save_path: Path) -> dict:
    """CLAM's ``coords`` attributes for one slide, plus ours under names CLAM does not use."""
    attrs: dict = {"name": slide_id, "save_path": str(save_path)}
    if "level" in prov and "level_downsamples" in prov and "level_dimensions" in prov:
        level = int(prov["level"])
        d = float(prov["level_downsamples"][level])
        dims = tuple(int(v) for v in prov["level_dimensions"][level])
        attrs.update(patch_level=level, patch_size=int(prov["read_size"]), downsample=(d, d), level_dim=dims,
                     downsampled_level_dim=dims)
    else:  # imported CLAM/TRIDENT files: give back what they came with
        attrs.update({k: v for k, v in prov.get("source_attrs", {}).items() if k in CLAM_COORDS_ATTRS})
    # Ours, never under CLAM's names: the model's input side at target_mpp and the level-0 side of a patch.
    for key, ours in (("patch_size", "featstore_patch_size"), ("patch_size_level0", "patch_size_level0"),
                      ("target_mpp", "target_mpp"), ("read_size", "read_size")):
        if key in prov:
            attrs[ours] = prov[key]
    return attrs


def export_clam(store: Store, name: str | None, out_dir: str | Path) -> list[Path]:
    """Write a feature set as CLAM's layout: ``h5_files/<slide>.h5`` (features, coords) and ``pt_files/<slide>.pt``."""
    import torch

    name = store.resolve("features", name)
    out = Path(out_dir)
    (out / "h5_files").mkdir(parents=True, exist_ok=True)
    (out / "pt_files").mkdir(parents=True, exist_ok=True)
    written = []
    for sid, slide in store.iter_slides(name):
        prov = slide.attrs.get("provenance", {})
        target = out / "h5_files" / f"{sid}.h5"
        tmp = target.with_suffix(".h5.tmp")
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=slide.features.astype(np.float32))
            ds = f.create_dataset("coords", data=slide.coords)
            for key, value in clam_coords_attrs(sid, prov, out / "h5_files").items():
                ds.attrs[key] = value
            f.attrs["featstore_provenance"] = json.dumps(prov)
            f.attrs["patient_id"] = slide.attrs.get("patient_id", "")
        tmp.replace(target)
        torch.save(torch.from_numpy(slide.features.astype(np.float32)), out / "pt_files" / f"{sid}.pt")
        written.append(target)
    return written
