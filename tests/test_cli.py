"""The console scripts: thin over the API, clear one-line errors, exit codes."""

from __future__ import annotations

from typer.testing import CliRunner

from cli import featstore_app, fusion_app

from .conftest import CMU, MIXOMICS

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
