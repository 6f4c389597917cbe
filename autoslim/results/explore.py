"""Data behind the exploration notebooks: pure frames that the notebooks only draw.

Like :mod:`autoslim.results.plot`, every figure in ``notebooks/`` is drawn from a frame
computed here, so the numbers a user looks at are the ones the tests check. Nothing in
this module measures or trains; it reads a run's results table and its recipes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe, TaskRef, resolve_layer_map
from autoslim.results.pareto import hypervolume_history, reference_point, to_minimization
from autoslim.results.select import NoTrialSatisfies, _term_values, select_trial

if TYPE_CHECKING:
    from autoslim.run import Run

# Measured columns every trial has besides its objectives (all of them minimised); they
# fill a 3-D view when a study has fewer than three objectives.
MEASURED_EXTRAS = ("size_bytes", "latency_ms", "peak_memory_bytes", "energy_mj")
PARAM_PREFIX = "param:"
# Float widths as numbers, so a bit-width axis or heatmap can order them with the ints.
FLOAT_WIDTH_BITS = {"fp32": 32, "fp16": 16, "bf16": 16}


def completed(table: pd.DataFrame) -> pd.DataFrame:
    """The COMPLETE rows of a run table: only they carry measured objective values."""
    return table[table["state"] == "COMPLETE"].reset_index(drop=True)


def relative_columns(
    table: pd.DataFrame, objectives: Mapping[str, str], baseline: Mapping[str, float]
) -> pd.DataFrame:
    """``table`` plus ``NAME_drop`` and ``NAME_ratio`` per objective with a baseline value.

    The columns mean exactly what they mean in a selection rule (``drop`` is how much
    worse than fp32, ``ratio`` is value / fp32), so ``frame.query("accuracy_drop <= 0.01")``
    keeps the same rows as ``... where accuracy_drop <= 0.01``.
    """
    out = table.copy()
    for name in objectives:
        base = float(baseline.get(name, math.nan))
        if not math.isfinite(base):
            continue
        out[f"{name}_drop"] = _term_values(f"{name}_drop", table, objectives, baseline)
        if base != 0.0:
            out[f"{name}_ratio"] = _term_values(f"{name}_ratio", table, objectives, baseline)
    return out


def pick_trial(
    table: pd.DataFrame,
    objectives: Mapping[str, str],
    baseline: Mapping[str, float],
    rules: Sequence[str],
) -> tuple[int, str]:
    """The trial chosen by the first rule some trial satisfies, and that rule.

    A user's preferred rule (say "smallest within 1 pt") may select nothing in a short
    search; listing fallbacks (ending with ``knee``) still yields a point, and returning
    the rule used keeps the notebook honest about which one applied.
    """
    for rule in rules:
        try:
            return select_trial(table, objectives, baseline, rule), rule
        except NoTrialSatisfies:
            continue
    raise NoTrialSatisfies(f"no trial satisfies any of {list(rules)}")


def stage_counts(run: Run) -> pd.Series:
    """Stages in each completed trial's recipe, indexed by trial (0: the uncompressed model).

    A per-stage breakdown of a zero-stage point is just the baseline, so a notebook that
    explains a pipeline picks among trials with at least one stage first.
    """
    numbers = completed(run.table())["trial"].astype(int).tolist()
    counts = [len(run.recipe(n).stages) for n in numbers]
    return pd.Series(counts, index=pd.Index(numbers, name="trial"), name="stages", dtype=int)


def hypervolume_series(
    table: pd.DataFrame, objectives: Mapping[str, str], baseline: Mapping[str, float]
) -> pd.Series:
    """Hypervolume of the feasible front after each completed trial, indexed by trial.

    The reference point is the one the run's ``summary.json`` uses: the nadir of the
    feasible completed trials and the fp32 baseline, 10 % beyond. The curve therefore
    ends at the hypervolume the search reported.
    """
    done = completed(table)
    names, directions = list(objectives), list(objectives.values())
    index = pd.Index(done["trial"].to_numpy(dtype=int), name="trial")
    values = done[names].to_numpy(dtype=float)
    feasible = done["feasible"].to_numpy(dtype=bool)
    base = np.array([[baseline.get(n, np.nan) for n in names]], dtype=float)
    pool = to_minimization(np.vstack([values[feasible], base]), directions)
    pool = pool[~np.isnan(pool).any(axis=1)]
    if len(pool) == 0:
        return pd.Series(np.zeros(len(done)), index=index, name="hypervolume")
    history = hypervolume_history(values, directions, feasible, reference_point(pool))
    return pd.Series(history, index=index, name="hypervolume")


def projection_axes(
    table: pd.DataFrame, objectives: Mapping[str, str], count: int = 3
) -> dict[str, str]:
    """``count`` axes (name -> direction) for a projection: objectives first, then measured extras.

    A two-objective study still gets a 3-D view from a value every trial measured
    (latency, memory, energy), all minimised; columns without a finite value are skipped.
    """
    axes = dict(objectives)
    for name in MEASURED_EXTRAS:
        if len(axes) >= count:
            break
        if name not in axes and name in table and np.isfinite(_numeric(table[name])).any():
            axes[name] = "minimize"
    return dict(list(axes.items())[:count])


def width_bits(value: object) -> float:
    """A bit width as a number: ints stay, ``fp32`` -> 32, ``fp16``/``bf16`` -> 16, else NaN."""
    if isinstance(value, str):
        return float(FLOAT_WIDTH_BITS.get(value, math.nan))
    if value is None or isinstance(value, bool):
        return math.nan
    return float(value)


def _numeric(column: pd.Series) -> np.ndarray:
    """A column as floats: widths and booleans mapped, other labels by their sorted position."""
    values = column.tolist()
    labels = sorted({v for v in values if isinstance(v, str) and v not in FLOAT_WIDTH_BITS})
    codes = {label: float(i) for i, label in enumerate(labels)}
    return np.array([_as_number(v, codes) for v in values], dtype=float)


def _as_number(value: object, codes: Mapping[str, float]) -> float:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return math.nan
    if isinstance(value, str):
        return float(FLOAT_WIDTH_BITS.get(value, codes.get(value, math.nan)))
    return float(value)  # ints, floats and booleans (0/1)


def parallel_frame(
    table: pd.DataFrame, objectives: Mapping[str, str], front_trials: Sequence[int]
) -> pd.DataFrame:
    """Completed trials' parameters and objectives, each scaled to [0, 1], plus a ``group``.

    Parameters and objectives live on wildly different scales (bits, sparsity, bytes),
    so each column is min-max scaled; a constant column sits at 0.5. A parameter a
    trial did not use (its stage was switched off) stays NaN, i.e. a gap in the line.
    ``group`` is ``front`` or ``other`` for colouring; rows keep the trial number index.
    """
    done = completed(table)
    params = [c for c in done.columns if c.startswith(PARAM_PREFIX)]
    frame = pd.DataFrame(index=pd.Index(done["trial"].to_numpy(dtype=int), name="trial"))
    for column in [*params, *objectives]:
        values = _numeric(done[column])
        if np.isnan(values).all():
            continue
        low, high = np.nanmin(values), np.nanmax(values)
        scaled = (
            (values - low) / (high - low) if high > low else np.where(np.isnan(values), np.nan, 0.5)
        )
        frame[column.removeprefix(PARAM_PREFIX)] = scaled
    frame["group"] = np.where(frame.index.isin(list(front_trials)), "front", "other")
    return frame


def layer_plan(recipe: Recipe, layer_names: Sequence[str]) -> pd.DataFrame:
    """Per layer: the bit width and unstructured sparsity a recipe asks for.

    Read from the recipe, not the artifact: after quantization, zeros from rounding would
    be indistinguishable from pruned ones. With ``scope: global`` the sparsity is the
    model-wide fraction (each layer's share is decided by weight ranking at apply time),
    so ``sparsity_scope`` says which of the two a number is. When a recipe has several
    stages of one kind, the last one describes the shipped layer.
    """
    names = list(layer_names)
    bits: dict[str, object] = dict.fromkeys(names, "fp32")
    sparsity = dict.fromkeys(names, 0.0)
    scope = ""
    for stage in recipe.stages:
        if stage.kind == "quantize":
            resolved = resolve_layer_map(stage.layers, names)
            bits = {n: resolved.get(n, stage.default) for n in names}
        elif stage.kind == "prune":
            scope = stage.scope
            per_layer = resolve_layer_map(stage.layers, names) if stage.scope == "layer" else {}
            sparsity = {n: float(per_layer.get(n, stage.sparsity)) for n in names}
    return pd.DataFrame(
        {
            "bits": [bits[n] for n in names],
            "sparsity": [sparsity[n] for n in names],
            "sparsity_scope": scope,
        },
        index=pd.Index(names, name="layer"),
    )


def front_layer_plans(recipes: Mapping[int, Recipe], layer_names: Sequence[str]) -> pd.DataFrame:
    """:func:`layer_plan` of several trials in one long frame (trial, layer, ...)."""
    frames = [
        layer_plan(recipe, layer_names).reset_index().assign(trial=int(number))
        for number, recipe in recipes.items()
    ]
    columns = ["trial", "layer", "bits", "sparsity", "sparsity_scope"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def plan_matrix(plans: pd.DataFrame, value: str) -> pd.DataFrame:
    """Layers x trials matrix of ``bits`` (as numbers) or ``sparsity``, both in ``plans`` order.

    Keeping the given trial order (e.g. the front sorted by size) makes the heatmap read
    as a walk along the front instead of by trial number.
    """
    frame = plans.assign(bits=plans["bits"].map(width_bits)) if value == "bits" else plans
    layers, trials = list(dict.fromkeys(plans["layer"])), list(dict.fromkeys(plans["trial"]))
    matrix = frame.pivot(index="layer", columns="trial", values=value)
    return matrix.reindex(index=layers, columns=trials).astype(float)


def measured_vs_recorded(
    recorded: Mapping[str, object], measured: Mapping[str, object], names: Sequence[str]
) -> pd.DataFrame:
    """The search's value, a fresh measurement and their ratio, one row per name.

    Size and metric should match exactly (an exported recipe rebuilds the same bytes);
    latency and memory are timings, so their ratio shows run-to-run noise.
    """
    rows = []
    for name in names:
        searched = float(recorded.get(name, math.nan))
        again = float(measured.get(name, math.nan))
        ratio = again / searched if searched != 0.0 and math.isfinite(searched) else math.nan
        rows.append({"value": name, "search": searched, "re-measured": again, "ratio": ratio})
    return pd.DataFrame(rows).set_index("value")


def layer_names(task: TaskRef) -> list[str]:
    """The compressible layers of the task's model, in model order."""
    from autoslim.space import compressible_layers
    from autoslim.task import load_task

    return list(compressible_layers(load_task(task).build_model()))


def run_task_ref(run: Run) -> TaskRef:
    """The task a run searched, as its experiment named it (no trial needs to have finished)."""
    spec = run.info.get("experiment_spec", {}).get("task")
    if spec is None:
        raise AutoslimError(f"run {run.path} does not record its experiment's task in run.json")
    return TaskRef.model_validate(spec)


def open_or_search(
    run_dir: str | Path, experiment: str | Path, *, trials: int | None = None
) -> Run:
    """Open a run folder, or first run a search into it when it holds no run yet.

    This is how a notebook works both on a finished ``autoslim search`` and on a fresh
    checkout (or in CI, with a tiny experiment and budget). ``trials`` overrides the
    experiment's budget only for that first search; an existing run is never extended.
    """
    from autoslim.run import RUN_FILE, load_run
    from autoslim.searching.driver import Overrides, search

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        search(experiment, out=run_dir, overrides=Overrides(trials=trials), progress=False)
    return load_run(run_dir)


def recipe_with_provenance(run: Run, number: int) -> Recipe:
    """Trial ``number``'s recipe with the provenance ``autoslim export`` writes.

    The provenance records the trial, its measured values and the baseline's weights
    hash, so ``autoslim apply`` can warn when it replays on different fp32 weights.
    """
    from autoslim.cli import package_versions
    from autoslim.recipe import Provenance
    from autoslim.searching.record import BASELINE_SHA_ATTR, TrialRecord

    recipe = run.recipe(number)
    trial = next(t for t in run.study.get_trials(deepcopy=False) if t.number == number)
    measured = TrialRecord.from_trial(trial).measured or {}
    provenance = Provenance(
        experiment=run.info["experiment"],
        trial=number,
        seed=recipe.seed,
        versions=package_versions(),
        baseline_sha=run.study.user_attrs.get(BASELINE_SHA_ATTR),
        values={k: v for k, v in measured.items() if isinstance(v, int | float)},
    )
    return recipe.model_copy(update={"provenance": provenance})
