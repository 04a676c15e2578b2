"""A real SIGKILL at every step of every kind of commit, on both backends: the store is always sound, holds
the old object or the new one (never neither, never half of one), and a rerun ends where a clean run does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import featstore
from featstore.errors import StoreError
from fusion.cohort import load_cohort

from . import fault_ops
from .conftest import ROOT

# The steps of Store._swap_in each kind of commit passes through, and which object a kill there leaves.
STEPS = {
    "fresh": [("staged", "none"), ("committed", "new")],
    "replace": [("staged", "old"), ("aside", "old"), ("swapped", "new"), ("committed", "new")],
    # an import commits slide by slide: killed before its last, it is named as interrupted until rerun
    "per slide": [("staged", "interrupted"), ("committed", "interrupted")],
}
CASES = [  # (op, what runs before it, kind of commit)
    ("extract", None, "fresh"),
    ("import-genes", None, "fresh"),
    ("import-genes --overwrite", "import-genes", "replace"),
    ("import-features", None, "per slide"),
    ("view", "extract", "fresh"),
]


@pytest.mark.parametrize("suffix", ["zarr", "h5"])
@pytest.mark.parametrize(("op", "before", "kind"), CASES, ids=[c[0] for c in CASES])
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
