"""A real SIGKILL at every step of every kind of commit, on both backends: the store is always sound, holds
the old object or the new one (never neither, never half of one), and a rerun ends where a clean run does."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import featstore
from featstore.errors import InputError, StoreError
from featstore.extract import RunConfig, extract, find_slides
from fusion.cohort import load_cohort

from . import fault_ops
from .conftest import CMU, ROOT

# The steps of Store._swap_in each kind of commit passes through, and which object a kill there leaves.
STEPS = {
    "fresh": [("staged", "none"), ("committed", "new")],
    "replace": [("staged", "old"), ("aside", "old"), ("swapped", "new"), ("committed", "new")],
    # an import commits slide by slide: killed before its last, it is named as interrupted until rerun
    "per slide": [("staged", "interrupted"), ("committed", "interrupted")],
    # the feature set itself, made in one step before any slide
    "feature set": [("feature set staged", "none"), ("feature set committed", "none")],
}
CASES = [  # (op, what runs before it, kind of commit)
    ("extract", None, "fresh"),
    ("extract", None, "feature set"),
    ("import-genes", None, "fresh"),
    ("import-genes --overwrite", "import-genes", "replace"),
    ("import-features", None, "per slide"),
    ("view", "extract", "fresh"),
]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
@pytest.mark.parametrize(("op", "before", "kind"), CASES, ids=[f"{c[0]} ({c[2]})" for c in CASES])
def test_a_kill_at_any_commit_step_leaves_a_sound_store_that_resumes_to_a_clean_run(tmp_path, suffix, op, before,
                                                                                      kind):
    clean = tmp_path / f"clean.{suffix}"
    if before:
        fault_ops.run(before, clean)
    states = {"none": None, "old": fault_ops.fingerprint(op, clean)}
    fault_ops.run(op, clean)
    states["new"] = fault_ops.fingerprint(op, clean)
    assert states["new"] is not None and states["new"] != states["old"]
    for step, left in STEPS[kind]:
        path = tmp_path / step / f"s.{suffix}"
        path.parent.mkdir()
        if before:
            fault_ops.run(before, path)
        proc = subprocess.run([sys.executable, "-m", "tests.fault_ops", op, str(path)], cwd=ROOT, capture_output=True,
                              text=True, env={**os.environ, "FEATSTORE_TEST_KILL_AT": step})
        assert proc.returncode == -9, f"{op} never reached step {step!r}: {proc.stderr[-2000:]}"
        with featstore.open(path, "a") as s:  # the next writer tidies up after the dead one
            problems = s.validate(deep=True)
        if left == "interrupted":
            assert len(problems) == 1 and "import of 2 slides was interrupted" in problems[0], problems
            assert fault_ops.fingerprint(op, path) != states["new"]
            with featstore.open(path, "a") as s:  # and the trainer refuses to take it for a whole cohort
                s.write_labels("labels", featstore.LabelTable(["TCGA-AA-0000", "TCGA-AA-0001"], ["a", "b"], ["a", "b"]))
                with pytest.raises(StoreError, match="interrupted"):
                    load_cohort(s, "clam", use_genes=False, label_map=None)
        else:
            assert problems == [], (op, step)
            assert fault_ops.fingerprint(op, path) == states[left], f"{op} killed at {step!r} left not the {left} object"
        if left != "new":
            fault_ops.run(op, path)
        assert fault_ops.fingerprint(op, path) == states["new"], (op, step)
        with featstore.open(path) as s:
            assert s.validate(deep=True) == [] and not s._backend.groups("_staging"), (op, step)


def _kill_at(step: str, op: str, path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tests.fault_ops", op, str(path)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "FEATSTORE_TEST_KILL_AT": step})
    assert proc.returncode == -9, f"{op} never reached step {step!r}: {proc.stderr[-2000:]}"


def _race(path, *ops: str) -> list[tuple[int, str]]:
    """The ops as processes started together on one store: (exit code, stderr) each."""
    procs = [subprocess.Popen([sys.executable, "-m", "tests.fault_ops", op, str(path)], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for op in ops]
    return [(p.wait(), p.communicate()[1]) for p in procs]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_overwrite_redoes_only_the_slides_named_and_a_kill_mid_swap_hides_nothing(tmp_path, suffix):
    path = tmp_path / f"s.{suffix}"
    fault_ops.run("extract two", path)
    with featstore.open(path) as s:
        before = {sid: (s.slide_attrs(None, sid)["commit_id"], s.read_slide(None, sid).features) for sid in s.slides()}
    slide, other = fault_ops.SLIDE, next(sid for sid in before if sid != fault_ops.SLIDE)
    # Killed between moving the old slide aside and moving its redo into place.
    _kill_at("aside", "extract --overwrite", path)
    with featstore.open(path) as s:  # a reader, before any writer has tidied up: it still sees both slides
        assert s.slides() == sorted(before)
        np.testing.assert_array_equal(s.read_slide(None, slide).features, before[slide][1])
        problems = s.validate(deep=True)
    assert len(problems) == 1 and f"slide {slide}: a replacement was interrupted" in problems[0], problems
    fault_ops.run("extract --overwrite", path)
    with featstore.open(path) as s:
        assert s.slides() == sorted(before) and s.validate(deep=True) == [] and not s._backend.groups("_staging")
        assert s.slide_attrs(None, other)["commit_id"] == before[other][0]  # kept as it was
        assert s.slide_attrs(None, slide)["commit_id"] != before[slide][0]  # redone
    # Another config would leave the slide not named beside features of another kind: refused, nothing touched.
    with pytest.raises(StoreError, match=f"holds 1 slide.*{other}.*name every slide"):
        extract(find_slides([CMU]), path, dataclasses.replace(fault_ops.CFG, seed=1), overwrite=True, run=RunConfig(num_workers=0))
    with featstore.open(path) as s:
        assert s.slides() == sorted(before) and s.slide_attrs(None, other)["commit_id"] == before[other][0]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
def test_a_failing_run_removes_only_a_store_it_created_and_only_while_it_holds_nothing(tmp_path, suffix):
    path = tmp_path / f"new.{suffix}"
    with pytest.raises(InputError), featstore.writing(path):
        raise InputError("a bad file, found after the store was made")
    assert not path.exists()
    labels = featstore.LabelTable(["TCGA-AA-0000"], ["a"], ["a"])
    with pytest.raises(InputError), featstore.writing(path) as ours:
        if suffix == "zarr":  # another run writes into the store this run created (HDF5 takes one writer)
            with featstore.open(path, "a") as theirs:
                theirs.write_labels("labels", labels)
        else:
            ours.write_labels("labels", labels)
        raise InputError("a bad file")
    with featstore.open(path) as s:
        assert s.read_labels().patient_ids == ["TCGA-AA-0000"]
    with pytest.raises(InputError), featstore.writing(path):  # it existed before this run: never removed
        raise InputError("a bad file")
    assert path.exists()


def test_runs_racing_to_create_one_store_lose_nothing_and_one_name_goes_to_one_table(tmp_path):
    for i in range(3):
        path = tmp_path / f"race{i}" / "s.zarr"
        path.parent.mkdir()
        fault_ops.clam_folder(path)
        # Two identical imports and a gene table into a store none of them finds: all land.
        results = _race(path, "import-features", "import-features", "import-genes")
        assert [code for code, _ in results] == [0, 0, 0], results
        with featstore.open(path) as s:
            assert s.validate(deep=True) == [] and s.tables() == ["expression"] and len(s.slides("clam")) == 2
        # Two tables under one name, no --overwrite: exactly one lands, the other is refused, as one after the other.
        path = tmp_path / f"race{i}" / "t.zarr"
        results = _race(path, "import-genes", "import-genes (another table)")
        assert sorted(code for code, _ in results) == [0, 1], results
        loser = next(err for code, err in results if code)
        assert "already has a table 'expression'" in loser, loser
        winner = ["import-genes", "import-genes (another table)"][[code for code, _ in results].index(0)]
        clean = tmp_path / f"race{i}" / "clean.zarr"
        fault_ops.run(winner, clean)
        assert fault_ops.fingerprint(winner, path) == fault_ops.fingerprint(winner, clean)
