"""``autoslim.search``: load an experiment, open its study, and hand the trials to a runner.

The driver does what is the same wherever trials run: check the experiment before
anything is written, open (or resume) the study in its run folder, measure the fp32
baseline once, recover what a killed run left, warm-start a fresh study, and write the
outputs at the end, even after Ctrl-C. Which runner runs the trials is chosen here and
only here; the Ray runner is imported only when asked for, since Ray is an optional extra.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import optuna
from pydantic import ValidationError
from torch import nn

from autoslim.artifact import save_artifact
from autoslim.baseline import Baseline, load_baseline
from autoslim.errors import AutoslimError
from autoslim.measure import OBJECTIVE_NAMES
from autoslim.progress import showing_progress
from autoslim.recipe import Recipe, one_line, validate_model
from autoslim.run import Run, load_run
from autoslim.searching.cleanup import (
    baseline_copy_name,
    remove_stale_run_files,
    remove_stale_temp_dirs,
)
from autoslim.searching.evaluate import SearchContext
from autoslim.searching.experiment import (
    Experiment,
    SearchSettings,
    check_objectives,
    load_experiment,
)
from autoslim.searching.local import LocalRunner
from autoslim.searching.outputs import refresh_tables, write_outputs
from autoslim.searching.record import BASELINE_ATTR, BASELINE_SHA_ATTR
from autoslim.searching.runner import Runner
from autoslim.searching.slots import release_worker_slot
from autoslim.searching.study import open_study, recover_interrupted
from autoslim.shared_tasks import share_task
from autoslim.space import ModelInfo, SearchSpace
from autoslim.task import Task, load_task
from autoslim.trust import is_local_entry

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Overrides:
    """Command-line flags that override the experiment's search settings (None: keep)."""

    trials: int | None = None
    timeout: float | None = None
    seed: int | None = None


def search(
    experiment_path: str | Path,
    *,
    out: str | Path | None = None,
    overrides: Overrides = Overrides(),
    progress: bool = True,
    backend: str = "local",
    address: str | None = None,
    storage: str | None = None,
) -> Run:
    """Run (or resume) the experiment's search; returns the run folder opened for reading.

    ``backend="ray"`` runs the trials through Ray Tune (on the cluster at ``address``, or
    a local Ray instance); the study stays in the same storage either way.
    """
    _check_backend(backend, address)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment, space = load_experiment(experiment_path)
    experiment = apply_overrides(experiment, overrides)
    task = load_task(experiment.task)
    return run_search(
        experiment,
        space,
        task,
        out=out,
        progress=progress,
        backend=backend,
        address=address,
        storage=storage,
    )


def run_search(
    experiment: Experiment,
    space: SearchSpace,
    task: Task,
    *,
    out: str | Path | None = None,
    progress: bool = True,
    backend: str = "local",
    address: str | None = None,
    storage: str | None = None,
) -> Run:
    """The search of a validated experiment whose task is already loaded (``search``
    reads both from files; :func:`autoslim.compress` builds them in Python)."""
    _check_backend(backend, address)
    check_objectives(experiment, task.metric_name, OBJECTIVE_NAMES, task.metric_direction)
    model = build_probe_model(task)
    check_space(space, ModelInfo.from_model(model), experiment)
    if progress:  # stderr: stdout carries results
        for note in space.notes:
            print(f"search space on {experiment.target.runtime}: {note}", file=sys.stderr)
        for note in (n for c in space.components for n in c.model_notes(model)):
            print(f"search space on {task.name}: {note}", file=sys.stderr)
    connect_backend(
        backend, address
    )  # before anything is written: a wrong --address leaves no run folder
    remove_stale_temp_dirs()  # what killed searches left in the temporary directory
    if is_local_entry(experiment.task.entry):  # measuring processes cannot import it
        share_task(experiment.task.entry, task)
    with showing_progress(progress):
        baseline = load_baseline(experiment.task, task, log=progress)
    run_dir = Path(out) if out else Path("runs") / experiment.name
    study, storage_obj = open_study(run_dir, experiment, space, task.metric_name, storage)
    try:
        remove_stale_run_files(run_dir)
        ctx = SearchContext(
            experiment, space, task, baseline.model, {}, run_dir, experiment.search.seed
        )
        with showing_progress(progress):  # fine-tunes draw bars below the search's
            _run_study(
                study,
                storage_obj,
                ctx,
                baseline,
                backend=backend,
                address=address,
                progress=progress,
            )
    finally:
        release_worker_slot(run_dir)
        # Even after Ctrl-C the outputs describe every trial the study holds.
        write_outputs(load_run(run_dir, storage=storage), experiment)
    return load_run(run_dir, storage=storage)


def _check_backend(backend: str, address: str | None) -> None:
    if backend not in BACKENDS:
        raise AutoslimError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if address and backend != "ray":
        raise AutoslimError("--address needs --backend ray")


def connect_backend(backend: str, address: str | None) -> None:
    """Reach the backend's cluster now, so a wrong address fails in one line, early."""
    if backend == "ray":
        from autoslim.searching.ray_backend import connect

        connect(address)


def make_runner(
    backend: str, ctx: SearchContext, *, address: str | None, baseline: Baseline
) -> Runner:
    """The runner for ``backend``. Built before the baseline is measured: the Ray runner
    may route every measurement (``ctx.measure``) to the target node."""
    if backend == "ray":
        from autoslim.searching.ray_backend import RayRunner

        return RayRunner(ctx, address=address, baseline=baseline)
    return LocalRunner()


def _run_study(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    ctx: SearchContext,
    baseline: Baseline,
    *,
    backend: str,
    address: str | None,
    progress: bool,
) -> None:
    """Measure the baseline, recover what a killed run left, and run the remaining budget."""
    runner = make_runner(backend, ctx, address=address, baseline=baseline)
    try:
        ctx.baseline_values = measure_baseline(study, ctx)
        study.set_user_attr(BASELINE_SHA_ATTR, baseline.weights_sha)
        recover_interrupted(study, storage)
        refresh_tables(ctx.run_dir, study)  # interrupted trials show as such at once
        _warm_start(study, ctx, baseline.fingerprint)
        runner.run(study, ctx, progress=progress)
    finally:
        runner.close()


# ---------------------------------------------------------------- before the study opens


def apply_overrides(experiment: Experiment, overrides: Overrides) -> Experiment:
    """Command-line flags over the experiment's search settings, validated like the file."""
    changes = {k: v for k, v in vars(overrides).items() if v is not None}
    settings = validate_model(
        SearchSettings,
        {**experiment.search.model_dump(), **changes},
        what="search settings (--trials/--timeout/--seed)",
    )
    return experiment.model_copy(update={"search": settings})


def check_space(space: SearchSpace, info: ModelInfo, experiment: Experiment) -> None:
    """Dry-run ``suggest`` a few times so a bad layer name or range fails now, not in
    every trial (a range beyond what a stage accepts only shows in its suggestions)."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = probe.ask()
        try:
            Recipe(task=experiment.task, stages=space.suggest(trial, info))
        except ValidationError as exc:
            raise AutoslimError(
                f"search space suggests an invalid stage: {one_line(exc)}"
            ) from None
        probe.tell(trial, 0.0)


def build_probe_model(task) -> nn.Module:
    """The task's model, built once; a factory that rejects its params is a user error."""
    try:
        return task.build_model()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AutoslimError(
            f"task {task.name} could not build its model: {str(exc).splitlines()[0]}"
        ) from None


# ---------------------------------------------------------------- once per run


def measure_baseline(study: optuna.Study, ctx: SearchContext) -> dict[str, float]:
    """Measure the fp32 baseline artifact once per run, like any trial, test split included.

    Each worker measures a private copy, so workers started together on one run folder
    never measure a folder another one is replacing; the first copy measured is kept
    as ``baseline/``.
    """
    if BASELINE_ATTR in study.user_attrs:
        return dict(study.user_attrs[BASELINE_ATTR])
    # The baseline is the model as the user runs it today: fp32 in eager torch, whatever
    # runtimes the trials ship on.
    target = ctx.experiment.target.model_copy(update={"runtime": "torch"})
    recipe = Recipe(task=ctx.experiment.task, seed=ctx.seed, target=target)
    private = save_artifact(ctx.baseline_model, recipe, ctx.run_dir / baseline_copy_name())
    try:
        values = ctx.measure_artifact(private, target, splits=("val", "test"))
        with contextlib.suppress(OSError):  # another worker published its copy first
            if not (ctx.run_dir / "baseline").exists():
                private.rename(ctx.run_dir / "baseline")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    study.set_user_attr(BASELINE_ATTR, values)
    return values


def _warm_start(study: optuna.Study, ctx: SearchContext, fingerprint: str) -> None:
    """Queue the experiment's warm-start plans as the first trials of a fresh study."""
    settings = ctx.experiment.search
    if not (settings.warm_start or settings.warm_start_uniform) or study.trials:
        return
    # Imported here: the allocator's sensitivity tables are needed only for a warm start.
    from autoslim.searching.warm_start import (
        enqueue_plans,
        plan_params,
        quant_component,
        uniform_params,
    )

    component = quant_component(ctx.space)
    if component is None:
        raise AutoslimError(
            "search.warm_start needs a per-layer quantize.weight component in the space"
        )
    # GRU/LSTM layers take a width too where the component quantizes them
    names = ctx.info.width_names if getattr(component, "recurrent", False) else ctx.info.names
    plans = uniform_params(component, names, settings.warm_start_uniform)
    if settings.warm_start:
        plans += plan_params(
            ctx.task, ctx.baseline_model, fingerprint, component, settings.warm_start
        )
    # A warm start is the quantization plan alone (what "uniform int8" means to a user):
    # every other switchable stage is off, instead of being sampled beside it.
    others_off = {
        f"{c.name}.enabled": False
        for c in ctx.space.components
        if c is not component and c.optional
    }
    enqueue_plans(study, [others_off | plan for plan in plans])
