"""Reports: built from a real tiny run, checked as files and (where Chromium exists) rendered."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import struct
import subprocess
import sys

import pytest

from autoslim.cli import main
from autoslim.results.report import _md_table, points_table
from autoslim.searching.driver import search

pytestmark = pytest.mark.slow
CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


def tiny_run(tmp_path_factory):
    """One tiny search with a constraint, made once per session and shared with the other
    results tests that read a finished run (tests/results/test_dashboard.py); each trial
    costs seconds. The constraint always holds: what it shows is where it is recorded."""
    import yaml

    from autoslim.run import load_run

    folder = tmp_path_factory.getbasetemp() / "results_tiny_run"
    if (folder / "run" / "summary.json").is_file():  # written when the search ended
        return load_run(folder / "run")
    folder.mkdir(exist_ok=True)
    experiment = {
        "name": "tiny",
        "task": {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 3}},
        "space": [
            {"type": "quantize.weight", "bits": [2, 8], "per_layer": False, "optional": False}
        ],
        "objectives": {"accuracy": "maximize", "size_bytes": "minimize"},
        "constraints": [{"objective": "accuracy", "max_drop": 1.0}],
        "search": {"trials": 2, "seed": 0, "startup_trials": 2},
        "target": {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return search(path, out=folder / "run", progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_report_html_and_markdown_hold_points_stages_and_plots(run, tmp_path):
    out = tmp_path / "report" / "report.html"
    assert main(["report", str(run.path), "-o", str(out)]) == 0
    page = out.read_text()
    assert "fp32 baseline" in page and "Per-stage breakdown" in page and "knee point" in page
    assert "<script src=" not in page and "<link" not in page  # nothing to fetch: works offline
    plots = _check_plots(page, run)
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# autoslim report: tiny")
    assert "energy_mj (estimated)" in markdown
    # the per-stage table starts from the baseline and ends at the selected point's full recipe
    first_stage = re.search(r"\| fp32 baseline \| ([0-9.]+) \|", markdown)
    assert first_stage is not None
    if CHROMIUM:
        _check_in_browser(out, tmp_path, plots)


def _check_plots(page, run):
    """Interactive plots with plotly.js inline once, or the PNG without plotly; the count."""
    if importlib.util.find_spec("plotly") is None:
        assert page.count('<img class="plot"') == 1 and "data:image/png;base64," in page
        return 1
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:200]) == 1 and '<img class="plot"' not in page
    specs = re.findall(r'<script type="application/json" id="plot-\d+-data">(.*?)</script>', page)
    assert len(specs) == page.count('class="plot plotly-figure"') == 2  # the pair, hypervolume
    hover = " ".join(t for trace in json.loads(specs[0])["data"] for t in trace["hovertext"])
    for number in run.table()["trial"]:  # every trial, with its recipe and measured values
        assert f"<b>trial {number}</b>" in hover
    assert "quant.bits=" in hover and "size_bytes: " in hover and "latency_ms: " in hover
    return len(specs)


# Headless Chromium will not make its window narrower than 500 px, so the report is laid
# out in an iframe of the width under test; this page reads it (same folder, file access)
# once the report's own script has counted the plots that drew.
PROBE = """<!DOCTYPE html><html><body style="margin:0;overflow:hidden">
<iframe id="report" src="report.html" width="{width}" height="{height}"
 style="border:0;display:block"></iframe>
<script>
var frame = document.getElementById("report");
frame.addEventListener("load", function measure() {{
  var doc = frame.contentDocument, out = document.body.dataset;
  if (!doc.body.dataset.plotsLoaded) {{ setTimeout(measure, 50); return; }}
  out.plots = doc.body.dataset.plots;
  out.plotsLoaded = doc.body.dataset.plotsLoaded;
  out.plotlyPlots = doc.querySelectorAll(".js-plotly-plot").length;
  out.scrollWidth = doc.documentElement.scrollWidth;
  out.innerWidth = frame.contentWindow.innerWidth;
}});
</script></body></html>
"""


def _check_in_browser(path, tmp_path, plots):
    """At a desktop and a phone width: no sideways scrolling, every plot drawn, and a
    screenshot of the size asked for."""
    plotly = importlib.util.find_spec("plotly") is not None
    for width, height in ((1280, 900), (390, 844)):
        probe = path.with_name(f"probe-{width}.html")
        probe.write_text(PROBE.format(width=width, height=height))
        shot = tmp_path / f"report-{width}.png"
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--allow-file-access-from-files",
            f"--user-data-dir={tmp_path / 'chromium'}",
            f"--window-size={width},{height}",
            "--virtual-time-budget=5000",
            f"--screenshot={shot}",
            "--dump-dom",
            probe.resolve().as_uri(),
        ]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
        body = dict(re.findall(r'data-([a-z-]+)="(\d+)"', dom))
        assert body.get("inner-width") == str(width), dom[-500:]
        assert int(body["scroll-width"]) <= width, body  # the page never scrolls sideways
        assert body["plots"] == body["plots-loaded"] == str(plots), body  # drawn, not just there
        assert body["plotly-plots"] == str(plots if plotly else 0), body
        assert struct.unpack(">II", shot.read_bytes()[16:24]) == (width, height)  # PNG IHDR


def test_without_plotly_the_plots_are_one_png(run, monkeypatch):
    from autoslim.results.report import build_report, render_html

    monkeypatch.setitem(sys.modules, "plotly", None)  # imports fail as if not installed
    monkeypatch.setitem(sys.modules, "plotly.graph_objects", None)
    page = render_html(build_report(run, stages=False))
    assert page.count('<img class="plot"') == 1 and "data:image/png;base64," in page
    assert 'class="plot plotly-figure"' not in page and "plotly.js v" not in page


def test_points_table_ratios_against_the_baseline(run):
    from autoslim.results.report import build_report

    report = build_report(run, stages=False)
    frame = points_table(report)
    assert frame.iloc[0]["point"] == "fp32 baseline" and frame.iloc[0]["size ×"] == 1.0
    trials = list(frame["trial"].iloc[1:])
    assert len(trials) == len(set(trials))  # a trial with several roles is one row
    assert set(trials) == set(report.points.values())
    for number, roles in zip(trials, frame["point"].iloc[1:], strict=True):
        assert roles.count(",") == sum(n == number for n in report.points.values()) - 1
    for _, row in frame.iloc[1:].iterrows():
        assert row["size ×"] == pytest.approx(row["size_bytes"] / run.baseline["size_bytes"])
        assert row["accuracy drop (pt)"] == pytest.approx(
            100 * (run.baseline["accuracy"] - row["accuracy"])
        )


def test_markdown_table_formats_bytes_exactly():
    import pandas as pd

    text = _md_table(pd.DataFrame([{"a": 364610.0, "b": 0.123456, "c": "x|y"}]))
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 364610 | 0.1235 | x\\|y |"]


def test_byte_counts_read_in_human_units():
    from autoslim.results.report import human_bytes

    assert human_bytes(364512.0) == "356.0 KiB"
    assert human_bytes(900.0) == "900 B"
    assert human_bytes(3 * 2**20) == "3.0 MiB"
    assert human_bytes(float("nan")) == ""
