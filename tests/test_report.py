"""report.html rendered in a real browser (headless Chromium): it loads with no console message, every
figure decodes, each head has its section, and every number shown equals metrics.json."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from fusion.api import CVOptions, bench, cv
from fusion.simulate import simulate_cohort
from fusion.train import TrainConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FAST = TrainConfig(epochs=15, patience=5, token_dim=8, top_genes=30)


class _Metrics(HTMLParser):
    """The data-metric numbers, the head sections and the figures of a rendered page."""

    def __init__(self):
        super().__init__()
        self.metrics: list[tuple[str, str]] = []
        self.heads: list[str] = []
        self.figures = None
        self.images = 0
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-metric" in a:
            self._open = a["data-metric"]
        if tag == "section" and "data-head" in a:
            self.heads.append(a["data-head"])
        if tag == "body":
            self.figures = a.get("data-figures")
        if tag == "img":
            self.images += 1

    def handle_data(self, data):
        if self._open is not None:
            self.metrics.append((self._open, data))
            self._open = None


def render(page, tmp_path) -> tuple[_Metrics, str]:
    """The DOM after the load event, and what the browser logged."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("needs Chromium (apt-get install chromium); .ci/run installs it, and under CI its absence fails")
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parsed = _Metrics()
    parsed.feed(proc.stdout)
    return parsed, proc.stderr


def lookup(metrics: dict, path: str):
    for key in path.split("."):
        metrics = metrics[int(key)] if isinstance(metrics, list) else metrics[key]
    return metrics


def shown(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def check_numbers(parsed: _Metrics, metrics_of) -> None:
    assert len(parsed.metrics) > 20
    for path, text in parsed.metrics:
        assert text == shown(lookup(*metrics_of(path))), path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "sim.zarr"
    simulate_cohort(path, patients=120, patches=16, dim=16, genes=40, split=0.5, gene_signal=2.0, image_signal=2.0,
                    seed=3).close()
    return path


def test_bench_report_renders_in_chromium_with_every_head_and_the_numbers_of_metrics_json(cohort, tmp_path):
    heads = ["logreg", "gene_mlp", "concat"]
    bench(cohort, heads, CVOptions(label_map=None, bootstrap=200, train=FAST), out=tmp_path / "b")
    parsed, log = render(tmp_path / "b" / "report.html", tmp_path)
    assert "CONSOLE" not in log, [ln for ln in log.splitlines() if "CONSOLE" in ln]
    assert parsed.heads == heads
    # the forest plot and the best head per modality first; curves and reliability per head, plus the modality
    # check of the fusion head; all decoded
    assert parsed.figures == f"{parsed.images}/{parsed.images}" and parsed.images == 2 + 2 * len(heads) + 1
    per_head = {h: json.loads((tmp_path / "b" / h / "metrics.json").read_text()) for h in heads}
    check_numbers(parsed, lambda p: (per_head[p.split(".", 1)[0]], p.split(".", 1)[1]))
    assert any(p == "concat.modality_check.image.drop" for p, _ in parsed.metrics)
    text = (tmp_path / "b" / "report.html").read_text()
    assert "SIMULATED data" in text
    # The answer comes first: one sentence per fusion head, above the leaderboard and the folded head sections.
    assert text.index("Does histology add to expression?") < text.index("<h2>Leaderboard</h2>") < text.index("<details")
    sentences = re.findall(r"<li class='verdict'>(.*?)</li>", text)
    assert len(sentences) == 1 and sentences[0].startswith("concat ") and "the best single modality" in sentences[0]


def test_verdicts_say_what_a_fusion_head_adds_and_whether_it_uses_both_inputs():
    from types import SimpleNamespace

    from fusion.html_report import verdicts

    def run(check):
        return SimpleNamespace(metrics={"modality_check": check})

    both = {"genes": {"informative": True}, "image": {"informative": True}}
    no_image = {"genes": {"informative": True}, "image": {"informative": False, "verdict": "image adds nothing measurable"}}
    rows = [{"head": "cross_attn", "modalities": "genes+image", "vs_best_unimodal_difference": 0.03,
             "vs_best_unimodal_ci95": [0.01, 0.05], "vs_best_unimodal": ""},
            {"head": "late", "modalities": "genes+image", "vs_best_unimodal_difference": 0.004,
             "vs_best_unimodal_ci95": [-0.01, 0.02], "vs_best_unimodal": ""},
            {"head": "concat", "modalities": "genes+image", "vs_best_unimodal_difference": -0.02,
             "vs_best_unimodal_ci95": [-0.04, -0.005], "vs_best_unimodal": ""},
            {"head": "logreg", "modalities": "genes", "vs_best_unimodal": "best unimodal"}]
    got = verdicts(rows, {"cross_attn": run(both), "late": run(no_image), "concat": run(both), "logreg": run({})})
    assert got == [
        "cross_attn adds +0.030 ROC-AUC [+0.010, +0.050] over the best single modality, logreg; it uses both inputs.",
        "late is level with the best single modality, logreg: +0.004 ROC-AUC [-0.010, +0.020], within noise; "
        "image adds nothing measurable.",
        "concat is below the best single modality, logreg, by -0.020 ROC-AUC [-0.040, -0.005]; it uses both inputs."]


def test_cv_report_renders_and_a_broken_figure_is_caught(cohort, tmp_path):
    cv(cohort, "logreg", CVOptions(label_map=None, bootstrap=200, train=FAST), out=tmp_path / "c")
    page = tmp_path / "c" / "report.html"
    parsed, log = render(page, tmp_path)
    assert "CONSOLE" not in log and parsed.heads == ["logreg"] and parsed.figures == "2/2"
    metrics = json.loads((tmp_path / "c" / "metrics.json").read_text())
    check_numbers(parsed, lambda p: (metrics, p))
    # The checks can fail: a figure that does not decode and a number that differs are both seen.
    text = page.read_text()
    page.write_text(text.replace("data:image/png;base64,iVBOR", "data:image/png;base64,XXXX", 1))
    assert render(page, tmp_path)[0].figures == "1/2"
    roc = f"{metrics['summary']['roc_auc']['pooled']:.3f}"
    page.write_text(text.replace(f'summary.roc_auc.pooled">{roc}<', 'summary.roc_auc.pooled">0.999<'))
    with pytest.raises(AssertionError):
        check_numbers(render(page, tmp_path)[0], lambda p: (metrics, p))


def test_modality_plot_draws_a_check_whose_point_estimate_sits_an_ulp_outside_its_ci():
    """A noise input whose shuffling moves nothing: the drop's point estimate missed its percentile CI by one
    ulp in a real bench, and the run failed at its report, after training."""
    from fusion.html_report import _modality_bars

    check = {"genes": {"drop": 0.334, "ci95": [0.220, 0.443], "informative": True},
             "image": {"drop": -1.1102230246251565e-16, "ci95": [0.0, 1.1102230246251565e-16],
                       "informative": False}}
    assert _modality_bars(check).startswith('<img alt="" src="data:image/png;base64,')
