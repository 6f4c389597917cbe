"""The one trial body: suggest → recipe → apply → artifact → measure → objectives.

Every runner (local and Ray) calls :func:`run_trial_body`; it never reads a number from
the in-memory model, only from the saved artifact. With early stopping on, the costs are
measured first on a dry-run artifact (no training), and each fine-tune epoch's validation
metric goes to the stopping rule. The body returns an :class:`Outcome` instead of
raising, so a Ray worker can ship it back to the driver, which records it in the study
exactly as the local runner does (:func:`autoslim.searching.study.record_outcome`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.trial import FrozenTrial, TrialState
from torch import nn

from autoslim.artifact import artifact_bytes, is_artifact, save_artifact
from autoslim.errors import TrialFailed
from autoslim.measure import measure_in_subprocess
from autoslim.measure.paired import objective_latency
from autoslim.pipeline import CURRENT_STAGE, PLANNED_FINE_TUNES, apply_recipe, realised_recipe
from autoslim.recipe import Recipe, Target
from autoslim.searching.early_stop import ParetoStopper, Stop, StopTrial, horizon
from autoslim.searching.experiment import Experiment
from autoslim.searching.record import TrialRecord
from autoslim.space import ModelInfo, SearchSpace
from autoslim.sparse.policy import settle_storage_policy
from autoslim.task import Task
from autoslim.techniques.prune import fold_pruning_masks
from autoslim.train import TrainHooks

# The trial parameter that picks a runtime when the target names several.
RUNTIME_PARAM = "target.runtime"


@dataclass
class SearchContext:
    """Everything a trial needs that is the same for every trial of a study."""

    experiment: Experiment
    space: SearchSpace
    task: Task
    baseline_model: nn.Module
    baseline_values: dict[str, float]
    run_dir: Path
    seed: int
    # Where artifacts are measured: a fresh local process by default; the Ray backend
    # can route this to a measuring actor on the target node.
    measure: Callable[..., dict] | None = None

    def measure_artifact(
        self, path: Path, target: Target, splits: tuple[str, ...] = ("val",)
    ) -> dict:
        """Every objective of the artifact at ``path``. With latency an objective, once
        the run has its baseline artifact, latency is timed in rounds paired with it, and
        the ``latency_ms`` the search compares is the paired ratio times the baseline's
        own latency (:func:`autoslim.measure.paired.objective_latency`). Otherwise latency
        is a plain median with its p10/p90, recorded but not compared."""
        measure = self.measure or measure_in_subprocess
        reference = self.reference
        if reference is None or "latency_ms" not in self.experiment.objectives:
            return measure(path, target, splits=splits)
        values = measure(path, target, splits=splits, reference=reference)
        if "latency_ratio" in values:
            values["latency_measured_ms"] = values["latency_ms"]
            values["latency_ms"] = objective_latency(values, self.baseline_values["latency_ms"])
        return values

    @property
    def reference(self) -> Path | None:
        """The run's fp32 baseline artifact, once measured and published."""
        folder = self.run_dir / "baseline"
        return folder if is_artifact(folder) else None

    @cached_property
    def info(self) -> ModelInfo:
        # The baseline never changes within a study: describe it once, not per trial.
        return ModelInfo.from_model(self.baseline_model)

    @property
    def cost_objectives(self) -> list[str]:
        return [name for name in self.experiment.objectives if name != self.task.metric_name]

    def artifact_dir(self, trial_number: int) -> Path:
        return self.run_dir / "artifacts" / f"trial_{trial_number}"


def suggest_recipe(trial: optuna.Trial, ctx: SearchContext) -> Recipe:
    # The recipe names its storage policy and its one runtime, so it replays alone.
    target = settle_storage_policy(ctx.experiment.target)
    if len(target.runtimes) > 1:
        runtime = trial.suggest_categorical(RUNTIME_PARAM, target.runtimes)
        target = target.model_copy(update={"runtime": runtime})
    stages = ctx.space.suggest(trial, ctx.info)
    return Recipe(task=ctx.experiment.task, seed=ctx.seed, target=target, stages=stages)


def applied_to_baseline(recipe: Recipe, ctx: SearchContext, **options: Any) -> nn.Module:
    """The recipe applied to a copy of the baseline (the baseline itself stays as it is)."""
    return apply_recipe(recipe, task=ctx.task, model=copy.deepcopy(ctx.baseline_model), **options)


def dry_run_costs(
    recipe: Recipe, ctx: SearchContext, out: Path
) -> tuple[dict[str, float], list[int] | None]:
    """Cost objectives of the recipe's structure, from an artifact built without training,
    and the fine-tunes the recipe plans (each one's epochs, in order; None: unknown)."""
    records: dict[str, Any] = {}
    model = applied_to_baseline(recipe, ctx, dry_run=True, records=records)
    save_artifact(model, recipe, out, task=ctx.task)
    try:
        if set(ctx.cost_objectives) <= {"size_bytes"} and recipe.target.runtime == "torch":
            values = {"size_bytes": artifact_bytes(out)}  # bytes need no measuring process
        else:
            values = ctx.measure_artifact(out, recipe.target)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return {name: float(values[name]) for name in ctx.cost_objectives}, records.get(
        PLANNED_FINE_TUNES, []
    )


def shipped_metric(model: nn.Module, recipe: Recipe, stage: int, ctx: SearchContext) -> float:
    """Validation metric of the artifact this trial would ship if the fine-tune of stage
    ``stage`` ended now: a copy of ``model`` through the recipe's later stages, dry-run.

    Why: a later stage (e.g. 2-bit quantization after pruning's fine-tune) can cost more
    accuracy than the fine-tune recovers, and a curve of the fp32 model in training
    cannot see it, so the stopping rule would have to guess it from the calibration gains.
    """
    if stage + 1 >= len(recipe.stages):
        return ctx.task.evaluate(model, "val")
    shipped = copy.deepcopy(model)
    fold_pruning_masks(shipped)  # later stages expect plain weights, as after this stage ends
    shipped = apply_recipe(
        recipe, task=ctx.task, model=shipped, dry_run=True, first_stage=stage + 1
    )
    return ctx.task.evaluate(shipped, "val")


def raise_stop(trial: optuna.Trial, stop: Stop) -> None:
    """End the trial as the rule says, recording the hypervolume it gave up (the budget's ledger)."""
    if stop.hv_charge:
        TrialRecord(hv_charge=stop.hv_charge).write_to(trial)
    raise StopTrial(stop.reason)


def _epoch_hook(
    trial: optuna.Trial,
    ctx: SearchContext,
    stopper: ParetoStopper,
    costs: dict[str, float],
    recipe: Recipe,
    records: dict[str, Any],
    planned: list[int] | None,
):
    """Per fine-tune epoch: record the shipped metric (``curve``, what the rule reads) and
    the metric of the model in training (``trained_curve``), then ask the rule, telling it
    how many of the ``planned`` fine-tune epochs are still to come."""
    curve: list[float] = []
    trained: list[float] = []

    def on_epoch_end(model: nn.Module, epoch: int) -> None:
        stage = records.get(CURRENT_STAGE, 0)
        trained.append(ctx.task.evaluate(model, "val"))
        last = stage + 1 >= len(recipe.stages)
        curve.append(trained[-1] if last else shipped_metric(model, recipe, stage, ctx))
        TrialRecord(curve=tuple(curve), trained_curve=tuple(trained)).write_to(trial)
        now = horizon(planned, len(curve))
        own = curve[now.last_started :] if now.last_started is not None else None
        stop = stopper.decide(len(curve) - 1, curve[-1], costs, remaining=now.remaining, curve=own)
        if stop is not None:
            raise_stop(trial, stop)

    return on_epoch_end


def completed_twin(trial: optuna.Trial) -> FrozenTrial | None:
    """An earlier completed trial of the same study with exactly these parameters.

    Samplers repeat points, the unpruned model most often, and more so as a search
    converges. One recipe with one seed builds the same artifact, so the measured values
    are reused instead of training again. A Ray worker replays parameters without the
    study (a FixedTrial) and always runs.
    """
    study = getattr(trial, "study", None)
    if study is None:
        return None
    for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        record = TrialRecord.from_trial(done)
        if (
            done.params == trial.params
            and record.measured is not None
            and record.recipe is not None
        ):
            return done
    return None


def evaluate_trial(
    trial: optuna.Trial, ctx: SearchContext, stopper: ParetoStopper | None = None
) -> dict[str, float]:
    """Run one trial and return every measured value (objectives and extras).

    Records the recipe on the trial first, so even a failed trial says what it tried, and
    again after apply with what its stages settled (what export and the artifact replay).
    Raises :class:`StopTrial` when the stopping rule ends its fine-tuning.
    """
    recipe = suggest_recipe(trial, ctx)
    TrialRecord(recipe=recipe.to_dict()).write_to(trial)
    twin = completed_twin(trial)
    if twin is not None:
        done = TrialRecord.from_trial(twin)
        # The recipe as realised when the twin ran.
        TrialRecord(repeat_of=twin.number, recipe=done.recipe).write_to(trial)
        return dict(done.measured)
    out = ctx.artifact_dir(trial.number)
    hooks = TrainHooks()
    records: dict[str, Any] = {}
    if stopper is not None:
        costs, planned = dry_run_costs(recipe, ctx, out)
        TrialRecord(
            dry_run_costs=costs,
            planned_fine_tunes=None if planned is None else tuple(planned),
            fine_tunes_unknown=planned is None,
        ).write_to(trial)
        stop = stopper.decide_before_training(costs, fine_tunes=planned is None or sum(planned) > 0)
        if stop is not None:
            raise_stop(trial, stop)
        hooks.on_epoch_end.append(_epoch_hook(trial, ctx, stopper, costs, recipe, records, planned))
    clock = PhaseClock()
    with clock("compress"):
        model = applied_to_baseline(recipe, ctx, hooks=hooks, records=records)
    recipe = realised_recipe(recipe, records)  # e.g. the phases an adaptive schedule chose
    TrialRecord(recipe=recipe.to_dict()).write_to(trial)
    with clock("save"):
        save_artifact(model, recipe, out, task=ctx.task)
    try:
        with clock("measure"):
            values = ctx.measure_artifact(out, recipe.target)
    finally:
        if ctx.experiment.search.keep_artifacts == "none":
            shutil.rmtree(out, ignore_errors=True)
        TrialRecord(phase_seconds=clock.seconds).write_to(trial)
    for name in ctx.experiment.objectives:
        value = values.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrialFailed(f"objective {name} is {value!r} after measurement")
    return values


class PhaseClock:
    """Wall seconds per named phase of a trial, rounded to milliseconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = round(time.perf_counter() - start, 3)


@dataclass
class Outcome:
    """What one trial produced: measured values, or why it failed or was stopped."""

    status: Literal["complete", "failed", "stopped"]
    values: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "values": self.values, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Outcome:
        return cls(data["status"], dict(data.get("values") or {}), data.get("reason", ""))


def run_trial_body(
    trial: optuna.Trial, ctx: SearchContext, stopper: ParetoStopper | None = None
) -> Outcome:
    """:func:`evaluate_trial`, with every failure turned into a recorded reason.

    KeyboardInterrupt is not caught: an interrupted trial is the runner's to re-queue.
    """
    try:
        return Outcome("complete", evaluate_trial(trial, ctx, stopper))
    except StopTrial as stop:
        return Outcome("stopped", reason=str(stop))
    except Exception as exc:  # noqa: BLE001 — any crash inside a trial is that trial's failure
        reason = str(exc) if isinstance(exc, TrialFailed) else f"{type(exc).__name__}: {exc}"
        return Outcome(
            "failed", reason=reason.splitlines()[0] if reason.strip() else type(exc).__name__
        )
