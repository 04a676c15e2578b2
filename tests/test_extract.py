"""Extraction on real slides: mpp, failures per slide, resume after SIGKILL, coordinates, Dask equals local."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import featstore
from featstore.encoders import WeightsError, build_encoder
from featstore.extract import ExtractConfig, PatchEmbedder, RunConfig, extract, find_slides, read_patch, shard
from featstore.extract.dask import run_on_dask
from featstore.extract.events import _EventLog
from featstore.slides import open_slide
from featstore.tiling import Geometry

from .conftest import CMU, TCGA_NO_MPP, TILES

CFG = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0)


def _slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for i in range(3):
        shutil.copy(CMU, d / f"CMU-copy{i}.svs")
    data = CMU.read_bytes()
    (d / "truncated.svs").write_bytes(data[: len(data) // 3])
    (d / "not-a-slide.svs").write_text("this is not a slide\n")
    return d


def _mosaic(path, n: int, corrupt_bottom: bool = False) -> None:
    """An n x n mosaic of the real CMU slide as a JPEG pyramid (downsamples 1, 4, 32) at its true 0.499 µm/px.

    ``corrupt_bottom`` zeroes level 1's bottom two rows of tiles, which 2 µm/px patches are read from;
    the tissue thumbnail can come from level 2 and the check at open reads level 1's top-left corner.
    """
    import openslide

    with openslide.OpenSlide(str(CMU)) as s:
        big = np.tile(np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB")), (n, n, 1))
        px_per_cm = 1e4 / float(s.properties["openslide.mpp-x"])
    with tifffile.TiffWriter(path) as tif:
        for i, f in enumerate((1, 4, 32)):
            tif.write(np.ascontiguousarray(big[::f, ::f]), tile=(128, 128), compression="jpeg", photometric="rgb",
                      resolution=(px_per_cm / f, px_per_cm / f), resolutionunit="CENTIMETER", subfiletype=min(i, 1))
    if corrupt_bottom:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[1]
            across = -(-page.imagewidth // page.tilewidth)
            tiles = list(zip(page.dataoffsets, page.databytecounts))[-2 * across:]
        with open(path, "r+b") as fh:
            for offset, count in tiles:
                fh.seek(offset)
                fh.write(b"\0" * count)


def test_cmu_slide_with_own_mpp_and_coordinates_reproduce_rows(tmp_path):
    store = tmp_path / "s.zarr"
    report = extract(find_slides([CMU]), store, CFG, run=RunConfig(batch_size=16, num_workers=1))
    assert report.failed == {} and report.done == ["CMU-1-Small-Region"]
    with featstore.open(store) as s:
        sl = s.read_slide(None, "CMU-1-Small-Region")
        prov = sl.attrs["provenance"]
        assert prov["slide_mpp"] == pytest.approx(0.499) and prov["mpp_source"].startswith("metadata")
        assert prov["patch_size_level0"] == round(64 * 2.0 / 0.499)
        assert prov["weights"] == "random:0" and prov["encoder"] == "resnet50-trunc"
        assert sl.features.shape[1] == 1024 and len(sl.features) > 10
        assert (sl.tissue_fraction >= CFG.min_tissue).all()
        # Exported for CLAM with exactly the coords attributes CLAM writes and reads back.
        from featstore.interop import CLAM_COORDS_ATTRS, export_clam

        export_clam(s, None, tmp_path / "clam")
        assert s.validate() == []
    import h5py

    with h5py.File(tmp_path / "clam" / "h5_files" / "CMU-1-Small-Region.h5") as f:
        attrs = dict(f["coords"].attrs)
    assert set(CLAM_COORDS_ATTRS) <= set(attrs)
    assert attrs["patch_level"] == prov["level"] and attrs["patch_size"] == prov["read_size"]
    assert tuple(attrs["level_dim"]) == tuple(prov["level_dimensions"][prov["level"]])
    assert attrs["name"] == "CMU-1-Small-Region" and attrs["featstore_patch_size"] == 64
    # Re-read three stored coordinates from the slide and embed them: the stored rows come back.
    enc = build_encoder("resnet50-trunc", "random", 0)
    embed = PatchEmbedder(enc, torch.device("cpu"), "fp32")
    with open_slide(CMU) as reader:
        geom = Geometry.for_slide(2.0, 64, reader.mpp, reader.level_downsamples)
        assert prov["decode_scale"] == 4 and prov["downscale"].startswith("jpeg-dct-1/4")
        geom = dataclasses.replace(geom, scale=prov["decode_scale"])
        rows = [0, len(sl.coords) // 2, len(sl.coords) - 1]
        patches = np.stack([read_patch(reader, geom, *sl.coords[r]) for r in rows])
    again = embed(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(again, sl.features[rows].astype(np.float32), rtol=2e-2, atol=2e-2)


def test_slide_without_mpp_fails_alone_then_succeeds_with_manifest(tmp_path):
    store = tmp_path / "s.h5"
    report = extract(find_slides([TCGA_NO_MPP, CMU]), store, CFG, run=RunConfig(num_workers=0))
    assert list(report.failed) == ["TCGA-CR-7395-01A-01-TS1"]
    assert "no mpp" in report.failed["TCGA-CR-7395-01A-01-TS1"]
    assert report.exit_code == 2
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,mpp\n{TCGA_NO_MPP},0.25\n")
    report = extract(find_slides([manifest]), store, CFG, run=RunConfig(num_workers=0))
    assert report.done == ["TCGA-CR-7395-01A-01-TS1"] and report.exit_code == 0
    with featstore.open(store) as s:
        assert s.failures() == {}
        attrs = s.slide_attrs(None, "TCGA-CR-7395-01A-01-TS1")
        assert attrs["patient_id"] == "TCGA-CR-7395"
        assert attrs["provenance"]["mpp_source"] == "given" and attrs["provenance"]["slide_mpp"] == 0.25


def test_tiles_as_images_and_as_a_tile_folder(tmp_path):
    store = tmp_path / "t.zarr"
    report = extract(find_slides([TILES]), store, CFG, mpp_default=0.5, run=RunConfig(num_workers=1))
    assert "no-tissue" in report.failed and "no tissue" in report.failed["no-tissue"]
    assert "tcga-lung-rgb" in report.done
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_path,slide_id,patient_id,mpp\n{TILES},histolab-tiles,P1,0.5\n")
    report = extract(find_slides([manifest]), store, CFG, name="folder", run=RunConfig(num_workers=0))
    assert report.done == ["histolab-tiles"]
    with featstore.open(store) as s:
        attrs = s.slide_attrs("folder", "histolab-tiles")
        tiles = attrs["provenance"]["tiles"]
        assert [t["file"] for t in tiles] == sorted(p.name for p in TILES.glob("*.png"))
        assert s.validate() == []
    # The same folder as one slide said on the command line, without a manifest.
    specs = find_slides([TILES], tiles_as_slide=True)
    assert [(sp.slide_id, sp.path) for sp in specs] == [("he_tiles_histolab", str(TILES.resolve()))]
    bad = tmp_path / "bad.csv"
    for value in ("inf", "nan", "-1"):
        bad.write_text(f"slide_path,mpp\n{CMU},{value}\n")
        with pytest.raises(ValueError, match=f"row 2, column 'mpp': must be a finite number > 0, got '{value}'"):
            find_slides([bad])


def test_bad_slides_fail_cleanly_while_others_finish_and_resume_skips(tmp_path):
    d = _slides(tmp_path)
    store = tmp_path / "s.zarr"
    events = []
    report = extract(find_slides([d]), store, CFG, on_event=events.append, run=RunConfig(num_workers=2))
    assert sorted(report.done) == ["CMU-copy0", "CMU-copy1", "CMU-copy2"]
    assert set(report.failed) == {"truncated", "not-a-slide"}
    assert "OpenSlide cannot read this .svs file" in report.failed["not-a-slide"]
    assert "truncated or damaged" in report.failed["truncated"], report.failed
    assert {e["event"] for e in events} >= {"run_start", "slide_done", "slide_failed", "run_end", "progress"}
    assert (tmp_path / "s.zarr.events.jsonl").read_text().count("slide_done") == 3
    again = extract(find_slides([d]), store, CFG, run=RunConfig(num_workers=0))
    assert sorted(again.skipped) == ["CMU-copy0", "CMU-copy1", "CMU-copy2"] and again.done == []
    os.utime(d / "CMU-copy1.svs", (time.time() + 5, time.time() + 5))
    again = extract(find_slides([d]), store, CFG, run=RunConfig(num_workers=0))
    assert again.done == ["CMU-copy1"]
    with pytest.raises(featstore.StoreError, match="another config"):
        extract(find_slides([d]), store, ExtractConfig(encoder="resnet50-trunc", precision="fp32", patch_size=96, target_mpp=2.0))


def test_strict_stops_at_the_first_failure_and_leaves_a_clean_store(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    _mosaic(d / "big.tif", 2)
    (d / "junk.svs").write_bytes(os.urandom(len((d / "big.tif").read_bytes()) + 1))  # largest: claimed first
    report = extract(find_slides([d]), tmp_path / "s.zarr", CFG, strict=True, run=RunConfig(batch_size=2, num_workers=2))
    assert list(report.failed) == ["junk"] and report.done == []  # the big slide was being read: dropped
    with featstore.open(tmp_path / "s.zarr") as s:
        assert s.slides() == [] and list(s.failures()) == ["junk"] and s.validate() == []
    again = extract(find_slides([d]), tmp_path / "s.zarr", CFG, run=RunConfig(batch_size=2, num_workers=2))
    assert again.done == ["big"] and list(again.failed) == ["junk"]


def test_shards_partition_the_slides(tmp_path):
    specs = find_slides([_slides(tmp_path)])
    parts = [shard(specs, i, 3) for i in range(3)]
    assert sorted(s.slide_id for p in parts for s in p) == sorted(s.slide_id for s in specs)


KILLER = """
import sys
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides
cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=1.0)
extract(find_slides([sys.argv[1]]), sys.argv[2], cfg,
        on_event=lambda e: print(e["event"], flush=True), run=RunConfig(batch_size=8, num_workers=int(sys.argv[3])))
"""


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path, workers):
    d = tmp_path / "slides"
    d.mkdir()
    for i in range(4):
        shutil.copy(CMU, d / f"S{i}.svs")
    killed = tmp_path / "killed.zarr"
    errors = (tmp_path / "stderr.txt").open("w")  # the orphaned reader workers write here too
    proc = subprocess.Popen([sys.executable, "-c", KILLER, str(d), str(killed), str(workers)], stdout=subprocess.PIPE,
                            stderr=errors, text=True)
    done = 0
    for line in proc.stdout:
        done += line.strip() == "slide_done"
        if done == 1 and line.strip() == "progress":
            os.kill(proc.pid, signal.SIGKILL)  # mid-way through the second slide
            break
    proc.wait()
    with featstore.open(killed) as s:
        assert 1 <= len(s.slides()) < 4 and s.validate() == []
    subprocess.run([sys.executable, "-c", KILLER, str(d), str(killed), str(workers)], check=True, capture_output=True)
    clean = tmp_path / "clean.zarr"
    subprocess.run([sys.executable, "-c", KILLER, str(d), str(clean), "0"], check=True, capture_output=True)
    errors.close()  # by now the orphans have seen their parent go (the loader's watchdog) and exited quietly
    assert "Traceback" not in (tmp_path / "stderr.txt").read_text()
    with featstore.open(killed) as a, featstore.open(clean) as b:
        assert a.slides() == b.slides() == ["S0", "S1", "S2", "S3"]
        assert a.validate() == []
        for sid in a.slides():
            x, y = a.read_slide(None, sid), b.read_slide(None, sid)
            np.testing.assert_array_equal(x.coords, y.coords)
            np.testing.assert_allclose(x.features.astype(np.float32), y.features.astype(np.float32), atol=1e-2)


def test_a_big_slide_is_shared_by_idle_workers_and_equals_one_reader(tmp_path):
    """One slide, two workers: the one that finds no slide to claim gets row ranges of the other's."""
    _mosaic(tmp_path / "big.tif", 2)
    cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0, min_tissue=0.0)
    events = []
    # batch 2: 2-patch chunks and 8- to 64-patch shared ranges, so the ~230-patch slide splits.
    one = extract(find_slides([tmp_path / "big.tif"]), tmp_path / "one.zarr", cfg, run=RunConfig(batch_size=2, num_workers=0))
    two = extract(find_slides([tmp_path / "big.tif"]), tmp_path / "two.zarr", cfg,
                  on_event=events.append, run=RunConfig(batch_size=2, num_workers=2))
    assert one.done == two.done == ["big"] and one.patches == two.patches > 200
    shared = [e for e in events if e["event"] == "slide_shared"]
    assert shared and all(e["slide_id"] == "big" and 0 < e["patches"][0] < e["patches"][1] <= two.patches
                          for e in shared)
    with featstore.open(tmp_path / "one.zarr") as a, featstore.open(tmp_path / "two.zarr") as b:
        x, y = a.read_slide(None, "big"), b.read_slide(None, "big")
        np.testing.assert_array_equal(x.coords, y.coords)
        np.testing.assert_allclose(x.features.astype(np.float32), y.features.astype(np.float32), atol=1e-2)
        assert b.validate() == []
    # A plain image is not shared: every worker reading it would decode all of it.
    Image.fromarray(tifffile.imread(tmp_path / "big.tif", key=0)).save(tmp_path / "big.png", compress_level=1)
    events.clear()
    png = extract(find_slides([tmp_path / "big.png"]), tmp_path / "png.zarr", cfg,
                  mpp_default=0.499, on_event=events.append, run=RunConfig(batch_size=2, num_workers=2))
    assert png.done == ["big"] and png.patches > 200 and not any(e["event"] == "slide_shared" for e in events)


START_METHODS = """
import multiprocessing, sys
from featstore.extract import ExtractConfig, RunConfig, extract, find_slides
cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0, min_tissue=0.0)
if __name__ == "__main__":
    for method in ("spawn", "forkserver"):  # macOS's default, and Linux's from Python 3.14
        multiprocessing.set_start_method(method, force=True)
        r = extract(find_slides([sys.argv[1]]), f"{sys.argv[2]}/{method}.zarr", cfg, run=RunConfig(batch_size=2, num_workers=2))
        print(method, r.done, r.failed, r.patches, flush=True)
"""


def test_reader_workers_under_spawn_and_forkserver(tmp_path):
    _mosaic(tmp_path / "big.tif", 2)
    script = tmp_path / "start_methods.py"
    script.write_text(START_METHODS)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "big.tif"), str(tmp_path)], check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1]).stdout
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["spawn", "forkserver"]
    assert all("['big'] {}" in line for line in lines), out
    with featstore.open(tmp_path / "spawn.zarr") as a, featstore.open(tmp_path / "forkserver.zarr") as b:
        x, y = a.read_slide(None, "big"), b.read_slide(None, "big")
        np.testing.assert_array_equal(x.coords, y.coords)
        # Same tiles, same weights; the fp32 sums may round differently under load (thread scheduling), which the
        # fp16 store can turn into one last-place step: a wrong tile would differ by orders of magnitude more.
        np.testing.assert_allclose(x.features.astype(np.float32), y.features.astype(np.float32), rtol=1e-3, atol=1e-4)


def test_a_shared_slide_with_a_bad_tile_fails_alone(tmp_path):
    _mosaic(tmp_path / "bad.tif", 2, corrupt_bottom=True)
    shutil.copy(CMU, tmp_path / "good.svs")
    cfg = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=64, target_mpp=2.0, min_tissue=0.0,
                        thumbnail_side=128)
    events = []
    report = extract(find_slides([tmp_path / "bad.tif"]), tmp_path / "s.zarr", cfg,
                     on_event=events.append, run=RunConfig(batch_size=2, num_workers=2))
    assert any(e["event"] == "slide_shared" for e in events)  # the second worker had nothing else to do
    assert report.done == [] and list(report.failed) == ["bad"]
    assert re.search(r"bad\.tif.*tile \d+ of page 1 cannot be decoded", report.failed["bad"]), report.failed["bad"]
    report = extract(find_slides([tmp_path / "bad.tif", tmp_path / "good.svs"]), tmp_path / "s.zarr", cfg,
                     run=RunConfig(batch_size=2, num_workers=2))
    assert report.done == ["good"] and list(report.failed) == ["bad"]
    with featstore.open(tmp_path / "s.zarr") as s:
        assert s.slides() == ["good"] and list(s.failures()) == ["bad"] and s.validate() == []


def test_dask_local_cluster_equals_local_run(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    for i in range(3):
        shutil.copy(CMU, d / f"S{i}.svs")
    (d / "broken.svs").write_text("nope")
    local, dist = tmp_path / "local.zarr", tmp_path / "dask.zarr"
    r1 = extract(find_slides([d]), local, CFG, run=RunConfig(num_workers=0))
    r2 = extract(find_slides([d]), dist, CFG, run=RunConfig(dask_workers=2))
    assert sorted(r1.done) == sorted(r2.done) == ["S0", "S1", "S2"]
    assert list(r2.failed) == ["broken"]
    with featstore.open(local) as a, featstore.open(dist) as b:
        assert b.validate() == []
        for sid in a.slides():
            np.testing.assert_array_equal(a.read_slide(None, sid).coords, b.read_slide(None, sid).coords)
            np.testing.assert_allclose(a.read_slide(None, sid).features.astype(np.float32),
                                       b.read_slide(None, sid).features.astype(np.float32), atol=1e-2)
    with pytest.raises(featstore.StoreError, match="HDF5 store"):
        extract(find_slides([d]), tmp_path / "x.h5", CFG, run=RunConfig(dask_workers=1))
    # A task that raises (here: a second driver with another config for the same feature set) fails its
    # slide only, and the failure is recorded in the store like any other.
    shutil.copy(CMU, tmp_path / "S9.svs")
    spec = find_slides([tmp_path / "S9.svs"])[0]
    other = ExtractConfig(encoder="resnet50-trunc", precision="fp32", weights="random", patch_size=96, target_mpp=2.0)
    report = run_on_dask([(spec, {})], dist, "resnet50-trunc", other, RunConfig(device="cpu", batch_size=8, dask_workers=1),
                         None, _EventLog(dist, None))
    assert "dask task failed" in report.failed["S9"] and "another config" in report.failed["S9"]
    with featstore.open(dist) as b:
        assert "another config" in b.failures()["S9"]["reason"] and b.validate() == []


def test_weights_resolution_is_offline_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match="not found: .*hub/checkpoints/resnet50-0676ba61.pth does not exist"):
        build_encoder("resnet50", "imagenet")
    with pytest.raises(WeightsError, match="absent.pth: no such file"):
        build_encoder("resnet50", str(tmp_path / "absent.pth"))
    enc = build_encoder("resnet50", "random", seed=3)
    path = tmp_path / "hub" / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    path.parent.mkdir(parents=True)
    torch.save({"module." + k: v for k, v in enc.model.state_dict().items()}, path)
    loaded = build_encoder("resnet50", "imagenet")
    assert loaded.weights_id.startswith("sha256:")
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded.model(x), enc.model(x))
    torch.save({"nonsense": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="do not fit"):
        build_encoder("resnet50", str(tmp_path / "bad.pth"))


def test_precision_auto_on_cpu_is_measured_recorded_and_kept_on_resume(tmp_path, monkeypatch):
    """auto: fp32 on a CPU without bf16 units; with them, bf16 only when a timing finds it faster; a resumed
    feature set keeps the precision it was made in; the choice and the allocator are in the provenance."""
    from featstore.extract import embed

    cpu = torch.device("cpu")
    encoder = build_encoder("resnet50-trunc", "random")
    monkeypatch.setattr(embed, "cpu_bf16_flags", lambda: [])
    assert embed.resolve_precision("auto", cpu, encoder) == ("fp32", "auto: this CPU has no bf16 units")
    monkeypatch.setattr(embed, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    for speedup, want in ((2.0, "bf16"), (1.05, "fp32")):
        monkeypatch.setattr(embed, "_bf16_speedup", lambda *_a, s=speedup: s)
        got, why = embed.resolve_precision("auto", cpu, encoder)
        assert got == want and f"measured {'only ' if want == 'fp32' else ''}{speedup:.1f}x fp32" in why
    assert embed.resolve_precision("auto", cpu, encoder, existing="fp32")[0] == "fp32"  # resume: as made
    assert embed.resolve_precision("bf16", cpu, encoder) == ("bf16", "given")
    # A foundation model its authors run in half precision: bf16 without a timing (minutes for a ViT-g here).
    vit = dataclasses.replace(encoder, name="uni_v2", spec={**encoder.spec, "precision": "bf16"})
    monkeypatch.setattr(embed, "_bf16_speedup", lambda *_a: pytest.fail("a half-precision preset is not timed"))
    assert embed.resolve_precision("auto", cpu, vit) == (
        "bf16", "auto: CPU has avx512_bf16; uni_v2's authors run it in bf16 (not timed)")
    monkeypatch.setattr(embed, "_bf16_speedup", lambda *_a: 2.0)
    cfg = ExtractConfig(encoder="resnet50-trunc", weights="random", patch_size=64, target_mpp=2.0)
    extract(find_slides([CMU]), tmp_path / "s.zarr", cfg, run=RunConfig(num_workers=0))
    with featstore.open(tmp_path / "s.zarr") as s:
        prov = s.slide_attrs(None, "CMU-1-Small-Region")["provenance"]
        assert s.feature_set_info("resnet50-trunc")["config"]["precision"] == "bf16"
    assert prov["precision"] == "bf16" and "bf16 measured 2.0x fp32" in prov["precision_choice"]
    assert prov["allocator"].startswith("glibc malloc: mmap_max=0") and prov["device"] == "cpu"
    # The real timing on this machine, whatever it finds, gives one of the two with its reason.
    monkeypatch.undo()
    got, why = embed.resolve_precision("auto", cpu, encoder, 64)
    assert got in ("fp32", "bf16") and why.startswith("auto:")


def test_devices_run_one_worker_per_gpu_each_pinned_to_its_own(tmp_path):
    """--devices: one Dask worker process per GPU with CUDA_VISIBLE_DEVICES set to it, sharing the slides. The
    cluster and the pinning are real here; the model runs on the CPU (no GPU on this machine), so what is
    checked is that each slide was made by a worker that saw exactly one of the two devices, and both did."""
    from featstore.extract.run import resolve_devices

    d = tmp_path / "slides"
    d.mkdir()
    for i in range(4):
        shutil.copy(CMU, d / f"S{i}.svs")
    store = tmp_path / "s.zarr"
    specs = find_slides([d])
    extract([], store, CFG)  # the driver's part: the feature set, before any task runs
    report = run_on_dask([(sp, {}) for sp in specs], store, "resnet50-trunc", CFG, RunConfig(device="cpu", batch_size=8),
                         None, _EventLog(store, None), devices=["0", "1"])
    assert sorted(report.done) == ["S0", "S1", "S2", "S3"], report.failed
    with featstore.open(store) as s:
        seen = {s.slide_attrs(None, sid)["provenance"]["cuda_visible_devices"] for sid in s.slides()}
    assert seen == {"0", "1"}
    if not torch.cuda.is_available():
        with pytest.raises(featstore.errors.DeviceError, match="torch sees no CUDA device"):
            resolve_devices("all")


def test_what_the_features_are_and_how_the_run_goes_are_two_configs(tmp_path):
    """ExtractConfig names the feature set (its hash); RunConfig does not: two runs that differ only in how
    they go extract into one feature set, and each slide records its run with every "auto" resolved."""
    from featstore.extract import feature_set_config

    with pytest.raises(ValueError, match="decoder must be one of auto, cpu, gpu, openslide, got 'nvjpeg'"):
        RunConfig(decoder="nvjpeg")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        RunConfig(batch_size=0)
    with pytest.raises(TypeError):
        ExtractConfig(decoder="cpu")  # a run choice, not part of what the features are
    enc = build_encoder("resnet50-trunc", "random")
    assert "decoder" not in feature_set_config(CFG, enc, "fp32")
    store = tmp_path / "s.zarr"
    for run in (RunConfig(num_workers=0, batch_size=8), RunConfig(num_workers=1, batch_size=32, decoder="openslide")):
        report = extract(find_slides([CMU]), store, CFG, run, overwrite=True)
        assert report.done == ["CMU-1-Small-Region"]
        with featstore.open(store) as s:
            recorded = s.slide_attrs(None, "CMU-1-Small-Region")["provenance"]["run"]
        want = {**dataclasses.asdict(run), "device": "cpu", "decoder": "cpu" if run.decoder == "auto" else run.decoder}
        assert recorded == want
