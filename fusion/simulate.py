"""SIMULATED cohorts with planted, documented signal, for tests, the speed benchmark and the demo.

Each patient has two independent latent factors, ``z_g`` (shown to the genes) and ``z_i`` (shown to
the image), both N(0, 1). The label is positive when ``sqrt(1 - split) * z_g + sqrt(split) * z_i`` is
in its top ``prevalence`` share: ``split`` 0 puts all signal in the genes, 1 all in the image, 0.5
half in each, so only a model that uses both modalities can recover it all. (With given
``patient_ids`` and ``labels``, ``z_i`` is the standardised label plus N(0, 0.5) noise.)
- Genes: ``n_informative_genes`` genes shifted by ``gene_signal * z_g``, the rest N(0, 1).
- Image: each patient's bag holds ``patches`` patch embeddings N(0, 1) in ``dim`` dims; a fraction
  ``informative_fraction`` of them carries the signal along a fixed unit direction ``u``.
  ``image_pattern="shift"``: they move by ``image_signal * z_i * u``, so the bag mean moves too.
  ``image_pattern="minority"``: they move by ``3 * image_signal * max(z_i, 0) * u`` with a random sign
  per patch, so the bag mean carries no signal in expectation and only a model that looks at single
  patches (attention MIL) can find it.
- ``patches_from`` (a store with real patch features): each bag is ``patches`` real patches drawn from that
  store's feature set instead of N(0, 1) noise, the signal scaled by the patches' own spread, and the
  feature set keeps the real one's encoder settings, so a model trained on the simulated cohort applies
  to (and ``fusion explain`` draws on) the real slides.
- ``survival=True`` also writes a survival table ``survival`` (months): each patient's event time is exponential
  with log-hazard ``sqrt(1 - split) * z_g + sqrt(split) * z_i`` (the same score the label thresholds; base
  rate 1 in 10 months), censored at a uniform time in [0, 30] months, so about 40% of patients have the event.
- ``null="image"`` gives each patient another patient's bag (a random permutation), ``null="genes"``
  another patient's expression row: that modality then carries no signal about the label at all.
Everything written is marked ``simulated`` (feature-set config, slide provenance, table provenance).
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np

from featstore.errors import StoreError
from featstore.provenance import config_hash
from featstore.records import SurvivalTable
from featstore.store import ExpressionTable, LabelTable, Store
from featstore.store import open as open_store

SIMULATED = "SIMULATED: synthetic data with planted signal (fusion.simulate), not real patients"


def simulate_cohort(out: str | Path, patients: int = 200, patches: int = 64, dim: int = 64, genes: int = 100,
                    prevalence: float = 0.3, gene_signal: float = 1.0, image_signal: float = 1.0,
                    split: float = 0.5, informative_fraction: float = 0.2, n_informative_genes: int = 10,
                    image_pattern: str = "shift", null: str | None = None,
                    seed: int = 0, patient_ids: list[str] | None = None, labels: dict[str, str] | None = None,
                    feature_set: str = "simulated", with_genes: bool = True, labels_out: str | Path | None = None,
                    overwrite: bool = False, patches_from: str | Path | None = None, survival: bool = False) -> Store:
    """Write a simulated cohort into the store ``out`` (created or extended) and return it open.

    With ``patient_ids``/``labels`` (e.g. a real cohort's), image bags are simulated for those patients
    from their labels and nothing else is written: the demo's way to pair real genes with simulated slides.
    Anything of the same name already in the store (the feature set, the ``expression`` and ``labels``
    tables) is an error unless ``overwrite``: simulated data never silently replaces real data.
    """
    if image_pattern not in ("shift", "minority"):
        raise ValueError(f"image_pattern must be 'shift' or 'minority', got {image_pattern!r}")
    if not 0 <= split <= 1 or not 0 < prevalence < 1:
        raise ValueError(f"split must be in [0, 1] and prevalence in (0, 1), got {split} and {prevalence}")
    if null not in (None, "image", "genes"):
        raise ValueError(f"null must be None, 'image' or 'genes', got {null!r}")
    rng = np.random.default_rng(seed)
    if patient_ids is None:
        patient_ids = [f"SIM-{i:05d}" for i in range(patients)]
        z_g, z_i = rng.standard_normal(patients), rng.standard_normal(patients)
        score = np.sqrt(1 - split) * z_g + np.sqrt(split) * z_i
        y = (score > np.quantile(score, 1 - prevalence)).astype(int)
        if survival:
            event_time = rng.exponential(10.0 * np.exp(-score))
            censor_time = rng.uniform(0, 30, patients)
        label_names = [("Negative", "Positive")[v] for v in y]
    else:
        if labels is None:
            raise ValueError("patient_ids needs labels")
        if survival:
            raise ValueError("a survival table is simulated for simulated patients only, not for given ones")
        counts = Counter(labels.values())
        positive = min(counts, key=lambda c: (counts[c], c))
        y = np.array([labels[p] == positive for p in patient_ids], int)
        label_names = [labels[p] for p in patient_ids]
        z_i = (y - y.mean()) / max(y.std(), 1e-8) + 0.5 * rng.standard_normal(len(y))
        z_g = np.zeros(len(y))
    n = len(patient_ids)
    shuffle = rng.permutation(n)
    if null == "image":
        z_i = z_i[shuffle]
    elif null == "genes":
        z_g = z_g[shuffle]
    store = open_store(out, "a")
    clashes = [f"feature set {feature_set!r}"] if feature_set in store.feature_sets() else []
    if with_genes and labels is None:
        clashes += [f"table {t!r}" for t in ("expression", "labels", *(("survival",) if survival else ()))
                    if t in store.tables()]
    if clashes:
        if not overwrite:
            store.close()
            raise StoreError(f"{out} already holds {', '.join(clashes)}; fusion simulate writes SIMULATED data and "
                             "replaces nothing unless --overwrite (or write to another store)")
        if feature_set in store.feature_sets():
            store.delete_feature_set(feature_set)
    provenance = {"simulated": True, "note": SIMULATED, "seed": seed, "split": split, "null": null,
                  "gene_signal": gene_signal, "image_signal": image_signal,
                  "informative_fraction": informative_fraction, "image_pattern": image_pattern}
    config = {"source": "simulated", "note": SIMULATED, "dim": dim, "patches": patches, **provenance,
              "encoder": "simulated"}
    pool = pool_coords = None
    scale = 1.0
    if patches_from is not None:
        pool, pool_coords, real_config = _real_patches(patches_from)
        dim = pool.shape[1]
        scale = float(pool.std(0).mean())
        config = {**real_config, **config, "dim": dim, "encoder": real_config.get("encoder"),
                  "patches_from": str(patches_from)}
    store.create_feature_set(feature_set, config, config_hash(config))
    direction = rng.standard_normal(dim)
    direction /= np.linalg.norm(direction)
    direction *= scale
    for i, p in enumerate(patient_ids):
        if pool is None:
            bag = rng.standard_normal((patches, dim)).astype(np.float32)
            coords = np.stack([np.arange(patches) * 224, np.zeros(patches)], 1).astype(np.int64)
        else:
            pick = rng.choice(len(pool), patches, replace=len(pool) < patches)
            bag, coords = pool[pick].copy(), pool_coords[pick]
        k = max(1, int(round(informative_fraction * patches)))
        rows = rng.choice(patches, k, replace=False)
        if image_pattern == "shift":
            bag[rows] += (image_signal * z_i[i]) * direction
        else:
            signs = rng.choice([-1.0, 1.0], size=(k, 1))
            bag[rows] += (image_signal * max(z_i[i], 0.0) * 3.0) * signs * direction
        store.write_slide(feature_set, f"{p}-SIM", bag.astype(np.float16), coords, np.ones(patches, np.float32),
                          {"patient_id": p, "provenance": {**provenance, "informative_rows": np.sort(rows).tolist()}})
    if with_genes and labels is None:
        expr = rng.standard_normal((n, genes)).astype(np.float32)
        expr[:, :n_informative_genes] += (gene_signal * z_g)[:, None]
        store.write_expression("expression", ExpressionTable(expr, list(patient_ids), [f"GENE{j:05d}" for j in range(genes)],
                                                             list(patient_ids), [""] * n, provenance), overwrite=True)
        store.write_labels("labels", LabelTable(list(patient_ids), label_names, label_names,
                                                {**provenance, "positive_class": "Positive"}), overwrite=True)
        if survival:
            store.write_survival("survival", SurvivalTable(
                list(patient_ids), np.minimum(event_time, censor_time), event_time <= censor_time,
                {**provenance, "time_unit": "months"}), overwrite=True)
    if labels_out is not None:
        with Path(labels_out).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["patient_id", "label"])
            w.writerows(zip(patient_ids, label_names))
    return store


def _real_patches(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every patch of a store's (only) feature set, their coordinates, and the feature set's config."""
    with open_store(path) as src:
        name = src.resolve("features", None)
        slides = [src.read_slide(name, sid) for sid in src.slides(name)]
        if not slides:
            raise StoreError(f"{path}: feature set {name!r} holds no slides to draw patches from")
        config = src.feature_set_info(name).get("config", {})
    return (np.concatenate([s.features for s in slides]).astype(np.float32),
            np.concatenate([s.coords for s in slides]), config)
