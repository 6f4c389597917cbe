"""Self-contained reports of a run: one HTML file (plots embedded) and a Markdown summary.

The HTML's plots are interactive where plotly is installed (the ``report`` extra), with
plotly.js inline once, so the file still opens offline; without plotly they are one PNG.

The report puts the fp32 baseline next to the points a user most often wants (knee, most
accurate within 1 pt, smallest, fastest). For each point it gives the per-stage
breakdown, as the seed article's ResNet-50 table does, but measured. Every stage prefix
of the point's recipe is rebuilt, saved and measured like any artifact, so each row is
what shipping the pipeline up to that stage would give.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import numbers
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from autoslim.measure.paired import verdict_of
from autoslim.progress import progress
from autoslim.recipe import write_text_atomic
from autoslim.results.select import select_named_points
from autoslim.run import Run

STAGE_COLUMNS = ("size_bytes", "latency_ms", "peak_memory_bytes", "energy_mj")
POINT_TITLES = {
    "knee": "knee point",
    "compromise": "compromise (nearest the ideal)",
    "most_accurate_within_1pt": "most accurate within 1 pt",
    "smallest": "smallest",
    "fastest": "fastest",
}


@dataclass
class Report:
    run: Run
    points: dict[str, int]
    stages: dict[int, pd.DataFrame] = field(default_factory=dict)


def stage_breakdown(run: Run, trial_number: int) -> pd.DataFrame:
    """Measure the artifact after each stage prefix of a trial's recipe (fresh processes)."""
    from autoslim.artifact import save_artifact
    from autoslim.measure import measure_in_subprocess
    from autoslim.pipeline import apply_recipe

    recipe = run.recipe(trial_number)
    metric = run.metric_name
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in range(len(recipe.stages) + 1):
            prefix = recipe.model_copy(update={"stages": recipe.stages[:count]})
            label = "fp32 baseline" if count == 0 else f"+ {recipe.stages[count - 1].kind}"
            out = save_artifact(apply_recipe(prefix), prefix, Path(tmp) / f"stage_{count}")
            values = measure_in_subprocess(out, prefix.target, splits=("val", "test"))
            rows.append(
                {
                    "stage": label,
                    metric: values[metric],
                    f"test_{metric}": values[f"test_{metric}"],
                    **{k: values[k] for k in STAGE_COLUMNS},
                }
            )
    return pd.DataFrame(rows)


def build_report(run: Run, *, stages: bool = True) -> Report:
    table = run.table()
    points = select_named_points(table, run.objectives, run.baseline, run.metric_name)
    report = Report(run=run, points=points)
    if stages:
        for number in progress(sorted(set(points.values())), desc="per-stage breakdowns"):
            report.stages[number] = stage_breakdown(run, number)
    return report


def _energy_label(run: Run) -> str:
    return f"energy_mj ({run.baseline.get('energy_source', 'estimated')})"


def roles_by_trial(report: Report) -> dict[int, str]:
    """Each selected trial once, with every role it plays ("knee point, smallest"), in
    the order the roles are listed: one row and one breakdown per trial."""
    roles: dict[int, list[str]] = {}
    for key, number in report.points.items():
        roles.setdefault(number, []).append(POINT_TITLES[key])
    return {number: ", ".join(titles) for number, titles in roles.items()}


def points_table(report: Report) -> pd.DataFrame:
    """The baseline and each selected point, with every measured value and ratios."""
    run, table = report.run, report.run.table().set_index("trial")
    metric = run.metric_name
    columns = [metric, *STAGE_COLUMNS]
    rows = [{"point": "fp32 baseline", "trial": "", **{c: run.baseline.get(c) for c in columns}}]
    latency = [""]
    for number, roles in roles_by_trial(report).items():
        row = table.loc[number]
        rows.append({"point": roles, "trial": number, **{c: row.get(c) for c in columns}})
        latency.append(latency_ratio_text(row, run.baseline))
    frame = pd.DataFrame(rows)
    base = run.baseline
    frame["size ×"] = frame["size_bytes"] / base["size_bytes"]
    frame["latency ×"] = latency
    frame[f"{metric} drop (pt)"] = 100 * (base[metric] - frame[metric])
    return frame.rename(columns={"energy_mj": _energy_label(run)})


def shipped_form_text(row: pd.Series | dict) -> str:
    """How a point runs where it ships, and what it stores smaller without running
    faster there ("storage-only"), e.g. ``eager torch; storage-only: 4-bit weights``."""
    form = row.get("deploy_form")
    if not isinstance(form, str):
        return ""
    parts = storage_only_parts(row)
    return f"{form}; storage-only: {', '.join(parts)}" if parts else form


def storage_only_parts(row: pd.Series | dict) -> list[str]:
    text = row.get("storage_only")
    return json.loads(text) if isinstance(text, str) and text.startswith("[") else []


def latency_ratio_text(row: pd.Series, baseline: dict) -> str:
    """A point's latency against the baseline as the report shows it: the paired ratio
    with its interval, and a gain only where the whole interval is below 1.0."""
    ratio = row.get("latency_ratio")
    if not isinstance(ratio, float) or math.isnan(ratio):  # measured without a reference
        return f"{row['latency_ms'] / baseline['latency_ms']:.2f} (unpaired)"
    lo, hi = row["latency_ratio_lo"], row["latency_ratio_hi"]
    span = f"{lo:.2f}–{hi:.2f}"
    verdict = verdict_of(lo, hi, bool(row.get("latency_noisy")))
    if verdict in ("noisy", "no gain"):
        return f"{verdict} ({span})"
    return f"{ratio:.2f} ({span})"


def _png_data_uri(draw) -> str:
    buffer = io.BytesIO()
    draw(buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


PLOTS_CAPTION = "Pareto front (projections) and hypervolume over trials"


def _plot_inputs(run: Run) -> tuple[pd.DataFrame, list[int], Any] | None:
    """The completed trials, the front's trial numbers and the hypervolume history that
    both kinds of plot draw; None when no trial completed."""
    from autoslim.searching.outputs import hypervolume_summary

    table = run.table()
    done = table[table["state"] == "COMPLETE"]
    if done.empty:
        return None
    _, _, history = hypervolume_summary(run, table)
    return done, run.front()["trial"].tolist(), history


def _plots(run: Run) -> list[tuple[str, str]]:
    """The static fallback: one PNG (as data URI) of every panel, for when plotly is missing."""
    from autoslim.results.plot import plot_front

    inputs = _plot_inputs(run)
    if inputs is None:
        return []
    done, front, history = inputs
    uri = _png_data_uri(
        lambda buf: plot_front(done, run.objectives, run.baseline, front, buf, hv_history=history)
    )
    return [(PLOTS_CAPTION, uri)]


def interactive_figures(run: Run) -> list[tuple[str, str]] | None:
    """The plots as (caption, plotly figure JSON), hover text included; None without
    plotly (the report then embeds the PNG instead)."""
    from autoslim.results.plot import front_figures

    inputs = _plot_inputs(run)
    if inputs is None:
        return []
    done, front, history = inputs
    try:
        figures = front_figures(
            done,
            run.objectives,
            run.baseline,
            front,
            hover=hover_texts(run, done),
            hv_history=history,
        )
    except ImportError:
        return None
    return [(caption, figure.to_json()) for caption, figure in figures]


# Shown on hover: a recipe's parameters beyond this many are counted, not listed.
HOVER_PARAMS = 6


def hover_texts(run: Run, table: pd.DataFrame) -> dict[int, str]:
    """What hovering a trial's point shows: its number, its recipe in short (the sampled
    parameters and how it ships) and what was measured, as plotly hover HTML."""
    texts = {}
    for _, row in table.iterrows():
        lines = [f"<b>trial {int(row['trial'])}</b>" + ("" if row["feasible"] else " (infeasible)")]
        lines += _recipe_lines(row)
        # The metric first, even where it is no objective; latency below, with its spread.
        names = [n for n in dict.fromkeys([run.metric_name, *run.objectives]) if n != "latency_ms"]
        lines += [f"{name}: {_hover_value(name, row.get(name))}" for name in names]
        lines += _latency_lines(row, run.baseline)
        texts[int(row["trial"])] = "<br>".join(lines)
    return texts


def _recipe_lines(row: pd.Series) -> list[str]:
    params = [
        f"{key.removeprefix('param:')}={_fmt(value) if isinstance(value, float) else value}"
        for key, value in row.items()
        if str(key).startswith("param:") and not (isinstance(value, float) and value != value)
    ]
    if len(params) > HOVER_PARAMS:
        params = [*params[:HOVER_PARAMS], f"… {len(params) - HOVER_PARAMS} more"]
    # Three parameters a line keeps the label narrow enough for a phone.
    lines = [html.escape(", ".join(params[i : i + 3])) for i in range(0, len(params), 3)]
    shipped = shipped_form_text(row)
    return lines + ([f"runs as: {html.escape(shipped)}"] if shipped else [])


def _hover_value(name: str, value: object) -> str:
    if not isinstance(value, numbers.Real) or value != value:  # numpy scalars included
        return ""
    text = _fmt(float(value))
    return f"{text} ({human_bytes(float(value))})" if name.endswith("_bytes") else text


def _latency_lines(row: pd.Series, baseline: dict) -> list[str]:
    """Latency with its spread over the timed runs and, against the baseline, the paired
    ratio with its interval (what the tables show), where the run measured them."""
    latency = row.get("latency_ms")
    if not isinstance(latency, float) or latency != latency:
        return []
    text = f"latency_ms: {_fmt(latency)}"
    lo, hi = row.get("latency_p10_ms"), row.get("latency_p90_ms")
    if isinstance(lo, float) and isinstance(hi, float) and lo == lo and hi == hi:
        text += f" (p10–p90 {_fmt(lo)}–{_fmt(hi)})"
    lines = [text]
    if baseline.get("latency_ms"):
        lines.append(f"latency ×: {html.escape(latency_ratio_text(row, baseline))}")
    return lines


def _fmt(value: float) -> str:
    """Byte counts and other large integral values exactly; the rest to 4 significant digits."""
    if value != value:
        return ""
    if value == int(value) and abs(value) >= 1000:
        return str(int(value))
    return f"{value:.4g}"


def human_bytes(value: float) -> str:
    """A byte count as people read it: 364512 -> "356.0 KiB"."""
    if value != value:
        return ""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def _human(frame: pd.DataFrame) -> pd.DataFrame:
    """Byte columns in human units (the CSV and JSON outputs keep exact counts)."""
    frame = frame.copy()
    for column in frame.columns:
        if str(column).endswith("_bytes"):
            frame[column] = [
                human_bytes(float(v)) if isinstance(v, (int, float)) else v for v in frame[column]
            ]
    return frame


def _html_table(frame: pd.DataFrame) -> str:
    # Wide tables scroll inside their box, so the page itself never scrolls sideways.
    table = _human(frame).to_html(index=False, float_format=_fmt, na_rep="", border=0, escape=True)
    return f'<div class="table-scroll">{table}</div>'


def render_html(report: Report) -> str:
    run = report.run
    title = f"autoslim report: {html.escape(run.info['experiment'])}"
    parts = [f"<h1>{title}</h1>", _summary_paragraph(report, markdown=False)]
    parts += ["<h2>Baseline and selected points</h2>", _html_table(points_table(report))]
    for number, roles in roles_by_trial(report).items():
        if number in report.stages:
            parts += [
                f"<h3>Per-stage breakdown: {html.escape(roles)} (trial {number})</h3>",
                _html_table(
                    report.stages[number].rename(columns={"energy_mj": _energy_label(run)})
                ),
            ]
    figures = interactive_figures(run)
    if figures:
        parts += [
            f"<h2>{PLOTS_CAPTION}</h2>",
            "<p>Hover a point for its trial, recipe and measured values; drag to zoom, "
            "double-click to zoom out.</p>",
            *(_figure_html(i, *figure) for i, figure in enumerate(figures)),
        ]
    elif figures is None:  # no plotly: the same plots as one static PNG
        for caption, uri in _plots(run):
            parts += [
                f"<h2>{html.escape(caption)}</h2>",
                f'<img class="plot" alt="{html.escape(caption)}" src="{uri}">',
            ]
    parts += ["<h2>Pareto front</h2>", _html_table(run.front())]
    return _page(title, "\n".join(parts), plotly=bool(figures))


def _figure_html(index: int, caption: str, spec: str) -> str:
    """A caption, a placeholder the page's script draws the figure into, and the figure
    as JSON.

    ``<`` is written as its JSON escape, so no value (a parameter, a task name) can end
    the script element early: the JSON parses to the same figure."""
    data = spec.replace("<", "\\u003c")
    return (
        f"<h3>{html.escape(caption)}</h3>\n"
        f'<div class="plot plotly-figure" id="plot-{index}"></div>\n'
        f'<script type="application/json" id="plot-{index}-data">{data}</script>'
    )


def _summary_paragraph(report: Report, *, markdown: bool) -> str:
    run, table = report.run, report.run.table()
    counts = table["state"].value_counts().to_dict()
    source = run.baseline.get("energy_source", "estimated")
    text = (
        f"{len(table)} trials ({counts.get('COMPLETE', 0)} complete, {counts.get('FAIL', 0)} failed); "
        f"objectives: {', '.join(f'{k} ({v})' for k, v in run.objectives.items())}; "
        "every value measured on the saved artifact; "
        f"energy is {source}."
    )
    return text if markdown else f"<p>{html.escape(text)}</p>"


# Draws the interactive figures, then records on <body> how many plots exist
# (data-plots) and how many actually drew (data-plots-loaded): a decoded PNG, or a plotly
# figure with its SVG. A headless browser reads both to check the page really renders.
_PAGE_SCRIPT = """
(function () {
  function drawn(plot) {
    if (plot.tagName === "IMG") return plot.naturalWidth > 0;
    return plot.classList.contains("js-plotly-plot") && plot.querySelector(".main-svg") !== null;
  }
  function record() {
    // Not ".plot": plotly's own SVG has groups of that class.
    var plots = Array.from(document.querySelectorAll("img.plot, div.plotly-figure"));
    document.body.dataset.plotsLoaded = plots.filter(drawn).length;
    document.body.dataset.plots = plots.length;
  }
  var figures = Array.from(document.querySelectorAll("div.plotly-figure"));
  var drawing = Promise.all(figures.map(function (div) {
    if (typeof Plotly === "undefined") return null;
    var spec = JSON.parse(document.getElementById(div.id + "-data").textContent);
    return Plotly.newPlot(div, spec.data, spec.layout, {responsive: true, displaylogo: false});
  }));
  window.addEventListener("load", function () { drawing.then(record, record); });
})();
"""

_STYLE = (
    # A scrollbar from the start: one appearing once the figures are drawn would leave
    # them wider than the page.
    "html{overflow-y:scroll}"
    "body{font-family:sans-serif;margin:0 auto;padding:1em;max-width:1200px}"
    "h1,h2,h3,p{overflow-wrap:anywhere}"
    ".table-scroll{overflow-x:auto;margin:1em 0}"
    "table{border-collapse:collapse}"
    "td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}"
    "img.plot{max-width:100%;height:auto}"
    "div.plotly-figure{width:100%;margin:1em 0}"
)


def _page(title: str, body: str, *, plotly: bool = False) -> str:
    # plotly.js goes in once, inline, however many figures: the file works offline.
    library = f"<script>{_plotly_js()}</script>" if plotly else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_STYLE}</style>
</head><body>
{body}
{library}
<script>{_PAGE_SCRIPT}</script>
</body></html>
"""


def _plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def _md_table(frame: pd.DataFrame) -> str:
    def cell(value: object) -> str:
        return _fmt(value) if isinstance(value, float) else str(value).replace("|", "\\|")

    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def render_markdown(report: Report) -> str:
    run = report.run
    lines = [
        f"# autoslim report: {run.info['experiment']}",
        "",
        _summary_paragraph(report, markdown=True),
        "",
        "## Baseline and selected points",
        "",
        _md_table(_human(points_table(report))),
    ]
    for number, roles in roles_by_trial(report).items():
        if number in report.stages:
            lines += [
                "",
                f"### Per-stage breakdown: {roles} (trial {number})",
                "",
                _md_table(_human(report.stages[number])),
            ]
    return "\n".join(lines) + "\n"


def write_report(run: Run, out_html: str | Path, *, stages: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and the Markdown summary beside it (``.md``)."""
    report = build_report(run, stages=stages)
    out_html = Path(out_html)
    write_text_atomic(out_html, render_html(report))
    out_md = out_html.with_suffix(".md")
    write_text_atomic(out_md, render_markdown(report))
    return out_html, out_md
