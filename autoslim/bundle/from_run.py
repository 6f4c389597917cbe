"""Which front points go into a bundle, and the bundle written from a run folder."""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from autoslim.bundle.store import Manifest, PointEntry, check_bundle_folder, write_bundle
from autoslim.errors import AutoslimError
from autoslim.results.select import select_named_points, select_trial
from autoslim.run import Run

ROLE_NAMES = {
    "knee": "knee point",
    "compromise": "compromise",
    "most_accurate_within_1pt": "most accurate within 1 pt",
    "smallest": "smallest",
    "fastest": "fastest",
}
# What a point's manifest entry keeps of its trial's row besides the objectives.
KEPT_VALUES = (
    "size_bytes",
    "latency_ms",
    "latency_p10_ms",
    "latency_p90_ms",
    "latency_ratio",
    "latency_ratio_lo",
    "latency_ratio_hi",
    "energy_mj",
    "energy_source",
    "peak_memory_bytes",
    "deploy_form",
)


def chosen_trials(run: Run, trials: list[int], rules: list[str]) -> dict[int, list[str]]:
    """Trial number -> the roles it was chosen for: the trials named, the trials the
    rules select, or (neither given) every point of the front."""
    table = run.table()
    done = set(table.loc[table["state"] == "COMPLETE", "trial"].astype(int))
    chosen: dict[int, list[str]] = {}
    for number in trials:
        if number not in done:
            raise AutoslimError(f"run {run.path} has no completed trial {number}")
        chosen.setdefault(number, []).append(f"trial {number}")
    for rule in rules:
        number = select_trial(table, run.objectives, run.baseline, rule)
        chosen.setdefault(number, []).append(rule)
    if not trials and not rules:
        named = select_named_points(table, run.objectives, run.baseline, run.metric_name)
        for number in run.front()["trial"].astype(int):
            roles = [ROLE_NAMES.get(k, k) for k, n in named.items() if n == number]
            chosen[int(number)] = roles
    if len(chosen) < 2:
        raise AutoslimError(
            f"a bundle needs at least two points; the selection gave {len(chosen)} "
            "(name more with --trial or --select)"
        )
    return chosen


def ladder_order(rows: pd.DataFrame, metric: str, direction: str) -> list[int]:
    """Trials most accurate first; equal metrics, the slower first (the ladder steps
    towards speed)."""
    key = rows[metric] if direction == "maximize" else -rows[metric]
    latency = rows["latency_ms"] if "latency_ms" in rows else pd.Series(0.0, index=rows.index)
    order = sorted(rows.index, key=lambda i: (-float(key[i]), -float(latency[i])))
    return [int(rows.loc[i, "trial"]) for i in order]


def point_values(row: pd.Series, objectives: dict[str, str], metric: str) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in (*objectives, metric, *KEPT_VALUES):
        value = row.get(name)
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if value is not None and not (isinstance(value, float) and pd.isna(value)):
            values[name] = value.item() if hasattr(value, "item") else value
    return values


def slower_steps(entries: list[PointEntry]) -> list[str]:
    """Points the ladder reaches by stepping "faster" that are no faster: a latency policy
    skips them (it steps to the nearest cheaper point), so say they buy nothing there."""
    lines = []
    for above, below in zip(entries, entries[1:], strict=False):
        a, b = above.values.get("latency_ms"), below.values.get("latency_ms")
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b >= a:
            lines.append(
                f"{below.name} is less accurate than {above.name} and no faster "
                f"({b:.3g} ms against {a:.3g} ms): latency policies skip it"
            )
    return lines


def bundle_run(
    run: Run,
    out: str | Path,
    *,
    trials: list[int] = (),
    rules: list[str] = (),
    quiet: bool = False,
    force: bool = False,
) -> Manifest:
    """Write the bundle of the chosen points of ``run`` to ``out``. A point whose artifact
    the search did not keep is rebuilt from its recipe first."""
    check_bundle_folder(Path(out), force=force)  # before minutes of rebuilding, not after
    chosen = chosen_trials(run, list(trials), list(rules))
    table = run.table().set_index("trial", drop=False)
    rows = table.loc[list(chosen)]
    order = ladder_order(rows, run.metric_name, run.objectives.get(run.metric_name, "maximize"))
    with tempfile.TemporaryDirectory(prefix="autoslim-bundle-") as scratch:
        points = []
        for number in order:
            row = rows.loc[number]
            entry = PointEntry(
                name=f"trial_{number}",
                trial=number,
                roles=chosen[number],
                runtime=str(row.get("runtime") or "torch"),
                values=point_values(row, run.objectives, run.metric_name),
                measured_batch=run.recipe(number).target.batch_size,
                bytes_alone=0,
            )
            points.append((entry, _artifact(run, number, Path(scratch), quiet)))
        if not quiet:
            for line in slower_steps([entry for entry, _ in points]):
                print(f"warning: {line}", file=sys.stderr)
        baseline = {k: v for k, v in run.baseline.items() if isinstance(v, (int, float, str))}
        return write_bundle(
            points,
            out,
            force=force,
            metric_name=run.metric_name,
            objectives=run.objectives,
            baseline=baseline,
        )


def _artifact(run: Run, number: int, scratch: Path, quiet: bool) -> Path:
    kept = run.path / "artifacts" / f"trial_{number}"
    if kept.is_dir():
        return kept
    from autoslim.artifact import save_artifact
    from autoslim.deploy.runtimes import runtime_named
    from autoslim.pipeline import apply_recipe
    from autoslim.progress import showing_progress
    from autoslim.task import load_task

    recipe = run.recipe(number)
    if not quiet:
        print(f"rebuilding trial {number} from its recipe (no artifact kept)", file=sys.stderr)
    task = run.task or load_task(recipe.task)
    with showing_progress(not quiet):
        model = apply_recipe(recipe, task=task)
    folder = save_artifact(model, recipe, scratch / f"trial_{number}", task=task)
    runtime_named(recipe.target.runtime).build(folder, task)
    return folder
