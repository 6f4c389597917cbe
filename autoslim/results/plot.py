"""Pareto-front and hypervolume figures for study reports.

As in Optuna's visualisation module, the numbers to draw are computed by a
pure function (:func:`front_projection_data`) that tests can check exactly,
and drawing is a thin layer on top. Figures are built with
``matplotlib.figure.Figure`` and the Agg canvas directly, never pyplot, so no
global backend or figure registry is touched: plotting is thread-safe, works
headless, and figures are freed as soon as they go out of scope.

:func:`front_figures` draws the same data as interactive plotly figures for the HTML
report (hover a point for its trial). plotly is an optional extra, imported only there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from autoslim.errors import AutoslimError
from autoslim.results.select import validate_table

_LOG_SPAN = 100.0
_PANEL_SIZE = (5.0, 4.0)
_MAX_COLS = 3


def _column(rows: pd.DataFrame, name: str) -> np.ndarray:
    return rows[name].to_numpy(dtype=float, na_value=np.nan)


def _baseline_xy(baseline: Mapping[str, float], x: str, y: str) -> tuple[float, float] | None:
    bx = float(baseline.get(x, math.nan))
    by = float(baseline.get(y, math.nan))
    return (bx, by) if math.isfinite(bx) and math.isfinite(by) else None


def front_projection_data(
    table: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
    front_trials: Sequence[int],
) -> list[dict[str, Any]]:
    """One dict per objective pair (i < j, in ``directions`` order) with what to draw.

    Keys: ``x_name``/``y_name``, ``x_direction``/``y_direction``; ``x``/``y``/
    ``trials`` of all feasible trials and ``infeasible_x``/``infeasible_y``/
    ``infeasible_trials`` (rows with a non-finite value in the pair are left out);
    ``front_x``/``front_y``/``front_trials`` of the front trials sorted by x (then y);
    ``baseline`` as an (x, y) tuple or None when either baseline value is unknown.
    The trial numbers are what interactive plots show on hover.
    """
    names = list(directions)
    validate_table(table, names)
    feasible = table["feasible"].to_numpy(dtype=bool, na_value=False)
    on_front = table["trial"].isin(list(front_trials)).to_numpy(dtype=bool)
    trials = table["trial"].to_numpy()
    data = []
    for x_name, y_name in combinations(names, 2):
        xs, ys = _column(table, x_name), _column(table, y_name)
        finite = np.isfinite(xs) & np.isfinite(ys)
        front = finite & feasible & on_front
        order = np.lexsort((ys[front], xs[front]))
        data.append(
            {
                "x_name": x_name,
                "y_name": y_name,
                "x_direction": directions[x_name],
                "y_direction": directions[y_name],
                "x": xs[finite & feasible],
                "y": ys[finite & feasible],
                "trials": trials[finite & feasible],
                "infeasible_x": xs[finite & ~feasible],
                "infeasible_y": ys[finite & ~feasible],
                "infeasible_trials": trials[finite & ~feasible],
                "front_x": xs[front][order],
                "front_y": ys[front][order],
                "front_trials": trials[front][order],
                "baseline": _baseline_xy(baseline, x_name, y_name),
            }
        )
    return data


def _label(name: str, direction: str) -> str:
    return f"{name} ({'max' if direction == 'maximize' else 'min'})"


def _wants_log(values: np.ndarray) -> bool:
    """Log axis when all values are positive and span more than 100x."""
    values = values[np.isfinite(values)]
    if len(values) == 0 or np.any(values <= 0):
        return False
    return bool(values.max() / values.min() > _LOG_SPAN)


def _draw_pair(ax: Axes, pair: dict[str, Any], *, connect: bool) -> None:
    ax.scatter(pair["x"], pair["y"], c="0.7", s=14, label="trials")
    if len(pair["infeasible_x"]):
        ax.scatter(
            pair["infeasible_x"],
            pair["infeasible_y"],
            c="0.5",
            marker="x",
            s=18,
            label="infeasible",
        )
    style = "o-" if connect else "o"
    ax.plot(pair["front_x"], pair["front_y"], style, c="tab:red", ms=5, label="Pareto front")
    xs = [pair["x"], pair["infeasible_x"]]
    ys = [pair["y"], pair["infeasible_y"]]
    if pair["baseline"] is not None:
        bx, by = pair["baseline"]
        ax.scatter([bx], [by], marker="*", s=160, c="tab:blue", zorder=5)
        ax.annotate("fp32 baseline", (bx, by), xytext=(6, 6), textcoords="offset points")
        xs.append(np.array([bx]))
        ys.append(np.array([by]))
    if _wants_log(np.concatenate(xs)):
        ax.set_xscale("log")
    if _wants_log(np.concatenate(ys)):
        ax.set_yscale("log")
    ax.set_xlabel(_label(pair["x_name"], pair["x_direction"]))
    ax.set_ylabel(_label(pair["y_name"], pair["y_direction"]))
    ax.legend(fontsize="small")


def _draw_hypervolume(ax: Axes, hv_history: np.ndarray) -> None:
    hv = np.asarray(hv_history, dtype=float).ravel()
    ax.plot(np.arange(1, len(hv) + 1), hv, "-", c="tab:green", drawstyle="steps-post")
    ax.set_xlabel("trials completed")
    ax.set_ylabel("hypervolume")
    ax.set_title("hypervolume over trials")


def _new_figure(panels: int) -> tuple[Figure, list[Axes]]:
    cols = min(_MAX_COLS, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(_PANEL_SIZE[0] * cols, _PANEL_SIZE[1] * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def _save(fig: Figure, path: str | Path | BinaryIO) -> Path | BinaryIO:
    """Write PNG to a path (parents created) or to a binary file object (for embedding)."""
    out = path if hasattr(path, "write") else Path(path)
    if isinstance(out, Path):
        out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, format="png", dpi=100)
    finally:
        fig.clear()
    return out


def plot_front(
    table: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
    front_trials: Sequence[int],
    path: str | Path,
    *,
    hv_history: np.ndarray | None = None,
) -> Path:
    """Write a PNG with one panel per objective pair (plus hypervolume) to ``path``.

    The front is joined by a line only with exactly two objectives: a 2-D
    projection of a higher-dimensional front is not itself a front.
    """
    pairs = front_projection_data(table, directions, baseline, front_trials)
    if not pairs and hv_history is None:
        raise AutoslimError("nothing to plot: need two objectives or a hypervolume history")
    fig, axes = _new_figure(len(pairs) + (hv_history is not None))
    for ax, pair in zip(axes, pairs, strict=False):
        _draw_pair(ax, pair, connect=len(directions) == 2)
    if hv_history is not None:
        _draw_hypervolume(axes[-1], hv_history)
    return _save(fig, path)


def plot_hypervolume(hv_history: np.ndarray, path: str | Path) -> Path:
    """Write a PNG of hypervolume against number of completed trials."""
    fig, axes = _new_figure(1)
    _draw_hypervolume(axes[0], hv_history)
    return _save(fig, path)


def sensitivity_matrix(table: pd.DataFrame, value: str) -> pd.DataFrame:
    """Layers × bit widths matrix of one sensitivity column, layers in model order."""
    layers = list(dict.fromkeys(table["layer"]))
    return table.pivot(index="layer", columns="bits", values=value).reindex(layers)


def plot_sensitivity(table: pd.DataFrame, value: str, path: str | Path) -> Path:
    """Heatmap of per-layer sensitivity (rows: layers, columns: bit widths)."""
    matrix = sensitivity_matrix(table, value)
    fig, axes = _new_figure(1)
    ax = axes[0]
    image = ax.imshow(matrix.to_numpy(dtype=float), aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), [str(c) for c in matrix.columns])
    ax.set_yticks(range(len(matrix.index)), list(matrix.index))
    ax.set_xlabel("bits")
    ax.set_title(f"sensitivity: {value}")
    for (i, j), v in np.ndenumerate(matrix.to_numpy(dtype=float)):
        ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


# --------------------------------------------------------------------------- interactive figures

_FIGURE_HEIGHT = 420
# Matplotlib's default cycle, so the PNG and the interactive plots read alike.
_GREY, _DARK_GREY, _RED, _BLUE, _GREEN = "#b3b3b3", "#808080", "#d62728", "#1f77b4", "#2ca02c"


def front_figures(
    table: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
    front_trials: Sequence[int],
    *,
    hover: Mapping[int, str] | None = None,
    hv_history: np.ndarray | None = None,
) -> list[tuple[str, Any]]:
    """Plotly figures of :func:`plot_front`'s panels, each with its caption: one per
    objective pair, then the hypervolume. One figure each rather than subplots, so a
    narrow page stacks them; the caption is left to the page, where a long one wraps
    instead of running under plotly's toolbar.

    Hovering a point shows ``hover[trial]``, HTML as plotly's hover labels take it (``<br>``,
    ``<b>``; escape anything else), or just the trial number. Raises ImportError without
    plotly: the caller falls back to the PNG.
    """
    import plotly.graph_objects as go

    hover = hover or {}

    def texts(trials: np.ndarray) -> list[str]:
        return [hover.get(int(t), f"trial {int(t)}") for t in trials]

    figures = []
    for pair in front_projection_data(table, directions, baseline, front_trials):
        fig = go.Figure()
        fig.add_scatter(
            x=pair["x"],
            y=pair["y"],
            mode="markers",
            name="trials",
            marker={"color": _GREY, "size": 7},
            hovertext=texts(pair["trials"]),
        )
        if len(pair["infeasible_x"]):
            fig.add_scatter(
                x=pair["infeasible_x"],
                y=pair["infeasible_y"],
                mode="markers",
                name="infeasible",
                marker={"color": _DARK_GREY, "symbol": "x", "size": 8},
                hovertext=texts(pair["infeasible_trials"]),
            )
        # As in the PNG: a line only with two objectives, where the projection is the front.
        fig.add_scatter(
            x=pair["front_x"],
            y=pair["front_y"],
            name="Pareto front",
            mode="lines+markers" if len(directions) == 2 else "markers",
            marker={"color": _RED, "size": 9},
            line={"color": _RED},
            hovertext=texts(pair["front_trials"]),
        )
        xs = [pair["x"], pair["infeasible_x"]]
        ys = [pair["y"], pair["infeasible_y"]]
        if pair["baseline"] is not None:
            bx, by = pair["baseline"]
            fig.add_scatter(
                x=[bx],
                y=[by],
                mode="markers",
                name="fp32 baseline",
                marker={"color": _BLUE, "symbol": "star", "size": 16},
                hovertext=[
                    f"<b>fp32 baseline</b><br>{pair['x_name']}: {bx:.4g}<br>"
                    f"{pair['y_name']}: {by:.4g}"
                ],
            )
            xs.append(np.array([bx]))
            ys.append(np.array([by]))
        fig.update_traces(hovertemplate="%{hovertext}<extra></extra>")
        fig.update_xaxes(
            title_text=_label(pair["x_name"], pair["x_direction"]),
            type="log" if _wants_log(np.concatenate(xs)) else "linear",
        )
        fig.update_yaxes(
            title_text=_label(pair["y_name"], pair["y_direction"]),
            type="log" if _wants_log(np.concatenate(ys)) else "linear",
        )
        figures.append((f"{pair['y_name']} against {pair['x_name']}", _layout(fig)))
    if hv_history is not None:
        hv = np.asarray(hv_history, dtype=float).ravel()
        fig = go.Figure()
        fig.add_scatter(
            x=np.arange(1, len(hv) + 1),
            y=hv,
            mode="lines",
            line={"color": _GREEN, "shape": "hv"},
            name="hypervolume",
            hovertemplate="%{x} trials: %{y:.4g}<extra></extra>",
        )
        fig.update_xaxes(title_text="trials completed")
        fig.update_yaxes(title_text="hypervolume")
        figures.append(("hypervolume over trials", _layout(fig)))
    return figures


def _layout(fig: Any) -> Any:
    # No fixed width: the page sizes the figure, so it fits a phone as well as a monitor.
    # The legend goes below the plot, where it does not narrow the plotting area.
    fig.update_layout(
        height=_FIGURE_HEIGHT,
        autosize=True,
        template="plotly_white",
        hovermode="closest",
        margin={"l": 60, "r": 20, "t": 30, "b": 40},
        legend={"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0},
    )
    return fig
