"""Experiment files: task + search space + objectives + constraints + budget + target."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from autoslim.errors import AutoslimError
from autoslim.recipe import StrictModel, Target, TaskRef, read_yaml, validate_model
from autoslim.searching.tracking import Tracking
from autoslim.space import SearchSpace

Direction = Literal["minimize", "maximize"]
# Leaves room below 2**32 for the offsets added to it (trials run, worker slots).
MAX_SEED = 2**31 - 1


class Constraint(StrictModel):
    """A bound on one objective; exactly one of the bounds is set.

    ``max_drop`` is how much worse than the fp32 baseline the objective may get (in its
    own units: 0.01 is one point of accuracy); ``max_ratio`` bounds value / baseline.
    """

    objective: str
    max: float | None = Field(default=None, allow_inf_nan=False)
    min: float | None = Field(default=None, allow_inf_nan=False)
    # A negative drop would demand a gain over the baseline; a ratio <= 0 bounds nothing
    # a measured cost can reach. Both are typos, not constraints.
    max_drop: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    max_ratio: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_bound(self) -> Constraint:
        bounds = [b for b in (self.max, self.min, self.max_drop, self.max_ratio) if b is not None]
        if len(bounds) != 1:
            raise ValueError(
                f"constraint on {self.objective!r} needs exactly one of max, min, max_drop, max_ratio"
            )
        return self

    @property
    def label(self) -> str:
        for key in ("max", "min", "max_drop", "max_ratio"):
            if getattr(self, key) is not None:
                return f"{self.objective}.{key}"
        raise AssertionError("unreachable")

    def violation(
        self, values: dict[str, float], baseline: dict[str, float], direction: str
    ) -> float:
        """Optuna convention: <= 0 is feasible, > 0 is by how much it is violated."""
        value = values[self.objective]
        if self.max is not None:
            return value - self.max
        if self.min is not None:
            return self.min - value
        base = baseline[self.objective]
        if self.max_drop is not None:
            worse_by = base - value if direction == "maximize" else value - base
            return worse_by - self.max_drop
        return value / base - self.max_ratio


class EarlyStopping(StrictModel):
    """Pareto-aware early stopping of fine-tunes (see :mod:`autoslim.searching.early_stop`)."""

    enabled: bool = False
    quantile: float = Field(default=0.9, gt=0.0, le=1.0)
    min_curves: int = Field(default=3, ge=1)
    # Epochs a trial runs before its own best step bounds it where no calibration curve
    # speaks for it (null: never).
    own_curve_from: int | None = Field(default=2, ge=2)
    # Share of the front's hypervolume that stops may give up in all, taking trials whose
    # optimistic projection would add less (0: stop only what cannot reach the front).
    hv_budget: float = Field(default=0.02, ge=0.0, lt=1.0)
    # Where no calibration projection applies, stop a trial that even the best relative
    # recovery of a calibration curve would leave below the constraint on the metric.
    error_fraction: bool = True


class RaySettings(StrictModel):
    """How ``--backend ray`` runs trials (see :mod:`autoslim.searching.ray_backend`)."""

    # Reserved per trial; the default is the target's thread count, so a trial's
    # fine-tune and its latency measurement get the cores they are timed on.
    cpus_per_trial: float | None = Field(default=None, gt=0)
    gpus_per_trial: float = Field(default=0.0, ge=0)
    max_concurrent: int = Field(default=4, ge=1)
    # Times Ray restarts a trial whose worker died (OOM kill, lost node) before the
    # trial is recorded as failed.
    max_retries: int = Field(default=1, ge=0)
    # A Ray custom resource that marks the measuring node(s). When set, every artifact
    # is shipped to a measuring actor placed there, one measurement at a time, so
    # latency and energy come from the target hardware, not the node a trial ran on.
    measure_resource: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.-]*$")


class SearchSettings(StrictModel):
    trials: int = Field(default=40, ge=1)
    timeout: float | None = Field(default=None, gt=0)
    sampler: Literal["tpe", "nsga2", "random"] = "tpe"
    # The sampler's seed is this plus the trials already run plus a per-worker offset
    # (see study.open_study); numpy takes seeds in [0, 2**32).
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    startup_trials: int = Field(default=10, ge=0)
    keep_artifacts: Literal["front", "all", "none"] = "front"
    # Byte budgets (fractions of the fp32 weight bytes) for the mixed-precision allocator;
    # each plan is enqueued as a first trial of a fresh study.
    warm_start: list[float] = Field(default_factory=list)
    # Uniform widths (e.g. [8, 4]) enqueued first, so the front starts at the uniform baselines.
    warm_start_uniform: list[int | str] = Field(default_factory=list)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    ray: RaySettings = Field(default_factory=RaySettings)


class Experiment(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*$")
    task: TaskRef
    space: str | list[dict[str, Any]]
    objectives: dict[str, Direction] = Field(min_length=1)
    constraints: list[Constraint] = Field(default_factory=list)
    search: SearchSettings = Field(default_factory=SearchSettings)
    target: Target = Field(default_factory=Target)
    # Where trials are also logged (MLflow); the run folder stays the source of truth.
    tracking: Tracking = Field(default_factory=Tracking)

    @model_validator(mode="after")
    def _constraints_name_objectives(self) -> Experiment:
        for constraint in self.constraints:
            if constraint.objective not in self.objectives:
                raise ValueError(
                    f"constraint on {constraint.objective!r}, which is not an objective "
                    f"(objectives: {', '.join(self.objectives)})"
                )
        return self


def load_experiment(path: str | Path) -> tuple[Experiment, SearchSpace]:
    """Read and validate an experiment file and the search space it names."""
    path = Path(path)
    experiment = validate_model(
        Experiment, read_yaml(path, what="experiment"), what=f"experiment {path}"
    )
    return experiment, narrow_to_runtime(resolve_space(experiment.space, path), experiment.target)


def resolve_space(space: str | list[dict[str, Any]], experiment_path: Path | None) -> SearchSpace:
    """An inline list of components, a preset name (``prune_quant``: one of
    :func:`space_presets`) or a YAML path (relative to the experiment file, else to the
    working directory)."""
    if not isinstance(space, str):
        return SearchSpace.from_spec(space)
    presets = space_presets()
    if space in presets:
        return SearchSpace.load(presets[space])
    return SearchSpace.load(_resolve_space_path(space, experiment_path))


def space_presets() -> dict[str, Path]:
    """The search spaces that ship with autoslim, by name."""
    folder = Path(__file__).resolve().parents[1] / "search_spaces"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def narrow_to_runtime(space: SearchSpace, target: Target) -> SearchSpace:
    """With one runtime named, only forms that run or ship smaller there are searched.
    With several, the whole space stays: each trial's runtime says what its forms are."""
    from autoslim.deploy.runtimes import check_runtimes, runtime_named

    check_runtimes(target)
    if len(target.runtimes) > 1:
        return space
    return space.for_runtime(runtime_named(target.runtimes[0]).forms(target.device))


def _resolve_space_path(name: str, experiment_path: Path | None) -> Path:
    """A space path is relative to the experiment file, else to the working directory."""
    folders = ([experiment_path.parent] if experiment_path else []) + [Path(".")]
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    raise AutoslimError(
        f"search space not found: {name} (not a preset: {', '.join(space_presets())}; "
        f"not a file relative to {' or '.join(str(f) for f in folders)})"
    )


def check_objectives(
    experiment: Experiment,
    metric_name: str,
    known: tuple[str, ...],
    metric_direction: str = "maximize",
) -> None:
    """Known names only, each in its one sensible direction (costs are minimised)."""
    allowed = (metric_name, *known)
    for name, direction in experiment.objectives.items():
        if name not in allowed:
            raise AutoslimError(f"unknown objective {name!r} (known: {', '.join(allowed)})")
        expected = metric_direction if name == metric_name else "minimize"
        if direction != expected:
            raise AutoslimError(f"objective {name!r} must be {expected}d, not {direction}d")


def fingerprints(experiment: Experiment, space: SearchSpace) -> dict[str, str]:
    """Hashes of what a resumed study must share with the one on disk, part by part."""
    parts = {
        "task": experiment.task.model_dump(mode="json"),
        "space": space.spec(),
        "objectives": experiment.objectives,
        "constraints": [c.model_dump(mode="json") for c in experiment.constraints],
        "target": experiment.target.model_dump(mode="json"),
    }
    return {
        k: hashlib.sha256(json.dumps(v, sort_keys=True).encode()).hexdigest()[:16]
        for k, v in parts.items()
    }
