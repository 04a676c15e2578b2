"""A trained head as a folder a person can read and a program can reload: ``fusion fit`` writes one,
``fusion cv --save-models`` writes one per fold, ``fusion predict`` scores new patients with one or an
ensemble of them.

A model folder holds ``model.json`` (head, options, feature-set identity, gene list, calibration, threshold),
``preprocess.npz`` (the fitted gene means/scales and token PCA, loaded with ``allow_pickle=False``) and the
head's parameters, written and read by its adapter (``fusion.contract``): ``weights.pt`` for a torch head (a
state dict, loaded with ``weights_only=True``), ``head.npz`` for a baseline (plain arrays; XGBoost as its own
JSON). Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from featstore.errors import StoreError
from featstore.records import now_iso
from featstore.tables import patient_rows
from fusion.calibration import Calibrator
from fusion.contract import Fitted, create_head
from fusion.heads import GENES, IMAGE, get_head
from fusion.train import FoldData, cross_validate
from fusion.views import build_view

FORMAT = 1
# The feature-set settings a model's image branch depends on: another value means other features.
IDENTITY_KEYS = ("encoder", "weights", "target_mpp", "patch_size", "dim", "mean", "std")
MAX_MISSING_GENES = 0.1  # share of the model's genes a store may lack (imputed with training means)


def save_model(out: Path, result, i: int, meta: dict) -> Path:
    """Model ``i`` of a fold-batched result as its own folder; ``meta`` from :func:`model_meta`."""
    out.mkdir(parents=True, exist_ok=True)
    rec = result.fitted[i]
    meta = dict(meta)
    arrays: dict[str, np.ndarray] = {}
    if "gene_transform" in rec:
        gt = rec["gene_transform"]
        arrays.update(gene_mean=gt.mean, gene_std=gt.std)
        meta["genes"] = [meta["gene_ids"][c] for c in gt.columns]
    meta.pop("gene_ids")
    if "token_pca" in rec:
        arrays.update(token_mean=rec["token_pca"].mean, token_components=rec["token_pca"].components)
    if "baseline_hazard" in rec:  # a survival model: its Breslow baseline, for survival curves of new patients
        arrays.update(zip(("hazard_times", "hazard_cumulative"), rec["baseline_hazard"]))
    np.savez(out / "preprocess.npz", **arrays)
    result.models.save(i, out)  # weights.pt (a state dict) or head.npz (plain arrays)
    meta.update(format=FORMAT, gene_dim=int(rec["gene_dim"]), token_dim=int(rec["token_dim"]),
                calibrator=dataclasses.asdict(rec["calibrator"]),
                # C classes are decided by the argmax: no threshold (None, as JSON has no NaN)
                threshold=None if np.isnan(rec["threshold"]) else rec["threshold"], repeat=rec["repeat"],
                fold=rec["fold"], trained_on=int(len(rec.get("genes_fitted_on", rec.get("tokens_fitted_on", [])))),
                saved=now_iso())
    (out / "model.json").write_text(json.dumps(meta, indent=2, default=str))
    return out


def model_meta(store, cohort, head: str, opts) -> dict:
    """What a saved model needs besides its arrays (read while the store is open)."""
    from fusion.api import _is_simulated

    fs = store.feature_set_info(cohort.feature_set) if cohort.feature_set else {}
    return {
        "head": head, "target": cohort.target, "modalities": sorted(get_head(head).modalities),
        "classes": list(cohort.classes),
        "positive_class": None if len(cohort.classes) > 2 else cohort.classes[1], "train": dataclasses.asdict(opts.train),
        "feature_set": None if not cohort.feature_set else {
            "name": cohort.feature_set, "config_hash": fs.get("config_hash"),
            **{k: fs.get("config", {}).get(k) for k in IDENTITY_KEYS}},
        "view": {"k": opts.view_k, "method": opts.view_method, "seed": opts.seed} if cohort.feature_set else None,
        "gene_table": cohort.gene_table, "gene_ids": cohort.gene_ids, "store": str(Path(store.path).resolve()),
        "simulated": _is_simulated(store, cohort),  # its outputs (heatmaps too) carry the SIMULATED label
    }


def fit(store_path, head: str, opts, out) -> dict:
    """Train ``head`` on every labelled patient (inner validation for early stopping, calibration and the
    threshold) and write a model folder; returns its model.json and the fit's own predictions."""
    from fusion.api import _exclusion, _open_existing, prepare_inputs

    with _open_existing(store_path) as store:
        cohort, view = prepare_inputs(store, [head], opts)
        meta = model_meta(store, cohort, head, opts)
    p = len(cohort.patient_ids)
    everyone = np.arange(p)
    tr, val = train_test_split(everyone, test_size=opts.train.inner_val, stratify=cohort.strata,
                               random_state=opts.train.seed)
    exclude, _ = _exclusion(opts, cohort) if GENES in get_head(head).modalities else (None, "")
    result = cross_validate(cohort, head, np.zeros((1, p), int), view, opts.train, exclude, permutations=0,
                            rows=[(0, 0, np.sort(tr), np.sort(val), everyone)])
    save_model(Path(out), result, 0, meta)
    return {"model": json.loads((Path(out) / "model.json").read_text()), "patient_ids": cohort.patient_ids,
            "p_positive": result.oof[0]}


@dataclasses.dataclass
class Model:
    path: Path
    meta: dict
    pre: dict[str, np.ndarray]
    fitted: Fitted  # the head's one model (fusion.contract)
    calibrator: Calibrator


# What model.json must hold, and of which type, before anything is built from it.
_META_TYPES = {"format": int, "head": str, "modalities": list, "classes": list, "train": dict, "gene_dim": int,
               "token_dim": int, "calibrator": dict, "threshold": (int, float, type(None))}
MAX_DIM = 1_000_000  # inputs of a head: more genes or token dimensions than any model here has


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "model.json").read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}/model.json is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise StoreError(f"{path}/model.json holds a {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT:
        raise StoreError(f"{path}: model format {meta.get('format')}, this fusion reads {FORMAT}")
    for key, kind in _META_TYPES.items():
        if key not in meta:
            raise StoreError(f"{path}/model.json has no {key!r}; is it a model folder written by fusion fit?")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise StoreError(f"{path}/model.json: {key!r} is {meta[key]!r}, not a {getattr(kind, '__name__', 'number')}")
    if not (isinstance(meta["classes"], list) and len(meta["classes"]) >= 2 and all(isinstance(c, str) for c in meta["classes"])):
        raise StoreError(f"{path}/model.json: classes {meta['classes']!r} are not two or more class names")
    meta.setdefault("target", "binary")  # models saved before targets were named: two classes
    if meta["target"] not in ("binary", "multiclass", "survival"):
        raise StoreError(f"{path}/model.json: target {meta['target']!r} is not binary, multiclass or survival")
    if (meta["threshold"] is None) != (meta["target"] == "multiclass"):  # C classes are decided by the argmax
        raise StoreError(f"{path}/model.json: threshold {meta['threshold']!r} for a {meta['target']} model")
    if meta["threshold"] is not None and not np.isfinite(meta["threshold"]):
        raise StoreError(f"{path}/model.json: threshold {meta['threshold']!r} is not a number")
    if meta["target"] == "binary" and not 0 <= meta["threshold"] <= 1:  # a survival cut is a risk, any number
        raise StoreError(f"{path}/model.json: threshold {meta['threshold']!r} is not a probability")
    for key in ("gene_dim", "token_dim"):
        if not 0 <= meta[key] <= MAX_DIM:
            raise StoreError(f"{path}/model.json: {key} {meta[key]} is outside 0..{MAX_DIM}")
    return meta


def load_model(path) -> Model:
    path = Path(path)
    if not (path / "model.json").exists():
        raise StoreError(f"{path} is not a model folder (no model.json); fusion fit or fusion cv --save-models "
                         "writes one")
    meta = _read_meta(path)
    try:
        with np.load(path / "preprocess.npz", allow_pickle=False) as z:
            pre = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}/preprocess.npz cannot be read as plain arrays ({exc})") from exc
    fitted = create_head(meta["head"]).load(path, meta)
    try:
        calibrator = Calibrator(**meta["calibrator"])
    except TypeError as exc:
        raise StoreError(f"{path}/model.json: calibrator {meta['calibrator']!r} is not one fusion writes") from exc
    return Model(path, meta, pre, fitted, calibrator)


def model_folders(path) -> list[Path]:
    """A model folder, or a folder of them (a cv fold ensemble)."""
    path = Path(path)
    if (path / "model.json").exists():
        return [path]
    found = sorted(p.parent for p in path.glob("*/model.json"))
    if not found:
        raise StoreError(f"no model.json in {path} or its subfolders")
    return found


def _check_feature_set(model: Model, store, name: str) -> None:
    want = model.meta["feature_set"]
    cfg = store.feature_set_info(name).get("config", {})
    diff = {k: (want.get(k), cfg.get(k)) for k in IDENTITY_KEYS if want.get(k) != cfg.get(k)}
    if diff:
        raise ValueError(f"feature set {name!r} was made differently from the model's ({want['name']!r}): "
                         + ", ".join(f"{k} is {b!r}, the model's {a!r}" for k, (a, b) in diff.items())
                         + "; extract the slides with the model's settings")


def _genes_for(model: Model, store, table: str | None, patients: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's genes in its own order, z-scored with its training statistics; (P, G) and who has genes."""
    expr = store.read_expression(table)
    col = {g: j for j, g in enumerate(expr.gene_ids)}
    want = model.meta["genes"]
    missing = [g for g in want if g not in col]
    if len(missing) > MAX_MISSING_GENES * len(want):
        raise ValueError(f"the store's expression table lacks {len(missing)} of the model's {len(want)} genes "
                         f"(more than {MAX_MISSING_GENES:.0%}), e.g. {missing[:5]}; is it the same platform and "
                         "gene naming?")
    if missing:
        warnings.warn(f"{len(missing)} of the model's {len(want)} genes are missing from the store and imputed with "
                      f"the training means: {', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}",
                      stacklevel=2)
    row = patient_rows(expr)[0]  # its notes are warned once, in predict
    x = np.full((len(patients), len(want)), np.nan, np.float32)
    present = np.array([p in row for p in patients])
    take = [j for j, g in enumerate(want) if g in col]
    for i, p in enumerate(patients):
        if p in row:
            x[i, take] = expr.values[row[p], [col[want[j]] for j in take]]
    mean, std = model.pre["gene_mean"], model.pre["gene_std"]
    x = np.where(np.isnan(x), mean, x)
    return np.nan_to_num((x - mean) / std).astype(np.float32), present


def predict(model_path, store_path, patients: list[str] | None = None, features: str | None = None,
            genes: str | None = None) -> tuple[list[str], np.ndarray, list[Model]]:
    """P(positive) for each patient (all who have the model's modalities, or ``patients``), or (P, C) class
    probabilities for a model of C classes, averaged over the models of a fold ensemble; each model's
    calibration applied first."""
    from fusion.api import _open_existing

    models = [load_model(p) for p in model_folders(model_path)]
    first = models[0].meta
    if len({(m.meta["head"], m.meta["feature_set"] and m.meta["feature_set"]["config_hash"]) for m in models}) > 1:
        raise ValueError(f"{model_path}: its models differ in head or feature set; an ensemble is one head's folds")
    mods = set(first["modalities"])
    with _open_existing(store_path) as store:
        slides: dict[str, list[str]] = {}
        fs = None
        if IMAGE in mods:
            fs = store.resolve("features", features)
            for m in models:
                _check_feature_set(m, store, fs)
            for sid in store.slides(fs):
                slides.setdefault(store.slide_attrs(fs, sid)["patient_id"], []).append(sid)
        gene_patients: set[str] = set()
        if GENES in mods:
            rows, notes = patient_rows(store.read_expression(genes))
            gene_patients = set(rows)
            for note in notes:
                warnings.warn(f"expression table {genes or store.resolve('expression', None)}: {note}", stacklevel=2)
        if patients is None:
            have = [set(slides)] * (IMAGE in mods) + [gene_patients] * (GENES in mods)
            patients = sorted(set.intersection(*have))
        if not patients:
            raise ValueError(f"no patient in {store_path} has {' and '.join(sorted(mods))}")
        lacking = [p for p in patients if (IMAGE in mods and p not in slides) or (GENES in mods and p not in gene_patients)]
        if lacking:
            raise ValueError(f"{len(lacking)} patient(s) lack an input the model uses ({', '.join(sorted(mods))}): "
                             f"{lacking[:10]}")
        view = None
        if IMAGE in mods:
            v = first["view"]
            view = build_view(store, fs, {p: slides[p] for p in patients}, v["k"], v["method"], v["seed"], cache=False)
        probs = [_predict_one(m, store, genes, patients, view) for m in models]
    for m, pr in zip(models, probs):
        if not np.isfinite(pr).all():  # never written: a NaN would read as a prediction
            bad = patients[int(np.argwhere(~np.isfinite(pr))[0][0])]
            raise StoreError(f"model {m.path} gives a non-finite prediction (patient {bad}); its weights or "
                             "preprocess.npz are damaged")
    return patients, np.mean(probs, axis=0), models


def _predict_one(model: Model, store, genes: str | None, patients: list[str], view, use_genes: bool = True) -> np.ndarray:
    """``use_genes=False`` runs a gene-using head with no gene input (the image branch alone: fusion explain)."""
    n = len(patients)
    mods = set(model.meta["modalities"])
    if GENES in mods and use_genes:
        g, g_present = _genes_for(model, store, genes, patients)
    else:
        g, g_present = np.zeros((n, model.meta["gene_dim"]), np.float32), np.zeros(n, bool)
    if IMAGE in mods:
        tokens, mask, weights = _projected_tokens(model, patients, view)
        i_present = mask.any(1)
    else:
        tokens, mask, weights = np.zeros((n, 1, 1), np.float32), np.ones((n, 1), bool), np.ones((n, 1), np.float32)
        i_present = np.zeros(n, bool)
    empty: list = []
    data = FoldData(torch.from_numpy(g)[None], torch.from_numpy(tokens.astype(np.float32))[None],
                    torch.from_numpy(mask), torch.from_numpy(weights.astype(np.float32)),
                    torch.from_numpy(g_present), torch.from_numpy(i_present), empty, empty, empty)
    return model.calibrator(model.fitted.predict(data, torch.arange(n)[None])[0])


def _projected_tokens(model: Model, patients: list[str], view) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The view's tokens, mask and weights of ``patients``, the tokens projected by the model's training PCA."""
    tokens, mask, weights = view.for_patients(patients)
    if "token_components" in model.pre:
        tokens = ((tokens - model.pre["token_mean"]) @ model.pre["token_components"]).astype(np.float32)
        tokens *= mask[..., None]
    return tokens, mask, weights


def read_patient_list(path) -> list[str]:
    """Patient ids, one per line, or a CSV's ``patient_id`` column."""
    from featstore.tables import read_rows

    header, rows = read_rows(path)
    if "patient_id" in header:
        j = header.index("patient_id")
        return [r[j].strip() for r in rows if r[j].strip()]
    return [x for x in [header[0].strip()] + [r[0].strip() for r in rows] if x]


def write_predictions(path, patients: list[str], p: np.ndarray, models: list[Model]) -> None:
    """patient_id, p_positive, predicted: the class at the mean of the models' inner-validation thresholds; for C
    classes patient_id, p_<class> for each class, predicted: the argmax; for survival patient_id, risk,
    risk_group: above or below the mean of the models' cuts (each the median risk of its inner validation)."""
    import csv

    classes = models[0].meta["classes"]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        if models[0].meta["target"] == "survival":  # the risk, and its side of the mean of the models' cuts
            cut = float(np.mean([m.meta["threshold"] for m in models]))
            w.writerow(["patient_id", "risk", "risk_group"])
            w.writerows([pid, f"{v:.6f}", "high" if v > cut else "low"] for pid, v in zip(patients, p))
            return
        if p.ndim == 2:
            w.writerow(["patient_id", *(f"p_{c}" for c in classes), "predicted"])
            w.writerows([pid, *(f"{v:.6f}" for v in row), classes[int(np.argmax(row))]] for pid, row in zip(patients, p))
            return
        cut = float(np.mean([m.meta["threshold"] for m in models]))
        w.writerow(["patient_id", "p_positive", "predicted"])
        for pid, v in zip(patients, p):
            w.writerow([pid, f"{v:.6f}", classes[int(v >= cut)]])
