"""The store: both backends, real tables, atomic commits, crash safety, locking, validation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import featstore
from featstore.errors import StoreError, StoreLockedError
from featstore.tables import import_genes, import_labels

from .conftest import MIXOMICS, PAM50_LABELS


def _snapshot(store) -> dict:
    out = {"sets": {}, "tables": {}}
    for fs in store.feature_sets():
        out["sets"][fs] = {s: store.read_slide(fs, s).features.tobytes() for s in store.slides(fs)}
    for t in store.tables("expression"):
        e = store.read_expression(t)
        out["tables"][t] = (e.values.tobytes(), tuple(e.sample_ids), tuple(e.gene_ids))
    for t in store.tables("labels"):
        lab = store.read_labels(t)
        out["tables"][t] = (tuple(lab.patient_ids), tuple(lab.labels))
    return out


def test_real_tables_round_trip_identically_in_both_backends(tmp_path):
    results = []
    for suffix in ("zarr", "h5"):
        with featstore.open(tmp_path / f"s.{suffix}", "a") as s:
            import_genes(s, MIXOMICS / "data_train_mrna.csv", "expression")
            import_labels(s, MIXOMICS / "data_train_subtype.csv", "pam50", id_column="participant_code",
                          label_column="subtype")
            import_labels(s, PAM50_LABELS / "pancan2018_brca_subtypes.csv", "pancan",
                          id_column="aliquot_barcode", label_column="Subtype_Selected")
        with featstore.open(tmp_path / f"s.{suffix}") as s:
            e, lab, pan = s.read_expression("expression"), s.read_labels("pam50"), s.read_labels("pancan")
            assert s.validate() == []
            results.append((e, lab, pan))
    (e1, l1, p1), (e2, l2, p2) = results
    assert e1.values.shape == (150, 200) and e1.values.dtype == np.float32
    np.testing.assert_array_equal(e1.values, e2.values)
    assert e1.gene_ids == e2.gene_ids and e1.sample_ids == e2.sample_ids
    assert (l1.patient_ids, l1.labels) == (l2.patient_ids, l2.labels)
    assert (p1.patient_ids, p1.labels, p1.raw_labels) == (p2.patient_ids, p2.labels, p2.raw_labels)
    # The values survive unchanged from the CSV.
    first = (MIXOMICS / "data_train_mrna.csv").read_text().splitlines()[1].split(",")
    assert e1.sample_ids[0] == first[0]
    np.testing.assert_allclose(e1.values[0, :5], np.array(first[1:6], float), rtol=1e-6)
    # pam50-binary: LumA -> Luminal; Basal and Her2 -> Basal_Her2.
    assert set(l1.labels) == {"Luminal", "Basal_Her2"}
    assert l1.labels.count("Basal_Her2") == 75
    # PanCanAtlas: 1,097 primary tumours, one per patient; Normal calls excluded and counted.
    assert len(set(p1.patient_ids)) == len(p1.patient_ids)
    assert p1.provenance["excluded"]["Normal"] > 0
    assert set(p1.raw_labels) == {"LumA", "LumB", "Basal", "Her2"}


def test_slides_feature_sets_and_one_of_kind_rule(store_path):
    with featstore.open(store_path, "a") as s:
        s.create_feature_set("a", {"dim": 4}, "h1")
        s.write_slide("a", "S1", np.ones((5, 4), np.float16), np.arange(10).reshape(5, 2), None, {"patient_id": "P1",
                      "provenance": {"x": 1}})
        assert s.slides() == ["S1"]  # one feature set: the name may be left out
        s.create_feature_set("b", {"dim": 4}, "h2")
        with pytest.raises(StoreError, match="several features .*a, b"):
            s.slides()
        with pytest.raises(StoreError, match="another config"):
            s.create_feature_set("a", {"dim": 8}, "other")
        sl = s.read_slide("a", "S1")
        assert sl.features.shape == (5, 4) and sl.coords.dtype == np.int64
        assert sl.attrs["n_patches"] == 5 and sl.attrs["patient_id"] == "P1"
    with featstore.open(store_path) as s:
        with pytest.raises(StoreError, match="read-only"):
            s.create_feature_set("c", {}, "x")


def test_slide_writer_streams_in_odd_batches(store_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((3001, 16)).astype(np.float16)
    coords = rng.integers(0, 10_000, (3001, 2))
    with featstore.open(store_path, "a") as s:
        s.create_feature_set("f", {}, "h")
        w = s.begin_slide("f", "big", 3001, 16)
        for start in range(0, 3001, 97):
            w.write(feats[start:start + 97], coords[start:start + 97], np.ones(len(feats[start:start + 97])))
        assert s.slides("f") == []  # not visible before commit
        w.commit({"patient_id": "P", "provenance": {}})
        got = s.read_slide("f", "big")
    np.testing.assert_array_equal(got.features, feats)
    np.testing.assert_array_equal(got.coords, coords)


def test_slide_writer_takes_row_ranges_in_any_order_once_each(store_path):
    """Reader workers share a big slide's row ranges, so rows reach the writer out of order."""
    rng = np.random.default_rng(1)
    n, dim = 2000, 4096  # 8 KiB rows: 512-row chunks, so the 333-row ranges straddle chunk boundaries
    feats = rng.standard_normal((n, dim)).astype(np.float16)
    coords = rng.integers(0, 10_000, (n, 2))
    ranges = [(a, min(a + 333, n)) for a in range(0, n, 333)]
    rng.shuffle(ranges)
    with featstore.open(store_path, "a") as s:
        s.create_feature_set("f", {}, "h")
        w = s.begin_slide("f", "shuffled", n, dim)
        for a, b in ranges[:-1]:
            w.write(feats[a:b], coords[a:b], np.full(b - a, 0.5), start=a)
        a, b = ranges[0]
        with pytest.raises(ValueError, match=f"rows {a}:{a + 10}, some of them twice"):
            w.write(feats[a:a + 10], coords[a:a + 10], np.ones(10), start=a)
        with pytest.raises(ValueError, match=f"but the slide has {n} rows"):
            w.write(feats[:10], coords[:10], np.ones(10), start=n - 5)
        a, b = ranges[-1]
        with pytest.raises(ValueError, match=f"got {n - (b - a)} rows, expected {n}"):
            w.commit({"patient_id": "P", "provenance": {}})
        w.write(feats[a:b], coords[a:b], np.full(b - a, 0.5), start=a)
        w.commit({"patient_id": "P", "provenance": {}})
        got = s.read_slide("f", "shuffled")
    np.testing.assert_array_equal(got.features, feats)
    np.testing.assert_array_equal(got.coords, coords)
    assert (got.tissue_fraction == 0.5).all()


def test_validate_reports_problems(tmp_path):
    path = tmp_path / "v.zarr"
    with featstore.open(path, "a") as s:
        s.create_feature_set("f", {}, "h")
        bad = np.ones((3, 2), np.float32)
        bad[1, 1] = np.nan
        with pytest.raises(ValueError, match="slides/nan: feature row 1, column 1 is not finite"):
            s.write_slide("f", "nan", bad, np.zeros((3, 2)), None, {"patient_id": "P", "provenance": {}})
        s.write_slide("f", "noprov", np.ones((3, 2), np.float32), np.zeros((3, 2)), None, {"patient_id": "P"})
        problems = s.validate()
    assert any("slide noprov" in p and "provenance" in p for p in problems)
    assert not any("slide nan" in p for p in problems)


WRITER = textwrap.dedent("""
    import sys, time, numpy as np, featstore
    s = featstore.open(sys.argv[1], "a")
    s.create_feature_set("f", {"dim": 8}, "h")
    for i in range(int(sys.argv[2])):
        sid = f"S{i}"
        if sid in s.slides("f"):
            continue
        w = s.begin_slide("f", sid, 4000, 8)
        for start in range(0, 4000, 500):
            w.write(np.full((500, 8), i, np.float16), np.zeros((500, 2)), np.ones(500))
            if i == 2 and start == 2000 and sys.argv[3] == "slow":
                print("MID", flush=True)
                time.sleep(60)
        w.commit({"patient_id": sid, "provenance": {"i": i}})
    print("DONE", flush=True)
""")


def test_sigkill_mid_slide_leaves_valid_store_and_rerun_completes(store_path, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen([sys.executable, str(script), str(store_path), "5", "slow"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "MID"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with featstore.open(store_path) as s:
        assert s.slides("f") == ["S0", "S1"]  # S2 was half-written: invisible
        assert s.validate() == []
    out = subprocess.run([sys.executable, str(script), str(store_path), "5", "fast"], capture_output=True, text=True,
                         check=True)
    assert "DONE" in out.stdout
    with featstore.open(store_path) as s:
        assert s.slides("f") == [f"S{i}" for i in range(5)]
        assert s.validate() == []
        assert (s.read_slide("f", "S2").features == 2).all()
        assert s.read_slide("f", "S0").attrs["provenance"] == {"i": 0}


def test_hdf5_store_refuses_a_second_writer(tmp_path):
    path = tmp_path / "locked.h5"
    featstore.open(path, "a").close()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, featstore
        s = featstore.open({str(path)!r}, "a")
        print("HOLD", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HOLD"
        with pytest.raises(StoreLockedError, match=r"locked by another writer \(pid \d+\)"):
            featstore.open(path, "a")
    finally:
        holder.kill()
        holder.wait()
    featstore.open(path, "a").close()  # the lock dies with its holder


def test_concurrent_zarr_writers_do_not_corrupt(tmp_path):
    path = tmp_path / "multi.zarr"
    with featstore.open(path, "a") as s:
        s.create_feature_set("f", {"dim": 8}, "h")
    code = textwrap.dedent("""
        import sys, numpy as np, featstore
        s = featstore.open(sys.argv[1], "a")
        for i in range(int(sys.argv[2]), 40, 4):
            s.write_slide("f", f"S{i:02d}", np.full((700, 8), i, np.float16), np.zeros((700, 2)), None,
                          {"patient_id": "P", "provenance": {}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(k)]) for k in range(4)]
    assert all(p.wait() == 0 for p in procs)
    with featstore.open(path) as s:
        assert s.slides("f") == [f"S{i:02d}" for i in range(40)]
        assert all((s.read_slide("f", f"S{i:02d}").features == i).all() for i in range(40))
        assert s.validate() == []


def test_opening_errors(tmp_path):
    with pytest.raises(StoreError, match="must end in .zarr"):
        featstore.open(tmp_path / "x.txt", "a")
    with pytest.raises(StoreError, match="no store"):
        featstore.open(tmp_path / "absent.zarr")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(StoreError, match="not a Zarr v3 store"):
        featstore.open(tmp_path / "plain.zarr", "a")
    assert featstore.open(tmp_path / "new.zarr", "a").summary()["feature_sets"] == {}


def test_backends_state_their_own_differences(tmp_path):
    """Where the formats differ the backend says so (no caller branches on its name): HDF5 takes one writer
    and shows a lost chunk only when read; Zarr takes many and lists a deleted chunk file without reading."""
    from fusion.simulate import simulate_cohort

    for suffix, single in ((".zarr", False), (".h5", True)):
        path = tmp_path / f"s{suffix}"
        simulate_cohort(path, patients=4, patches=3, dim=8, genes=5, seed=0).close()
        node = "features/simulated/slides/SIM-00000-SIM/features"
        if suffix == ".zarr":
            (path / node / "c" / "0" / "0").unlink()
        with featstore.open(path, "a") as s:
            assert s.single_writer is single and s._backend.name == suffix.strip(".").replace("h5", "hdf5")
            assert s._backend.lost_chunks(node) == ([] if single else ["c/0/0"])
