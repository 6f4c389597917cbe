"""Plot data is checked exactly; drawing is checked to produce a real PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from autoslim.errors import AutoslimError
from autoslim.results.plot import (
    front_figures,
    front_projection_data,
    plot_front,
    plot_hypervolume,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": [10, 11, 12, 13, 14],
            "feasible": [True, True, False, True, True],
            "accuracy": [0.9, 0.8, 0.95, 0.7, np.nan],
            "size_bytes": [4e6, 2e4, 1e3, 1e3, 5e3],
        }
    )


def test_front_projection_data_two_objectives(table: pd.DataFrame) -> None:
    directions = {"accuracy": "maximize", "size_bytes": "minimize"}
    baseline = {"accuracy": 0.92, "size_bytes": 8e6}
    (pair,) = front_projection_data(table, directions, baseline, [13, 10, 11])
    assert pair["x_name"] == "accuracy"
    assert pair["y_name"] == "size_bytes"
    assert pair["x_direction"] == "maximize"
    np.testing.assert_array_equal(pair["x"], [0.9, 0.8, 0.7])
    np.testing.assert_array_equal(pair["y"], [4e6, 2e4, 1e3])
    np.testing.assert_array_equal(pair["trials"], [10, 11, 13])
    np.testing.assert_array_equal(pair["infeasible_x"], [0.95])
    np.testing.assert_array_equal(pair["infeasible_trials"], [12])
    np.testing.assert_array_equal(pair["front_x"], [0.7, 0.8, 0.9])
    np.testing.assert_array_equal(pair["front_y"], [1e3, 2e4, 4e6])
    np.testing.assert_array_equal(pair["front_trials"], [13, 11, 10])
    assert pair["baseline"] == (0.92, 8e6)


def test_front_projection_data_three_objectives_pairs_and_missing_baseline(
    table: pd.DataFrame,
) -> None:
    table = table.assign(latency_ms=[3.0, 2.0, 1.0, 1.5, 1.0])
    directions = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    data = front_projection_data(table, directions, {"accuracy": 0.9, "latency_ms": 4.0}, [10])
    assert [(d["x_name"], d["y_name"]) for d in data] == [
        ("accuracy", "size_bytes"),
        ("accuracy", "latency_ms"),
        ("size_bytes", "latency_ms"),
    ]
    assert [d["baseline"] for d in data] == [None, (0.9, 4.0), None]
    # Trial 14 has NaN accuracy but is finite in the size/latency projection.
    np.testing.assert_array_equal(data[2]["x"], [4e6, 2e4, 1e3, 5e3])
    np.testing.assert_array_equal(data[2]["front_trials"], [10])


def test_plot_front_writes_png(table: pd.DataFrame, tmp_path: Path) -> None:
    directions = {"accuracy": "maximize", "size_bytes": "minimize"}
    out = plot_front(
        table,
        directions,
        {"accuracy": 0.92, "size_bytes": 8e6},
        [10, 11, 13],
        tmp_path / "sub" / "front.png",
        hv_history=np.array([0.0, 1.0, 1.0, 2.0, 2.0]),
    )
    assert out == tmp_path / "sub" / "front.png"
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_plot_front_three_objectives_and_errors(table: pd.DataFrame, tmp_path: Path) -> None:
    table = table.assign(latency_ms=[3.0, 2.0, 1.0, 1.5, 1.0])
    directions = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    out = plot_front(table, directions, {}, [10, 11, 13], tmp_path / "front3.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(AutoslimError, match="nothing to plot"):
        plot_front(table, {"accuracy": "maximize"}, {}, [10], tmp_path / "one.png")
    with pytest.raises(AutoslimError, match="missing column"):
        plot_front(table, {"flops": "minimize", "accuracy": "maximize"}, {}, [], tmp_path / "x.png")


def test_plot_hypervolume_writes_png(tmp_path: Path) -> None:
    out = plot_hypervolume(np.array([0.0, 0.5, 0.5, 0.9]), tmp_path / "hv.png")
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_front_figures_hover_each_trial_and_follow_the_png(table: pd.DataFrame) -> None:
    pytest.importorskip("plotly")
    directions = {"accuracy": "maximize", "size_bytes": "minimize"}
    figures = front_figures(
        table,
        directions,
        {"accuracy": 0.92, "size_bytes": 8e6},
        [10, 11, 13],
        hover={10: "<b>trial 10</b><br>quant.bits=8"},
        hv_history=np.array([0.0, 1.0, 2.0]),
    )
    assert [caption for caption, _ in figures] == [
        "size_bytes against accuracy",
        "hypervolume over trials",
    ]
    pair = figures[0][1]
    traces = {trace.name: trace for trace in pair.data}
    assert list(traces) == ["trials", "infeasible", "Pareto front", "fp32 baseline"]
    # a trial without hover text shows its number; each point's text follows its trial
    assert list(traces["trials"].hovertext) == [
        "<b>trial 10</b><br>quant.bits=8",
        "trial 11",
        "trial 13",
    ]
    assert list(traces["infeasible"].hovertext) == ["trial 12"]
    assert list(traces["Pareto front"].hovertext)[-1].startswith("<b>trial 10</b>")
    assert traces["Pareto front"].mode == "lines+markers"  # two objectives: the front is a line
    assert pair.layout.yaxis.type == "log" and pair.layout.xaxis.type == "linear"
    assert pair.layout.width is None  # the page sizes it


def test_front_figures_three_objectives_project_without_lines(table: pd.DataFrame) -> None:
    pytest.importorskip("plotly")
    table = table.assign(latency_ms=[3.0, 2.0, 1.0, 1.5, 1.0])
    directions = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
    figures = front_figures(table, directions, {}, [10, 11, 13])
    assert len(figures) == 3  # the pairs; no hypervolume history given
    for _, figure in figures:
        front = next(trace for trace in figure.data if trace.name == "Pareto front")
        assert front.mode == "markers"
        assert all(trace.name != "fp32 baseline" for trace in figure.data)
