"""The console scripts: thin over the API, clear one-line errors, exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

import featstore
from cli import featstore_app, fusion_app

from .conftest import CMU, MIXOMICS, ROOT

runner = CliRunner(env={"COLUMNS": "250"})


def test_featstore_commands(tmp_path):
    store = str(tmp_path / "s.zarr")
    r = runner.invoke(featstore_app, ["import-genes", str(MIXOMICS / "data_train_mrna.csv"), "--store", store])
    assert r.exit_code == 0 and "150 samples x 200 genes" in r.output
    r = runner.invoke(featstore_app, ["import-labels", str(MIXOMICS / "data_train_subtype.csv"), "--store", store,
                                      "--id-column", "participant_code", "--label-column", "subtype"])
    assert r.exit_code == 0 and "150 patients" in r.output
    bad = tmp_path / "bad.csv"
    bad.write_text("id,G1\nS1,x\n")
    r = runner.invoke(featstore_app, ["import-genes", str(bad), "--store", store, "--name", "other"])
    assert r.exit_code == 1 and "no numeric columns" in r.output
    r = runner.invoke(featstore_app, ["extract", "--slides", str(CMU), "--out", store, "--weights", "random",
                                      "--encoder", "resnet50-trunc", "--mpp", "2.0", "--patch-size", "64", "--quiet",
                                      "--num-workers", "0"])
    assert r.exit_code == 0, r.output
    for cmd in (["ls", store], ["info", store], ["info", store, "--slide", "CMU-1-Small-Region"], ["validate", store]):
        r = runner.invoke(featstore_app, cmd)
        assert r.exit_code == 0, (cmd, r.output)
    assert "CMU-1-Small-Region" in runner.invoke(featstore_app, ["info", store, "--slide", "CMU-1-Small-Region"]).output
    r = runner.invoke(fusion_app, ["cv", store, "--head", "logreg", "--out", str(tmp_path / "run"), "--epochs", "5"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "metrics.json").exists() and "Basal_Her2" in r.output


def test_the_suite_reads_only_the_data_bundled_in_the_project():
    from . import conftest

    paths = [v for k, v in vars(conftest).items() if k.isupper() and hasattr(v, "resolve") and k != "ROOT"]
    assert paths and all(p.resolve().is_relative_to(ROOT / "data") and p.exists() for p in paths), paths


def test_every_option_of_every_command_has_help():
    import typer.main

    missing = []
    for app in (featstore_app, fusion_app):
        group = typer.main.get_command(app)
        for name, cmd in group.commands.items():
            for p in cmd.params:
                if not getattr(p, "help", None):
                    missing.append(f"{group.name or ''} {name} {p.opts[0] if p.opts else p.name}")
    assert not missing, missing
    # One word, one meaning: --split is the CV grouping (cv, bench); simulate's signal share is --image-share.
    simulate = {o for p in typer.main.get_command(fusion_app).commands["simulate"].params for o in p.opts}
    assert "--image-share" in simulate and "--split" not in simulate


def test_training_options_are_defined_once_and_reach_the_run(tmp_path):
    """cv, bench and fit take exactly the fields of CVOptions and TrainConfig that carry help; a flag set on
    the command line is the value the run used."""
    import dataclasses

    from fusion.api import CVOptions
    from fusion.simulate import simulate_cohort
    from fusion.train import TrainConfig

    flags = {"--" + f.name.replace("_", "-") for cls in (CVOptions, TrainConfig) for f in dataclasses.fields(cls)
             if "help" in f.metadata}
    assert {"--labels-csv", "--calibrate", "--patience", "--inner-val", "--save-models"} <= flags
    for cmd in ("cv", "bench", "fit"):
        out = runner.invoke(fusion_app, [cmd, "--help"], env={"COLUMNS": "400"}).output
        assert all(f in out for f in flags), (cmd, [f for f in flags if f not in out])
    simulate_cohort(tmp_path / "s.zarr", patients=60, patches=8, dim=8, genes=20, seed=0).close()
    r = runner.invoke(fusion_app, ["cv", str(tmp_path / "s.zarr"), "--head", "gene_mlp", "--label-map", "none",
                                   "--calibrate", "isotonic", "--patience", "2", "--epochs", "4", "--bootstrap", "50",
                                   "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["calibration"]["method"] == "isotonic" and max(metrics["epochs"]) <= 4


def test_errors_are_one_line_and_a_mistyped_store_is_never_created(tmp_path):
    typo = tmp_path / "typo.zarr"
    for app, args in ((fusion_app, ["cv", str(typo), "--head", "logreg"]),
                      (fusion_app, ["bench", str(typo)]),
                      (featstore_app, ["import-genes", str(tmp_path / "nosuch.csv"), "--store", str(typo)]),
                      (featstore_app, ["import-labels", str(tmp_path / "nosuch.csv"), "--store", str(typo)]),
                      (featstore_app, ["import-features", str(tmp_path / "nosuch"), "--store", str(typo), "--name", "x"]),
                      (featstore_app, ["ls", str(typo)])):
        r = runner.invoke(app, args)
        assert r.exit_code == 1, (args, r.output)
        assert r.output.startswith("error: ") and r.output.count("\n") == 1, (args, r.output)
        assert "Traceback" not in r.output
        assert not typo.exists(), args
    # Weights and device: what is missing and the ways out, one line, exit 1; --debug shows the traceback.
    for extra, words in ((["--weights", "imagenet"], ["resnet50-0676ba61.pth", "--weights PATH", "--weights random"]),
                         (["--weights", "nosuch.pth"], ["--weights nosuch.pth: no such file", "'random'"]),
                         (["--weights", "random", "--device", "cuda"], ["no CUDA device", "--device cpu"])):
        r = runner.invoke(featstore_app, ["extract", "--slides", str(CMU), "--out", str(typo), *extra],
                          env={"TORCH_HOME": str(tmp_path / "empty-cache")})
        if extra[-1] == "cuda" and torch.cuda.is_available():
            continue
        assert r.exit_code == 1 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert all(w in r.output for w in words), r.output
        assert not typo.exists()
    r = runner.invoke(featstore_app, ["--debug", "extract", "--slides", str(CMU), "--out", str(typo), "--weights", "nosuch.pth"])
    assert r.exit_code != 0 and type(r.exception).__name__ == "WeightsError"


def test_messages_keep_their_quotes_and_name_cli_flags(tmp_path):
    store = tmp_path / "s.zarr"
    labels = tmp_path / "l.csv"
    labels.write_text("patient_id,label\nP1,'odd'\n")
    r = runner.invoke(featstore_app, ["import-labels", str(labels), "--store", str(store)])
    assert r.exit_code == 1 and "{\"'odd'\": 1}" in r.output, r.output
    r = runner.invoke(featstore_app, ["import-genes", str(MIXOMICS / "data_train_mrna.csv"), "--store", str(store)])
    assert r.exit_code == 0 and "--samples-as" in r.output, r.output
    r = runner.invoke(featstore_app, ["import-genes", str(MIXOMICS / "data_train_mrna.csv"), "--store", str(store)])
    assert r.exit_code == 1 and "already has a table 'expression'; pass --overwrite" in r.output, r.output


def test_simulate_never_replaces_real_tables_and_ls_lists_slide_ids(tmp_path):
    store = tmp_path / "r.zarr"
    r = runner.invoke(featstore_app, ["import-genes", str(MIXOMICS / "data_train_mrna.csv"), "--store", str(store)])
    assert r.exit_code == 0
    r = runner.invoke(fusion_app, ["simulate", "--out", str(store), "--patients", "20"])
    assert r.exit_code == 1 and "already holds table 'expression'" in r.output and "--overwrite" in r.output, r.output
    with featstore.open(store) as s:
        assert s.read_expression().values.shape == (150, 200) and s.feature_sets() == []
    sim = tmp_path / "sim.zarr"
    assert runner.invoke(fusion_app, ["simulate", "--out", str(sim), "--patients", "12", "--patches", "4"]).exit_code == 0
    r = runner.invoke(featstore_app, ["ls", str(sim)])
    assert r.exit_code == 0 and "SIM-00011-SIM" in r.output and "committed" in r.output
    listing = json.loads(runner.invoke(featstore_app, ["ls", str(sim), "--json"]).output)
    assert len(listing["feature_sets"]["simulated"]["slide_ids"]) == 12
    assert runner.invoke(featstore_app, ["ls", str(sim), "--failed"]).output == ""


def test_sigint_during_extract_says_what_was_committed_and_that_a_rerun_resumes(tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys

    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(12):
        shutil.copy(CMU, slides / f"CMU-{i}.svs")
    store = tmp_path / "s.zarr"
    cmd = [sys.executable, "-c", "import cli; cli.main_featstore()", "extract", "--slides", str(slides), "--out",
           str(store), "--weights", "random", "--encoder", "resnet50-trunc", "--mpp", "2.0", "--patch-size", "64",
           "--num-workers", "0", "--batch-size", "8"]
    # A job started in the background of a non-interactive shell (`make test &`, some CI runners) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler: the child would run to the end
    # (seen twice: all slides done, exit 0). The child gets the default disposition, as from a terminal.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "250"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:
        if "CMU-0" in line and "patches in" in line:  # the first slide is committed
            break
    proc.send_signal(signal.SIGINT)
    out, errs = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, errs)
    assert "Traceback" not in errs
    lines = [ln for ln in errs.splitlines() if ln.startswith("interrupted:")]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0], errs
    with featstore.open(store) as s:
        n = len(s.slides("resnet50-trunc"))
        assert n >= 1 and f"interrupted: {n} slides are committed" in lines[0]
        assert s.validate() == []


def test_the_python_api_takes_an_open_store_and_training_options_where_a_user_puts_them(tmp_path):
    from fusion.api import CVOptions, cv
    from fusion.simulate import simulate_cohort

    path = tmp_path / "s.h5"  # HDF5: reading a closed store fails, so "left open" is checked
    simulate_cohort(path, patients=40, patches=4, dim=4, genes=10, seed=1).close()
    with featstore.open(path) as s:  # an open Store, as a user of the Python API has one
        run = cv(s, "logreg", CVOptions(label_map=None, folds=2, bootstrap=100))
        assert s.read_labels().patient_ids  # still open: the caller owns it
    assert run.metrics["n_patients"] == 40
    opts = CVOptions(epochs=50, patience=3)
    assert (opts.train.epochs, opts.train.patience) == (50, 3)
    # A progress bar inside a head: every epoch of every stage, ending at its total (3 epochs x 2 stages).
    seen = []
    cv(path, "concat", CVOptions(label_map=None, folds=2, bootstrap=100, epochs=3, patience=3, token_dim=4),
       on_epoch=lambda head, done, total: seen.append((head, done, total)))
    assert seen[0] == ("concat", 0, 6) and seen[-1] == ("concat", 6, 6)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
    with pytest.raises(ValueError,
                       match=r"label_map \(--label-map\) must be one of pam50-binary, pam50 or none, got 'bogus'"):
        CVOptions(label_map="bogus")
    r = runner.invoke(fusion_app, ["cv", str(path), "--label-map", "none", "--exclude-genes", "pam5"])
    assert r.exit_code == 1 and "--exclude-genes 'pam5' is neither 'pam50' nor a file" in r.output, r.output
