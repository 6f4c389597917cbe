"""Reports: built from a real tiny run, checked as files and (where Chromium exists) rendered."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from autoslim.cli import main
from autoslim.results.report import _md_table, points_table
from autoslim.searching.driver import search

pytestmark = pytest.mark.slow
CHROMIUM = (
    shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny search shared by the module's tests (each trial costs seconds)."""
    import yaml

    folder = tmp_path_factory.mktemp("report_run")
    experiment = {
        "name": "tiny",
        "task": {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 3}},
        "space": [
            {"type": "quantize.weight", "bits": [2, 8], "per_layer": False, "optional": False}
        ],
        "objectives": {"accuracy": "maximize", "size_bytes": "minimize"},
        "search": {"trials": 2, "seed": 0, "startup_trials": 2},
        "target": {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(experiment))
    return search(path, out=folder / "run", progress=False)


def test_report_html_and_markdown_hold_points_stages_and_plots(run, tmp_path):
    out = tmp_path / "report" / "report.html"
    assert main(["report", str(run.path), "-o", str(out)]) == 0
    page = out.read_text()
    assert page.count('<img class="plot"') == 1 and "data:image/png;base64," in page
    assert "fp32 baseline" in page and "Per-stage breakdown" in page and "knee point" in page
    markdown = out.with_suffix(".md").read_text()
    assert markdown.startswith("# autoslim report: tiny")
    assert "energy_mj (estimated)" in markdown
    # the per-stage table starts from the baseline and ends at the selected point's full recipe
    first_stage = re.search(r"\| fp32 baseline \| ([0-9.]+) \|", markdown)
    assert first_stage is not None
    if CHROMIUM:
        _check_in_browser(out, tmp_path)


def _check_in_browser(path, tmp_path):
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
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        path.resolve().as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert 'data-plots="1"' in dom, dom[-500:]
    assert 'data-plots-loaded="1"' in dom  # the embedded PNG decoded, not just present


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
