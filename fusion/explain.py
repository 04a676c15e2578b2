"""Where on a slide the image branch looked: attention of a saved model's image pooling, carried back from the
view's K tokens to every patch, drawn over the slide's thumbnail and written as CSV (slide_id, x, y, score).

Each patch is scored like the token it is nearest to (its K-means prototype), per patch: the pooling's
attention on a token stands for all the patches it represents (``log_prior``), so a patch's share is the
token's attention divided by the token's share of the bag. Scores of one slide sum to 1 over its patches
(over all of the patient's slides when the patient has several).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from featstore.slides import open_slide
from fusion.heads import IMAGE
from fusion.layers import GatedAttentionPool
from fusion.model import Model, _check_feature_set, _predict_one, load_model, model_folders
from fusion.views import build_view


def _image_pool(model: Model) -> GatedAttentionPool:
    """The attention pooling of the model's image branch (``image`` in fusion heads, ``enc`` in image_abmil)."""
    for name in ("image", "enc"):
        branch = getattr(getattr(model.fitted, "module", None), name, None)
        if branch is not None and isinstance(getattr(branch, "pool", None), GatedAttentionPool):
            return branch.pool
    raise ValueError(f"head {model.meta['head']!r} has no attention over patches to explain (heads with one: "
                     "image_abmil and the fusion heads)")


def patient_attention(model: Model, store, patient: str, view) -> np.ndarray:
    """(K,) attention of the image pooling over the patient's view tokens (with the log-prior included)."""
    pool, seen = _image_pool(model), []
    handle = pool.register_forward_hook(lambda _m, _i, out: seen.append(out[1].detach()))
    try:
        # The image pooling's attention depends on the tokens alone: no gene table is needed to draw it.
        _predict_one(model, store, None, [patient], view, use_genes=False)
    finally:
        handle.remove()
    return seen[-1][0, 0].numpy()


def patch_scores(model: Model, store, feature_set: str, patient: str, slide_ids: list[str]) -> dict[str, tuple]:
    """Per slide: (coords (N, 2), scores (N,)) for every patch of the patient's slides."""
    v = model.meta["view"]
    view = build_view(store, feature_set, {patient: slide_ids}, v["k"], v["method"], v["seed"], cache=False)
    attn = patient_attention(model, store, patient, view)
    tokens, mask, weights = view.for_patients([patient])
    centres = tokens[0][mask[0]]
    per_patch = attn[mask[0]] / np.maximum(weights[0][mask[0]], 1e-8)
    out, total = {}, 0.0
    for sid in slide_ids:
        s = store.read_slide(feature_set, sid)
        nearest = torch.cdist(torch.from_numpy(s.features.astype(np.float32)), torch.from_numpy(centres)).argmin(1)
        out[sid] = (s.coords, per_patch[nearest.numpy()])
        total += float(out[sid][1].sum())
    return {sid: (c, sc / total) for sid, (c, sc) in out.items()}


def caveat(model_meta: dict, feature_config: dict) -> str:
    """What a heatmap must say on its face: a model trained on SIMULATED data, features from random weights."""
    parts = []
    if model_meta.get("simulated"):
        parts.append("model trained on SIMULATED data")
    if feature_config.get("source") == "simulated":
        parts.append("SIMULATED features")
    elif str(feature_config.get("weights", "")).startswith("random"):
        parts.append("features from a RANDOM-WEIGHT encoder")
    return "; ".join(parts) + ": not biology" if parts else ""


def draw(path: Path, slide_attrs: dict, coords: np.ndarray, scores: np.ndarray, title: str,
         max_side: int = 1024, warning: str = "") -> tuple[np.ndarray, float]:
    """The scores as coloured squares over the slide's thumbnail, with a colour bar; returns the thumbnail
    and its level-0 pixels per thumbnail pixel. ``warning`` is printed in red on the image and kept in the
    PNG's ``Warning`` text chunk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prov = slide_attrs.get("provenance", {})
    with open_slide(slide_attrs["slide_path"], mpp=prov.get("slide_mpp")) as reader:
        w, h = reader.dimensions
        ds = max(w, h) / max_side
        canvas = np.full((max(1, round(h / ds)), max(1, round(w / ds)), 3), 255, np.uint8)
        for region in reader.regions():
            thumb, _ = reader.thumbnail(region, max(1, round(max(region.width, region.height) / ds)))
            size = (max(1, round(region.width / ds)), max(1, round(region.height / ds)))
            if thumb.shape[1::-1] != size:  # a reader's thumbnail may round its size down
                thumb = np.asarray(Image.fromarray(thumb).resize(size, Image.BILINEAR))
            y0, x0 = round(region.y / ds), round(region.x / ds)
            part = canvas[y0:y0 + thumb.shape[0], x0:x0 + thumb.shape[1]]
            part[:] = thumb[:part.shape[0], :part.shape[1]]
    side = prov.get("patch_size_level0", 256) / ds
    fig, ax = plt.subplots(figsize=(8, 8 * canvas.shape[0] / canvas.shape[1] + 0.6))
    ax.imshow(canvas, extent=(0, canvas.shape[1], canvas.shape[0], 0))
    norm = matplotlib.colors.Normalize(vmin=float(scores.min()), vmax=float(scores.max()) or 1.0)
    cmap = matplotlib.colormaps["inferno"]
    for (x, y), s in zip(coords, scores):
        ax.add_patch(matplotlib.patches.Rectangle((x / ds, y / ds), side, side, color=cmap(norm(s)), alpha=0.55, lw=0))
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.04,
                 label="attention per patch (share of the bag)")
    ax.set(title=title, xticks=[], yticks=[], xlim=(0, canvas.shape[1]), ylim=(canvas.shape[0], 0))
    if warning:
        ax.text(0.5, 0.02, warning, transform=ax.transAxes, ha="center", va="bottom", color="white", weight="bold",
                fontsize=10, bbox={"facecolor": "#b00020", "edgecolor": "none"})
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Warning": warning} if warning else None)
    plt.close(fig)
    return canvas, ds


def explain(model_path, store_path, slide: str | None = None, out=None, features: str | None = None) -> dict:
    """Heatmap PNG and scores CSV for ``slide`` (or every slide when None) with a saved model (a fold
    ensemble's scores are averaged). ``out``: a .png for one slide, a folder for all. Returns
    slide id -> (coords, scores)."""
    from fusion.api import _open_existing

    models = [load_model(p) for p in model_folders(model_path)]
    if IMAGE not in models[0].meta["modalities"]:
        raise ValueError(f"head {models[0].meta['head']!r} does not use images; there is nothing to draw")
    with _open_existing(store_path) as store:
        fs = store.resolve("features", features)
        for m in models:
            _check_feature_set(m, store, fs)
            _image_pool(m)
        by_patient: dict[str, list[str]] = {}
        for sid in store.slides(fs):
            by_patient.setdefault(store.slide_attrs(fs, sid)["patient_id"], []).append(sid)
        wanted = store.slides(fs) if slide is None else [slide]
        if slide is not None and slide not in store.slides(fs):
            raise ValueError(f"slide {slide!r} is not in feature set {fs!r} of {store_path}")
        results: dict[str, tuple] = {}
        for patient in dict.fromkeys(store.slide_attrs(fs, s)["patient_id"] for s in wanted):
            runs = [patch_scores(m, store, fs, patient, sorted(by_patient[patient])) for m in models]
            for sid in runs[0]:
                if sid in wanted:
                    results[sid] = (runs[0][sid][0], np.mean([r[sid][1] for r in runs], axis=0))
        if out is not None:
            out = Path(out)
            single = slide is not None and out.suffix.lower() == ".png"
            if not single:
                out.mkdir(parents=True, exist_ok=True)
            for sid, (coords, scores) in results.items():
                png = out if single else out / f"{sid}.png"
                png.parent.mkdir(parents=True, exist_ok=True)
                draw(png, store.slide_attrs(fs, sid), coords, scores,
                     f"{sid}: {models[0].meta['head']} image attention ({len(models)} model(s))",
                     warning=caveat(models[0].meta, store.feature_set_info(fs).get("config", {})))
                with open(png.with_suffix(".csv"), "w", newline="") as fh:
                    w = csv.writer(fh)
                    w.writerow(["slide_id", "x", "y", "score"])
                    w.writerows([sid, int(x), int(y), f"{s:.6g}"] for (x, y), s in zip(coords, scores))
    return results
