"""Nothing silently wrong: a lost, garbled or unreadable chunk and a lost zarr.json are found and named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import featstore
from cli import featstore_app, fusion_app
from featstore.errors import StoreError
from featstore.extract import RunConfig
from fusion.cohort import load_cohort
from fusion.simulate import simulate_cohort
from fusion.views import build_view

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture()
def sim(tmp_path):
    path = tmp_path / "sim.zarr"
    simulate_cohort(path, patients=40, patches=12, dim=16, genes=20, seed=1).close()
    # A cached view too, so its tokens are covered as well.
    with featstore.open(path, "a") as s:
        cohort = load_cohort(s, label_map=None)
        build_view(s, cohort.feature_set, cohort.slides, k=4)
    return path


def _slide_dir(path):
    return path / "features" / "simulated" / "slides" / "SIM-00000-SIM"


@pytest.mark.parametrize("array", ["features", "coords", "tissue_fraction"])
def test_a_deleted_chunk_is_named_by_validate_and_never_read_as_zeros(sim, array):
    key = "c/0" if array == "tissue_fraction" else "c/0/0"
    (_slide_dir(sim) / array / key).unlink()
    r = runner.invoke(featstore_app, ["validate", str(sim)])
    assert r.exit_code == 1
    lines = [ln for ln in r.output.splitlines() if ln.startswith("✗")]
    assert lines == [f"✗ feature set simulated, slide SIM-00000-SIM, array {array}: 1 chunk file(s) missing ({key})"], r.output
    with featstore.open(sim) as s, pytest.raises(StoreError, match=f"slide SIM-00000-SIM, array '{array}'"):
        s.read_slide(None, "SIM-00000-SIM")
    # A new view (another K) has to read the slide: the run stops and names it.
    r = runner.invoke(fusion_app, ["cv", str(sim), "--head", "concat", "--label-map", "none", "--folds", "2",
                                   "--view-k", "3"])
    assert r.exit_code == 1 and "SIM-00000-SIM" in r.output


def test_a_deleted_view_chunk_and_a_deleted_zarr_json_are_named(sim):
    view = next(d for d in (sim / "views").iterdir() if d.is_dir())
    (view / "tokens" / "c" / "0" / "0" / "0").unlink()
    (_slide_dir(sim) / "zarr.json").unlink()
    r = runner.invoke(featstore_app, ["validate", str(sim)])
    assert r.exit_code == 1
    out = r.output
    assert f"view {view.name}, array tokens: 1 chunk file(s) missing" in out
    assert "slide SIM-00000-SIM: zarr.json missing" in out
    assert "Traceback" not in out


def test_a_garbled_chunk_is_one_line_in_validate_deep_and_an_error_on_read(sim):
    chunk = _slide_dir(sim) / "features" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    chunk.write_bytes(bytes(data))
    r = runner.invoke(featstore_app, ["validate", str(sim), "--deep"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.startswith("✗")]
    assert len(lines) == 1 and "slide SIM-00000-SIM, array features" in lines[0], r.output
    with featstore.open(sim) as s, pytest.raises(StoreError, match="SIM-00000-SIM"):
        s.read_slide(None, "SIM-00000-SIM")


def test_a_rewritten_chunk_fails_the_digest(tmp_path):
    """A chunk replaced by valid data of another slide decodes fine: only the digest notices."""
    path = tmp_path / "s.zarr"
    simulate_cohort(path, patients=10, patches=6, dim=8, genes=5, seed=1).close()
    slides = path / "features" / "simulated" / "slides"
    shutil.copy(slides / "SIM-00001-SIM" / "features" / "c" / "0" / "0", slides / "SIM-00000-SIM" / "features" / "c" / "0" / "0")
    with featstore.open(path) as s:
        assert s.validate() == []  # every chunk is there
        assert any("content differs from the digest" in p for p in s.validate(deep=True))


def test_overflow_after_the_cast_is_refused_for_expression_and_features(tmp_path):
    from featstore.errors import InputError
    from featstore.store import ExpressionTable
    from featstore.tables import read_expression

    table_file = tmp_path / "e.csv"
    table_file.write_text("sample_id,G1,G2\nS1,1,2\nS2,3,1e39\n")
    with pytest.raises(InputError, match=r"e.csv: value 1e\+39 of sample 'S2', gene 'G2' overflows float32"):
        read_expression(table_file)

    with featstore.open(tmp_path / "s.zarr", "a") as s:
        table = ExpressionTable(np.array([[1.0, 1e39]]), ["S1"], ["G1", "G2"], ["S1"], [""])
        with pytest.raises(ValueError, match="sample 'S1', gene 'G2' is 1e\\+39, not finite as float32"):
            s.write_expression("expression", table)
        s.create_feature_set("f", {"dim": 2}, "h")
        writer = s.begin_slide("f", "S1", 2, 2, "float16")
        with pytest.raises(ValueError, match="feature row 1, column 0 is not finite as float16"):
            writer.write(np.array([[1.0, 2.0], [70000.0, 1.0]], np.float32), np.zeros((2, 2), np.int64), np.ones(2))
        writer.abort()
        assert s.tables() == [] and s.slides("f") == [] and s.validate() == []


def test_missing_modality_that_predicts_the_label_is_flagged_and_refused_with_strict(tmp_path):
    """Only negative patients keep their images: "has an image" alone would score ROC-AUC 1.0."""
    path = tmp_path / "leak.zarr"
    simulate_cohort(path, patients=120, patches=8, dim=8, genes=10, image_signal=0.0, gene_signal=0.0, seed=2).close()
    with featstore.open(path, "a") as s:
        lab = dict(zip(s.read_labels().patient_ids, s.read_labels().labels))
        for sid in s.slides("simulated"):
            if lab[s.slide_attrs("simulated", sid)["patient_id"]] == "Positive":
                s.delete_slide("simulated", sid)
    from fusion.api import CVOptions, bench, cv

    run = cv(path, "late", CVOptions(label_map=None, missing="mask", bootstrap=100))
    leak = run.metrics["missingness_leak"]
    assert leak["presence_roc_auc"]["image"] == 1.0
    assert any("predicts the label by itself" in w for w in run.metrics["warnings"])
    rows, _ = bench(path, ["logreg", "late"], CVOptions(label_map=None, missing="mask", bootstrap=100), out=tmp_path / "b")
    assert "predicts the label by itself" in (tmp_path / "b" / "leaderboard.md").read_text()
    with pytest.raises(ValueError, match="--strict: whether a patient has image data predicts the label"):
        cv(path, "late", CVOptions(label_map=None, missing="mask", strict=True))
    # Dropping patients without the modality removes the leak: no warning.
    assert "missingness_leak" not in cv(path, "logreg", CVOptions(label_map=None, bootstrap=100)).metrics


def test_hdf5_truncated_is_not_called_locked_and_files_beside_the_store_refuse_symlinks(tmp_path):
    import os

    from featstore.errors import StoreLockedError

    h5 = tmp_path / "s.h5"
    with featstore.open(h5, "a") as s:
        s.write_labels("labels", featstore.LabelTable(["P1", "P2"], ["a", "b"], ["a", "b"]))
    data = h5.read_bytes()
    h5.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="truncated or corrupt") as info:
        featstore.open(h5)
    assert not isinstance(info.value, StoreLockedError)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    other = tmp_path / "o.h5"
    os.symlink(victim, tmp_path / "o.h5.lock")
    with pytest.raises(StoreError, match="symbolic link; refusing"):
        featstore.open(other, "a")
    assert victim.read_text() == "precious\n"


def test_bom_headers_are_stripped_and_latin1_names_the_file(tmp_path):
    from featstore.errors import InputError
    from featstore.tables import read_labels

    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffpatient_id,label\nP1,LumA\nP2,Basal\n".encode())
    assert read_labels(bom)[0].patient_ids == ["P1", "P2"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("patient_id,label\nP\xe9,LumA\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv: not UTF-8 text"):
        read_labels(latin)


def test_declared_sizes_are_bounded_before_any_pixel_is_read(tmp_path):
    """The patch grid is counted from the declared size and refused over --max-patches before the tissue
    thumbnail is read; a non-finite mpp is refused too."""
    from featstore.extract import ExtractConfig, RunConfig, extract, find_slides

    from .conftest import CMU

    small = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)
    report = extract(find_slides([CMU]), tmp_path / "t.zarr", small, run=RunConfig(num_workers=0, max_patches=10))
    assert "declares 2220 x 2967 px, a grid of 108 patches at 2.0 µm/px" in report.failed["CMU-1-Small-Region"]
    assert "over the limit of 10 per slide (--max-patches)" in report.failed["CMU-1-Small-Region"]
    # The bound is not part of the features' identity: the same config with another bound resumes the set.
    ok = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)
    assert extract(find_slides([CMU]), tmp_path / "t.zarr", ok, run=RunConfig(num_workers=0)).done == ["CMU-1-Small-Region"]
    # A tiled TIFF whose tiles declare no bytes (all TileByteCounts 0) is refused before planning reads a pixel.
    import tifffile

    img = np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "empty.tif") as tif:
        tif.write(img, tile=(256, 256), compression="jpeg", photometric="rgb")
        tif.write(img[::8, ::8], tile=(128, 128), compression="jpeg", photometric="rgb", subfiletype=1)
    with tifffile.TiffFile(tmp_path / "empty.tif", mode="r+") as tif:
        counts = tif.pages[0].tags["TileByteCounts"]
        counts.overwrite([0] * len(counts.value))
    (tmp_path / "m.csv").write_text(f"slide_path,slide_id,mpp\n{tmp_path / 'empty.tif'},empty,0.5\n")
    report = extract(find_slides([tmp_path / "m.csv"]), tmp_path / "t.zarr", ok, run=RunConfig(num_workers=0))
    assert "declares 1024 x 1024 px but its tiles hold no data" in report.failed["empty"]
    # A truncated .svs is called truncated, not "no mpp" (PIL would open its first page as a plain image).
    (tmp_path / "cut.svs").write_bytes(CMU.read_bytes()[:1_500_000])
    report = extract(find_slides([tmp_path / "cut.svs"]), tmp_path / "t.zarr", ok, run=RunConfig(num_workers=0))
    assert "OpenSlide cannot read this .svs file" in report.failed["cut"]
    assert "truncated or damaged (1,500,000 bytes)" in report.failed["cut"]


def test_bad_names_fail_when_slides_are_planned_not_after_the_compute(tmp_path):
    from featstore.extract import ExtractConfig, extract, find_slides

    from .conftest import CMU

    for sid, why in (("zarr.json", "reserved by the store layout"), ("x" * 300, "300 bytes long in UTF-8; at most 200")):
        manifest = tmp_path / "m.csv"
        manifest.write_text(f"slide_path,slide_id\n{CMU},{sid}\n")
        with pytest.raises(ValueError, match=why):
            find_slides([manifest])
    cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)
    with pytest.raises(ValueError, match="feature set name 'zarr.json' is reserved"):
        extract(find_slides([CMU]), tmp_path / "s.zarr", cfg, name="zarr.json", run=RunConfig(num_workers=0))
    assert not (tmp_path / "s.zarr").exists()


def test_a_slide_committed_by_another_run_first_is_kept_and_ours_is_skipped(tmp_path):
    """Two runs extract the same slide: the one that commits second sees the first's commit, says so and goes on."""
    from featstore.extract import ExtractConfig, extract, find_slides

    from .conftest import CMU

    cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)
    store = tmp_path / "s.zarr"
    assert extract(find_slides([CMU]), store, cfg, run=RunConfig(num_workers=0)).done == ["CMU-1-Small-Region"]
    with featstore.open(store) as s:
        first = s.slide_attrs(None, "CMU-1-Small-Region")["committed"]
    events = []

    def other_run_commits_first(e):  # the moment our run starts the slide, "another run" commits it
        if e["event"] == "slide_started":
            with featstore.open(store, "a") as s:
                s.delete_slide("resnet50-trunc", "CMU-1-Small-Region")
            assert extract(find_slides([CMU]), store, cfg, run=RunConfig(num_workers=0)).done == ["CMU-1-Small-Region"]
        events.append(e)

    with featstore.open(store, "a") as s:
        s.delete_slide("resnet50-trunc", "CMU-1-Small-Region")
    report = extract(find_slides([CMU]), store, cfg, on_event=other_run_commits_first, run=RunConfig(num_workers=0))
    assert report.skipped == ["CMU-1-Small-Region"] and report.failed == {} and report.done == []
    assert any(e["event"] == "slide_skipped" and e["reason"] == "already committed by another run" for e in events)
    with featstore.open(store) as s:
        assert s.slide_attrs(None, "CMU-1-Small-Region")["committed"] >= first
        assert s.validate() == []


@pytest.mark.parametrize(("node", "named"), [("tables/expression", "table expression"),
                                             ("features/simulated", "feature set simulated"),
                                             ("features/simulated/slides/SIM-00000-SIM", "slide SIM-00000-SIM")])
def test_an_object_that_lost_its_zarr_json_is_named_by_validate_and_refused_by_every_reader(sim, tmp_path, node, named):
    (sim / node / "zarr.json").unlink()
    r = runner.invoke(featstore_app, ["validate", str(sim)])
    assert r.exit_code == 1 and f"{named}: zarr.json missing" in r.output and "Traceback" not in r.output, r.output
    # Never skipped without a word: the trainer and export stop and name it.
    with featstore.open(sim) as s, pytest.raises(StoreError, match=f"{node.rsplit('/', 1)[1]}.*lost its metadata"):
        load_cohort(s, label_map=None)
    r = runner.invoke(featstore_app, ["export", str(sim), "--out", str(tmp_path / "clam")])
    if node.startswith("features"):
        assert r.exit_code == 1 and "lost its metadata" in r.output, r.output


def test_an_import_under_way_is_not_called_interrupted_but_the_trainer_waits_for_it(tmp_path):
    from featstore.interop import import_features

    from . import fault_ops

    path = tmp_path / "s.zarr"
    with featstore.open(path, "a") as s:
        import_features(s, [fault_ops.clam_folder(path)], "clam")
        s.write_labels("labels", featstore.LabelTable(["TCGA-AA-0000", "TCGA-AA-0001"], ["a", "b"], ["a", "b"]))
        s.mark_import("clam", s.slides("clam") + ["TCGA-AA-0002-01Z-00-DX1"])  # this live process is the importer
        assert s.validate() == []
        with pytest.raises(StoreError, match="an import of 3 slides is under way"):
            load_cohort(s, "clam", use_genes=False, label_map=None)


def test_a_patient_with_tumour_and_normal_samples_is_trained_on_the_tumour(tmp_path):
    """--all-samples keeps normals; the trainer takes each patient's primary tumour by import's rule, never the
    sample that happens to come last, and says what it passed over."""
    rng = np.random.default_rng(0)
    patients = [f"TCGA-AA-{i:04d}" for i in range(30)]
    y = np.arange(30) % 2
    tumour = (rng.standard_normal((30, 5)) + 3 * y[:, None]).astype(np.float32)
    normal = rng.standard_normal((30, 5)).astype(np.float32)
    rows = [(f"{p}-01A", p, "01", t) for p, t in zip(patients, tumour)]
    rows += [(f"{p}-11A", p, "11", n) for p, n in zip(patients, normal)]
    rows.sort(key=lambda r: (r[1], r[2]))  # each patient's normal after its tumour
    rows.append(("TCGA-AA-0099-11A", "TCGA-AA-0099", "11", normal[0]))  # a patient with a normal sample only
    path = tmp_path / "s.zarr"
    with featstore.open(path, "a") as s:
        s.write_expression("expression", featstore.ExpressionTable(
            np.stack([r[3] for r in rows]), [r[0] for r in rows], [f"G{j}" for j in range(5)], [r[1] for r in rows],
            [r[2] for r in rows], {}))
        labels = ["pos" if v else "neg" for v in y]
        s.write_labels("labels", featstore.LabelTable(patients + ["TCGA-AA-0099"], labels + ["pos"], labels + ["pos"]))
        cohort = load_cohort(s, use_image=False, label_map=None)
    assert cohort.patient_ids == patients  # the normal-only patient is not taken for a tumour
    np.testing.assert_array_equal(cohort.genes, tumour)
    notes = " ".join(cohort.summary["warnings"])
    assert "30 further samples" in notes and "1 patients dropped" in notes and "TCGA-AA-0099" in notes


def test_names_are_bounded_in_bytes_and_a_long_name_is_replaced_and_redone(tmp_path, store_path):
    import dataclasses
    import shutil

    from featstore.extract import extract, find_slides
    from featstore.names import check_name

    from . import fault_ops
    from .conftest import CMU

    with pytest.raises(ValueError, match="300 bytes long in UTF-8"):
        check_name("é" * 150, "table name")
    long = "t" * 200
    with featstore.open(store_path, "a") as s:  # --overwrite of a 200-byte name: staging holds no name
        for ids in (["P1"], ["P2"]):
            s.write_labels(long, featstore.LabelTable(ids, ["a"], ["a"]), overwrite=True)
        assert s.read_labels(long).patient_ids == ["P2"] and s.validate() == []
    # A slide with a 200-byte id whose file changed is redone, never "already committed by another run".
    slide = tmp_path / ("S" * 196 + ".svs")
    shutil.copy(CMU, slide)
    cfg = dataclasses.replace(fault_ops.CFG)
    store = tmp_path / "long.zarr"
    assert extract(find_slides([slide]), store, cfg, run=RunConfig(num_workers=0)).done == [slide.stem]
    with slide.open("ab") as fh:
        fh.write(b"\0")
    report = extract(find_slides([slide]), store, cfg, run=RunConfig(num_workers=0))
    assert report.done == [slide.stem] and report.skipped == [] and report.failed == {}, report


def test_a_damaged_model_folder_or_an_output_that_cannot_be_written_is_one_line(tmp_path):
    import json
    import shutil

    import torch

    from featstore.encoders import build_encoder
    from featstore.errors import WeightsError
    from fusion.api import CVOptions
    from fusion.model import fit
    from fusion.train import TrainConfig

    path = tmp_path / "s.zarr"
    simulate_cohort(path, patients=60, patches=8, dim=8, genes=20, seed=1).close()
    good = tmp_path / "model"
    fit(path, "concat", CVOptions(label_map=None, train=TrainConfig(epochs=3, patience=2, token_dim=4, top_genes=10)), good)
    meta = json.loads((good / "model.json").read_text())
    state = torch.load(good / "weights.pt", weights_only=True)

    class Payload:  # a pickle that would run code on load
        def __reduce__(self):
            return (print, ("pwned",))

    def json_with(**changes):
        return lambda m: (m / "model.json").write_text(json.dumps({**meta, **changes}))

    def weights(value):
        return lambda m: torch.save(value, m / "weights.pt")

    key = next(k for k, v in state.items() if v.dim() >= 2 and v.shape[-1] > 1)
    tamper = {
        "model.json not JSON": (lambda m: (m / "model.json").write_text("{not json"), "not valid JSON"),
        "model.json lacks head": (lambda m: (m / "model.json").write_text(json.dumps(
            {k: v for k, v in meta.items() if k != "head"})), "has no 'head'"),
        "threshold a string": (json_with(threshold="0.5"), "'threshold' is '0.5'"),
        "gene_dim 1e10": (json_with(gene_dim=10**10), "gene_dim 10000000000 is outside"),
        "pickled weights": (weights({"x": Payload()}), "weights.pt does not hold this model's weights"),
        "tensor of another shape": (weights({**state, key: state[key][..., :1]}), "weights.pt does not hold"),
        "non-finite weights": (weights({k: v * float("nan") for k, v in state.items()}), "non-finite prediction"),
    }
    for what, (damage, message) in tamper.items():
        folder = tmp_path / what.replace(" ", "_")
        shutil.copytree(good, folder)
        damage(folder)
        r = runner.invoke(fusion_app, ["predict", str(folder), str(path), "--out", str(folder / "p.csv")])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (what, r.output)
        assert not (folder / "p.csv").exists() and "pwned" not in r.output, what
    # Outputs are checked before any work: a cv --out that is a file fails at once, not after training.
    (tmp_path / "taken").write_text("x")
    for app, args in ((fusion_app, ["cv", str(path), "--label-map", "none", "--out", str(tmp_path / "taken")]),
                      (featstore_app, ["export", str(path), "--out", str(tmp_path / "taken")]),
                      (featstore_app, ["export", str(path), "--out", str(tmp_path / "taken" / "below")])):
        r = runner.invoke(app, args)
        assert r.exit_code == 1 and "taken" in r.output and "Traceback" not in r.output, r.output
        assert len([ln for ln in r.output.splitlines() if ln.strip()]) == 1, r.output
    # A state dict whose tensor has another shape: one line naming the tensor, not a traceback.
    from torchvision.models import resnet50

    sd = {k: (v[:1] if k == "conv1.weight" else v) for k, v in resnet50().state_dict().items()}
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(WeightsError, match=r"conv1.weight: \(1, 3, 7, 7\)"):
        build_encoder("resnet50-trunc", str(tmp_path / "w.pt"))


def test_bad_inputs_are_one_line_and_leave_no_store(tmp_path):
    import gzip

    import h5py

    from featstore.errors import InputError
    from featstore.tables import read_labels

    from .conftest import MIXOMICS

    new = tmp_path / "new.zarr"
    whole = gzip.compress((MIXOMICS / "data_train_mrna.csv").read_bytes())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "blank.csv").write_text("sample,G1,G2\nS1,1,2\n,3,4\n")
    (tmp_path / "noname.csv").write_text("sample,G1,\nS1,1,2\n")
    (tmp_path / "l.csv").write_text("patient_id,label\nP1,a\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    cases = [
        (["import-genes", str(tmp_path / "cut.csv.gz")], "truncated or corrupt"),
        (["import-genes", str(tmp_path / "blank.csv")], "row 3 has an empty id"),
        (["import-genes", str(tmp_path / "noname.csv")], "column 3 has an empty name"),
        (["import-labels", str(tmp_path / "l.csv"), "--label-map", "none", "--name", "_x"], "may not contain"),
        (["extract", "--slides", str(tmp_path / "empty"), "--out", str(new), "--weights", "random"], "no slide files"),
        (["extract", "--slides", str(tmp_path / "loop"), "--out", str(new), "--weights", "random"], "no slide files"),
    ]
    for args, message in cases:
        if args[0] != "extract":
            args += ["--store", str(new)]
        r = runner.invoke(featstore_app, args)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (args, r.output)
        assert not new.exists(), args
    # A value past float16 points at the option that stores it whole, and that option exists.
    with h5py.File(tmp_path / "big.h5", "w") as f:
        f.create_dataset("features", data=np.full((2, 4), 1e5, np.float32))
        f.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    r = runner.invoke(featstore_app, ["import-features", str(tmp_path / "big.h5"), "--store", str(new), "--name", "x"])
    assert r.exit_code == 1 and "import with --dtype float32" in r.output and not new.exists()
    r = runner.invoke(featstore_app, ["import-features", str(tmp_path / "big.h5"), "--store", str(new), "--name", "x",
                                      "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    # Two rows of one rank for one patient disagree: refused, never whichever came last.
    (tmp_path / "two.csv").write_text("id,label\nTCGA-AA-0001-02A,LumA\nTCGA-AA-0001-06A,Basal\n")
    with pytest.raises(InputError, match="conflicting labels 'LumA' \\(row 2\\) and 'Basal' \\(row 3\\)"):
        read_labels(tmp_path / "two.csv", id_column="id")


def test_a_path_holding_anything_but_a_featstore_store_is_never_written_and_ids_never_collide(tmp_path):
    import h5py
    import zarr

    from featstore.errors import InputError
    from featstore.interop import read_feature_files

    from . import fault_ops
    from .conftest import PAM50_LABELS

    foreign_h5 = tmp_path / "theirs.h5"
    with h5py.File(foreign_h5, "w") as f:  # only a dataset at the root, no attributes
        f.create_dataset("x", data=np.arange(3))
    foreign_zarr = tmp_path / "theirs.zarr"
    zarr.open_group(str(foreign_zarr), mode="w").create_array("x", shape=(3,), dtype="int64")
    for foreign in (foreign_h5, foreign_zarr):
        before = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in [foreign, *foreign.rglob("*")] if p.is_file())
        r = runner.invoke(featstore_app, ["import-labels", str(PAM50_LABELS / "pancan2018_brca_subtypes.csv"),
                                          "--store", str(foreign), "--id-column", "aliquot_barcode",
                                          "--label-column", "Subtype_Selected"])
        assert r.exit_code == 1 and "not a featstore store; refusing to write into it" in r.output, r.output
        after = sorted((p.relative_to(tmp_path), p.read_bytes()) for p in [foreign, *foreign.rglob("*")] if p.is_file())
        assert after == before
    # Two files that would be one slide: refused, naming both.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    clam = fault_ops.clam_folder(tmp_path / "a" / "s.zarr")
    twin = tmp_path / "b" / "TCGA-AA-0000-01Z-00-DX1.h5"
    twin.write_bytes((clam / twin.name).read_bytes())
    with pytest.raises(InputError, match="would both be slide 'TCGA-AA-0000-01Z-00-DX1'"):
        read_feature_files([clam, tmp_path / "b"])
