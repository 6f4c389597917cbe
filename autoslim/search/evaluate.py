"""The one trial body: suggest → recipe → apply → artifact → measure → objectives.

Both the local driver and (later) the Ray backend call :func:`evaluate_trial`; it never
reads a number from the in-memory model, only from the saved artifact.
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
from torch import nn

from autoslim.artifact import save_artifact
from autoslim.errors import TrialFailed
from autoslim.measure import measure_in_subprocess
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.search.experiment import Experiment
from autoslim.space import ModelInfo, SearchSpace
from autoslim.task import Task


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

    @property
    def info(self) -> ModelInfo:
        return ModelInfo.from_model(self.baseline_model)

    def artifact_dir(self, trial_number: int) -> Path:
        return self.run_dir / "artifacts" / f"trial_{trial_number}"


def suggest_recipe(trial: optuna.Trial, ctx: SearchContext) -> Recipe:
    stages = ctx.space.suggest(trial, ctx.info)
    return Recipe(task=ctx.experiment.task, seed=ctx.seed, target=ctx.experiment.target, stages=stages)


def evaluate_trial(trial: optuna.Trial, ctx: SearchContext) -> dict[str, float]:
    """Run one trial and return every measured value (objectives and extras).

    Records the recipe on the trial first, so even a failed trial says what it tried.
    """
    recipe = suggest_recipe(trial, ctx)
    trial.set_user_attr("recipe", recipe.to_dict())
    model = apply_recipe(recipe, task=ctx.task, model=copy.deepcopy(ctx.baseline_model))
    out = ctx.artifact_dir(trial.number)
    save_artifact(model, recipe, out)
    try:
        values = measure_in_subprocess(out, ctx.experiment.target)
    finally:
        if ctx.experiment.search.keep_artifacts == "none":
            shutil.rmtree(out, ignore_errors=True)
    for name in ctx.experiment.objectives:
        value = values.get(name)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TrialFailed(f"objective {name} is {value!r} after measurement")
    return values
