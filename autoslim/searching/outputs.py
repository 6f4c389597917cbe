"""What a search leaves in its run folder besides the study: CSVs, the plot, a summary.

All of it is derived from the study, so it can be regenerated at any time; the test
split is read here, for the front's points only, never during the search. The CSVs are
refreshed after every trial (:func:`refresh_tables`), the rest when a search ends.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from autoslim.artifact import is_artifact, load_artifact, save_artifact
from autoslim.measure.paired import inside
from autoslim.measure.runner import confirm_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Target, write_text_atomic
from autoslim.results.pareto import (
    hypervolume,
    hypervolume_history,
    pareto_front,
    reference_point,
    to_minimization,
)
from autoslim.results.plot import plot_front
from autoslim.run import Run, read_run_info
from autoslim.searching.experiment import Experiment
from autoslim.searching.record import TEST_METRICS, TrialRecord
from autoslim.searching.tracking import sync_trials


def front_numbers(study: optuna.Study, objectives: dict[str, str]) -> list[int]:
    """Trial numbers of the feasible Pareto front of the completed trials."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    values = np.array([t.values for t in done], dtype=float)
    feasible = np.array([all(v <= 0 for v in t.constraints.values()) for t in done])
    return [done[i].number for i in pareto_front(values, list(objectives.values()), feasible)]


def prune_artifacts(study: optuna.Study, ctx) -> list[int]:
    """Delete artifacts of trials that left the front (a dominated trial stays dominated)."""
    front = front_numbers(study, ctx.experiment.objectives)
    if ctx.experiment.search.keep_artifacts == "front":
        keep = set(front)
        for trial in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL)
        ):
            if trial.number not in keep:
                shutil.rmtree(ctx.artifact_dir(trial.number), ignore_errors=True)
    return front


def test_metric(run: Run, trial_number: int) -> float:
    """The test-split metric of a trial's artifact, rebuilt from its recipe if deleted."""
    cache = dict(run.study.user_attrs.get(TEST_METRICS, {}))
    if str(trial_number) in cache:
        return cache[str(trial_number)]
    folder = run.path / "artifacts" / f"trial_{trial_number}"
    if is_artifact(folder):
        cache[str(trial_number)] = _test_metric_of(folder)
    else:
        # Rebuilt in a private folder: several workers sharing the run folder may all be
        # writing their outputs now, and the run folder keeps only what the search kept.
        recipe = run.recipe(trial_number)
        with tempfile.TemporaryDirectory(prefix="autoslim-test-") as scratch:
            rebuilt = save_artifact(apply_recipe(recipe), recipe, Path(scratch) / "artifact")
            cache[str(trial_number)] = _test_metric_of(rebuilt)
    run.study.set_user_attr(TEST_METRICS, cache)
    return cache[str(trial_number)]


def _test_metric_of(folder: Path) -> float:
    """The test metric of the artifact as it ships: on its runtime's own file (an ONNX
    Runtime or OpenVINO int8 graph quantizes activations its own way, so the PyTorch
    model's score would be another model's)."""
    from autoslim.measure.runner import shipped_module

    artifact = load_artifact(folder)
    if artifact.recipe.target.runtime == "torch":
        return artifact.task.evaluate(artifact.model, "test")
    model = shipped_module(folder, artifact.task, artifact.recipe.target)
    return artifact.task.evaluate(model, "test")


def hypervolume_summary(run: Run, table: pd.DataFrame) -> tuple[float, list[float], np.ndarray]:
    """Final hypervolume, its reference point and the per-trial history.

    The reference is the nadir of every completed feasible trial and the baseline, 10 %
    beyond (see :func:`reference_point`), in minimisation space.
    """
    names, directions = list(run.objectives), list(run.objectives.values())
    done = table[table["state"] == "COMPLETE"]
    if done.empty:
        return 0.0, [], np.zeros(0)
    values = done[names].to_numpy(dtype=float)
    feasible = done["feasible"].to_numpy(bool)
    base = np.array([[run.baseline.get(n, np.nan) for n in names]], dtype=float)
    pool = to_minimization(np.vstack([values[feasible], base]), directions)
    pool = pool[~np.isnan(pool).any(axis=1)]
    if len(pool) == 0:
        return 0.0, [], np.zeros(len(done))
    ref = reference_point(pool)
    history = hypervolume_history(values, directions, feasible, ref)
    mins = to_minimization(values[feasible], directions)
    return hypervolume(mins, ref), ref.tolist(), history


def teacher_note(
    table: pd.DataFrame,
    recipes: dict[int, dict],
    metric: str,
    direction: str,
    teacher: float | None,
) -> str | None:
    """A warning when a run distils from the fp32 baseline and its students score as well.

    KD transfers what the teacher knows better than the student; a teacher that compressed
    students already match, or beat, may have little to give. Judged on the validation
    metric of every completed trial, with KD or without (a space whose distill component
    is optional holds both). It cannot see students that a weak teacher held back below
    itself.
    """
    if teacher is None or metric not in table:
        return None
    done = table[table["state"] == "COMPLETE"]
    distils_from_baseline = any(
        stage.get("kind") == "distill" and not stage.get("teacher")
        for n in done["trial"]
        for stage in recipes.get(int(n), {}).get("stages", [])
    )
    if not distils_from_baseline:
        return None
    scores = done[metric].astype(float)
    matched = scores[scores >= teacher] if direction == "maximize" else scores[scores <= teacher]
    if matched.empty:
        return None
    best = matched.max() if direction == "maximize" else matched.min()
    return (
        f"{len(matched)} of {len(done)} trials reach the {metric} of the distill teacher "
        f"(the fp32 baseline, {teacher:.4f} on val; best trial {best:.4f}): distillation may have "
        f"little left to transfer; a stronger teacher (distill.teacher) may help"
    )


def refresh_tables(run_dir: Path, study: optuna.Study) -> None:
    """Rewrite trials.csv and pareto.csv as the study stands now; cheap enough for every trial.

    Each file is replaced atomically, so a reader (or a SIGKILL) never meets half of one.
    The front's test-split metric is the one already measured, else empty: the test split
    is read when the search ends (:func:`write_outputs`), not while it searches.
    """
    run = Run(path=Path(run_dir), study=study, info=read_run_info(run_dir))
    cache = run.study.user_attrs.get(TEST_METRICS, {})
    write_tables(run, lambda number: cache.get(str(number), math.nan))
    sync_trials(run)


def write_tables(
    run: Run, test_value: Callable[[int], float], target: Target | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """trials.csv and pareto.csv, the front's test metric from ``test_value(trial number)``;
    with a ``target``, the front's latencies re-measured too (:func:`confirm_front`)."""
    table = run.table()
    write_text_atomic(run.path / "trials.csv", table.to_csv(index=False))
    front = run.front()
    if not front.empty:
        front[f"test_{run.metric_name}"] = [test_value(int(n)) for n in front["trial"]]
        if target is not None:
            front = confirm_front(run, front, target)
    write_text_atomic(run.path / "pareto.csv", front.to_csv(index=False))
    return table, front


def confirm_front(run: Run, front: pd.DataFrame, target: Target) -> pd.DataFrame:
    """Re-time the front's kept artifacts against the baseline, interleaved with each
    other, and mark each point whose re-measured ratio falls outside the interval it was
    recorded with (``latency_confirmed`` False). Points without an artifact on disk or
    without a recorded interval are left unmarked."""
    reference = run.path / "baseline"
    folders = {int(n): run.path / "artifacts" / f"trial_{int(n)}" for n in front["trial"]}
    kept = {n: f for n, f in folders.items() if is_artifact(f)}
    if "latency_ratio_lo" not in front or not kept or not is_artifact(reference):
        return front
    remeasured = dict(
        zip(kept, confirm_in_subprocess(list(kept.values()), reference, target), strict=True)
    )
    ratios, confirmed = [], []
    for _, row in front.iterrows():
        again = remeasured.get(int(row["trial"]))
        ratios.append(math.nan if again is None else again["ratio"])
        recorded = (row.get("latency_ratio_lo"), row.get("latency_ratio_hi"))
        known = again is not None and all(
            isinstance(v, float) and math.isfinite(v) for v in recorded
        )
        confirmed.append(inside(again["ratio"], *recorded) if known else None)
    return front.assign(confirmed_latency_ratio=ratios, latency_confirmed=confirmed)


def latency_interval(row: pd.Series) -> dict:
    """A front point's paired latency ratio with its interval and confirmation, if measured."""
    if not isinstance(row.get("latency_ratio"), float) or math.isnan(row["latency_ratio"]):
        return {}
    entry = {
        "latency_ratio": [
            float(row[k]) for k in ("latency_ratio_lo", "latency_ratio", "latency_ratio_hi")
        ],
        "latency_noisy": bool(row.get("latency_noisy", False)),
    }
    if row.get("latency_confirmed") is not None and not pd.isna(row.get("latency_confirmed")):
        entry["latency_confirmed"] = bool(row["latency_confirmed"])
    return entry


def write_outputs(run: Run, experiment: Experiment) -> dict:
    """Write trials.csv, pareto.csv, pareto.png and summary.json; return the summary."""
    table, front = write_tables(run, lambda number: test_metric(run, number), experiment.target)
    metric = run.metric_name
    hv, ref, history = hypervolume_summary(run, table)
    if len(table) and not table[table["state"] == "COMPLETE"].empty:
        plot_front(
            table[table["state"] == "COMPLETE"],
            run.objectives,
            run.baseline,
            front["trial"].tolist(),
            run.path / "pareto.png",
            hv_history=history,
        )
    summary = {
        "experiment": experiment.name,
        "objectives": run.objectives,
        "labels": run.labels,
        "energy_source": run.baseline.get("energy_source", "estimated"),
        "baseline": run.baseline,
        "trials": {
            state: int((table["state"] == state).sum())
            for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
        },
        "notes": [
            note
            for note in [
                teacher_note(
                    table,
                    {t.number: TrialRecord.from_trial(t).recipe or {} for t in run.study.trials},
                    metric,
                    run.objectives.get(metric, "maximize"),
                    run.baseline.get(metric),
                )
            ]
            if note
        ],
        "hypervolume": hv,
        "hypervolume_reference": ref,
        "front": [
            {
                "trial": int(row["trial"]),
                "values": {n: float(row[n]) for n in run.objectives},
                f"test_{metric}": float(row[f"test_{metric}"]),
                **latency_interval(row),
            }
            for _, row in front.iterrows()
        ],
    }
    write_text_atomic(Path(run.path) / "summary.json", json.dumps(summary, indent=2))
    sync_trials(run, front=[int(n) for n in front["trial"]])
    return summary
