"""The local search driver: an Optuna study in a run folder, resumable after any crash.

Storage is Optuna's journal file inside the run folder: no server, safe for several
processes, and every finished trial is on disk before the next one starts. Re-running
the same command reopens the study, fails trials a killed driver left RUNNING (and
re-queues their parameters), and runs only the remaining budget.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import itertools
import math
import os
import shutil
import socket
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError
from tqdm import tqdm

from autoslim.artifact import save_artifact
from autoslim.baseline import Baseline, load_baseline
from autoslim.errors import AutoslimError
from autoslim.measure import OBJECTIVE_NAMES
from autoslim.recipe import Recipe, one_line, validate_model
from autoslim.run import (
    ATTR_PREFIX,
    JOURNAL_FILE,
    RUN_FILE,
    Run,
    is_database_url,
    load_run,
    open_storage,
    public_storage_url,
    read_run_info,
    write_run_info,
)
from autoslim.search.cleanup import (
    baseline_copy_name,
    remove_stale_run_files,
    remove_stale_temp_dirs,
)
from autoslim.search.early_stop import (
    HV_CHARGE_ATTR,
    Curve,
    FrontPoint,
    ParetoStopper,
    metric_bound,
)
from autoslim.search.evaluate import Outcome, SearchContext, run_trial_body, suggest_recipe
from autoslim.search.experiment import (
    Experiment,
    SearchSettings,
    check_objectives,
    fingerprints,
    load_experiment,
)
from autoslim.search.outputs import front_numbers, prune_artifacts, refresh_tables, write_outputs
from autoslim.space import ModelInfo, SearchSpace
from autoslim.task import load_task

INTERRUPTED = "interrupted: the process running it stopped before it finished"


@dataclass(frozen=True)
class Overrides:
    trials: int | None = None
    timeout: float | None = None
    seed: int | None = None


def apply_overrides(experiment: Experiment, overrides: Overrides) -> Experiment:
    """Command-line flags over the experiment's search settings, validated like the file."""
    changes = {k: v for k, v in vars(overrides).items() if v is not None}
    settings = validate_model(SearchSettings, {**experiment.search.model_dump(), **changes},
                              what="search settings (--trials/--timeout/--seed)")
    return experiment.model_copy(update={"search": settings})


def make_sampler(experiment: Experiment, n_existing: int) -> optuna.samplers.BaseSampler:
    """TPE by default: see README "Design" for why. The seed is offset by the number of
    trials already in the study so a resumed search does not replay its first draws."""
    settings = experiment.search
    seed = settings.seed + n_existing
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=settings.startup_trials, multivariate=True, group=True,
            constant_liar=True,
        )


def check_space(space: SearchSpace, info: ModelInfo, experiment: Experiment) -> None:
    """Dry-run ``suggest`` a few times so a bad layer name or range fails now, not in
    every trial (a range beyond what a stage accepts only shows in its suggestions)."""
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(8):
        trial = probe.ask()
        try:
            Recipe(task=experiment.task, stages=space.suggest(trial, info))
        except ValidationError as exc:
            raise AutoslimError(f"search space suggests an invalid stage: {one_line(exc)}") from None
        probe.tell(trial, 0.0)


def build_probe_model(task) -> ModelInfo:
    """The task's model, built once; a factory that rejects its params is a user error."""
    try:
        return ModelInfo.from_model(task.build_model())
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AutoslimError(f"task {task.name} could not build its model: {str(exc).splitlines()[0]}") from None


def open_study(
    run_dir: Path, experiment: Experiment, space: SearchSpace, metric_name: str,
    storage_url: str | None = None,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or reopen it after checking it searches the same experiment.

    ``storage_url`` (e.g. ``postgresql://host/db``) shares one study between several
    ``autoslim search`` processes; by default the study is a journal file in the run folder.
    The URL connects as given; run.json records it without credentials, so a resume
    without ``--storage`` takes them from ``PGPASSWORD``, ``~/.pgpass`` and the like.
    """
    prints = fingerprints(experiment, space)
    info_path = run_dir / RUN_FILE
    stored_info = read_run_info(run_dir) if info_path.exists() else {}
    if not info_path.exists() and run_dir.is_dir() and not _only_startup_files(run_dir):
        raise AutoslimError(f"{run_dir} is not empty and holds no autoslim run; choose another --out")
    if stored_info:
        if stored_info.get("study_name") != experiment.name:
            raise AutoslimError(f"{run_dir} holds the run of experiment {stored_info.get('study_name')!r}, "
                                f"not {experiment.name!r}; use --out for a new run folder")
        stored = stored_info.get("fingerprints", {})
        changed = [part for part, digest in prints.items() if stored.get(part) != digest]
        if changed:
            raise AutoslimError(
                f"{run_dir} holds a study whose {', '.join(changed)} differ from {experiment.name}'s; "
                "refusing to resume (use --out for a new run folder)"
            )
    storage_url = _storage_for(run_dir, storage_url, stored_info.get("storage"))
    if storage_url is None:
        run_dir.mkdir(parents=True, exist_ok=True)  # the journal lives in it
    # Opened before run.json is written: a storage that does not open (a typo in the URL,
    # a server down) leaves no run folder that names it.
    storage = open_storage(storage_url or str(run_dir / JOURNAL_FILE))
    info = {"experiment": experiment.name, "study_name": experiment.name, "storage": storage_url,
            "objectives": experiment.objectives, "metric_name": metric_name, "fingerprints": prints,
            "experiment_spec": experiment.model_dump(mode="json")}
    if not stored_info:
        write_run_info(run_dir, info)
    else:
        _protect_run_info(run_dir, stored_info)
    existing = optuna.study.get_all_study_summaries(storage)
    n_existing = sum(s.n_trials for s in existing if s.study_name == experiment.name)
    # Workers sharing the study must not draw the same start-up points: each gets its
    # own seed offset. A lone worker keeps offset 0, so a single search stays reproducible.
    n_existing += 100_003 * worker_slot(run_dir, shared_server=storage_url is not None)
    study = optuna.create_study(
        study_name=experiment.name, storage=storage, load_if_exists=True,
        directions=list(experiment.objectives.values()), sampler=make_sampler(experiment, n_existing),
    )
    return study, storage


def _protect_run_info(run_dir: Path, info: dict) -> None:
    """Bring a run.json written by an older autoslim up to date: no secret in its storage
    URL, and private when it names a database."""
    storage = info.get("storage")
    if not is_database_url(storage):
        return
    if public_storage_url(storage) != storage:
        write_run_info(run_dir, info)  # writes the public URL, owner-only
    elif (run_dir / RUN_FILE).stat().st_mode & 0o077:
        os.chmod(run_dir / RUN_FILE, 0o600)


# Slots this process holds: run folder → (slot, the open slot file whose lock is the claim).
_HELD_SLOTS: dict[Path, tuple[int, int]] = {}


def worker_slot(run_dir: Path, *, shared_server: bool) -> int:
    """0 for the only live worker on this run folder, 1, 2, ... for others started beside it.

    See :func:`claim_slot`. Workers on other machines (a database study) cannot see each
    other's run folders, so there the slot also mixes in the host and pid.
    """
    slot = claim_slot(run_dir / ".workers")
    if shared_server:
        slot += zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % 9973 + 1
    return slot


def claim_slot(folder: Path) -> int:
    """The lowest slot that no live process on this run folder holds; held until exit.

    Holding slot N is holding the exclusive ``flock`` on ``folder/slot-N``. Taking a lock
    is atomic, so workers started in the same instant get distinct slots, hence distinct
    sampler seeds (two workers on one seed run the same trials). The kernel drops the
    lock when its holder dies, however it dies: a dead worker's slot is free again at once,
    and a reused pid cannot keep it. The file names the holder's host and pid. A slot file
    of another host is never taken over: its lock may not be visible from here on a
    network filesystem.
    """
    key = folder.resolve()
    if key in _HELD_SLOTS:
        return _HELD_SLOTS[key][0]
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for slot in itertools.count():
        fd = os.open(folder / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o644)
        if _lock_if_free(fd, folder / f"slot-{slot}", host):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{host} {os.getpid()}\n".encode(), 0)
            _HELD_SLOTS[key] = (slot, fd)
            return slot
        os.close(fd)
    raise AssertionError("unreachable: itertools.count() does not end")


def _lock_if_free(fd: int, path: Path, host: str) -> bool:
    """Lock the slot file open at ``fd`` unless a live process (or another host) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        same_file = os.stat(path).st_ino == os.fstat(fd).st_ino  # not deleted meanwhile
    except FileNotFoundError:
        same_file = False
    owner = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    if same_file and (not owner or owner[0] == host):
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def release_worker_slot(run_dir: Path) -> None:
    """Give this process's slot on ``run_dir`` back (exiting does it too)."""
    held = _HELD_SLOTS.pop((run_dir / ".workers").resolve(), None)
    if held is not None:
        os.close(held[1])


def _only_startup_files(run_dir: Path) -> bool:
    """Empty, or holding only what a worker starting on it creates before run.json: the
    journal (with its lock), the worker slots, a half-written run.json. Workers started
    together on one run folder race to create these; a worker killed before it wrote
    run.json leaves them."""
    return all(p.name.startswith((".run.json.", JOURNAL_FILE)) or p.name == ".workers" for p in run_dir.iterdir())


def _storage_for(run_dir: Path, given: str | None, stored: str | None) -> str | None:
    """The study's storage URL: as given (credentials included), else as the run folder
    recorded it (without them)."""
    if given and stored and public_storage_url(given) != public_storage_url(stored):
        raise AutoslimError(f"{run_dir} keeps its study in {public_storage_url(stored)}, not "
                            f"{public_storage_url(given)}; use --out for a new run folder")
    return given or stored


def _requeue(study: optuna.Study, params: dict) -> None:
    """Queue an interrupted trial's parameters again, unless already queued.

    (Optuna's ``skip_if_exists`` would also match the interrupted trial itself.)
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if params and not any(t.params == params or t.system_attrs.get("fixed_params") == params for t in waiting):
        study.enqueue_trial(params)


# A process marks a trial it asked for as its own within milliseconds (mark_owner). One
# killed in between leaves a RUNNING trial with no owner; after this long, nobody will claim it.
OWNERLESS_GRACE_S = 10.0


def recover_interrupted(study: optuna.Study, storage: optuna.storages.BaseStorage,
                        *, grace_s: float = OWNERLESS_GRACE_S, wait: bool = True) -> int:
    """Fail trials left RUNNING by a dead process and re-queue their params: those a dead
    process on this host owns, and those nobody owns ``grace_s`` after they started (the
    owner died between asking for the trial and marking it, on any host). An ownerless
    trial younger than that is waited for, so a re-run right after a kill does not count
    it as another worker's and run one trial short (``wait=False`` skips it instead)."""
    ages = [_ownerless_age(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    young = [age for age in ages if age is not None and age < grace_s]
    if young and wait:
        time.sleep(grace_s - min(young))
    host, recovered = socket.gethostname(), 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        age = _ownerless_age(trial)
        if age is not None:
            if age < grace_s:
                continue
        elif trial.user_attrs[ATTR_PREFIX + "host"] != host or _alive(trial.user_attrs[ATTR_PREFIX + "pid"]):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        storage.set_trial_user_attr(trial_id, "fail_reason", INTERRUPTED)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        _requeue(study, trial.params)
        recovered += 1
    return recovered


def _ownerless_age(trial: optuna.trial.FrozenTrial) -> float | None:
    """Seconds since a trial without a full owner (host and pid) started; None if owned.
    A trial with no start time (never the case for RUNNING) counts as just started."""
    if trial.user_attrs.get(ATTR_PREFIX + "host") is not None and trial.user_attrs.get(ATTR_PREFIX + "pid") is not None:
        return None
    if trial.datetime_start is None:
        return 0.0
    return (datetime.datetime.now() - trial.datetime_start).total_seconds()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remaining_budget(study: optuna.Study, trials: int) -> int:
    """Trials still to start: the budget less finished trials and those other live
    workers (processes sharing the storage, or Ray workers) are running now."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return max(trials - finished_count(study) - running, 0)


def finished_count(study: optuna.Study) -> int:
    """Trials that used budget: completed, early-stopped and genuinely failed (not interrupted)."""
    return sum(
        1 for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
        if t.user_attrs.get("fail_reason") != INTERRUPTED
    )


def make_stopper(study: optuna.Study, ctx: SearchContext) -> ParetoStopper | None:
    """The early-stopping rule calibrated on the study's completed trials so far."""
    settings = ctx.experiment.search.early_stopping
    metric = ctx.task.metric_name
    if not settings.enabled or metric not in ctx.experiment.objectives:
        return None
    done = {t.number: t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    curves = tuple(Curve(tuple(t.user_attrs["curve"]), t.user_attrs["measured"][metric])
                   for t in done.values() if t.user_attrs.get("curve"))
    front = tuple(FrontPoint(done[n].user_attrs["measured"][metric],
                             {c: done[n].user_attrs["measured"][c] for c in ctx.cost_objectives})
                  for n in front_numbers(study, ctx.experiment.objectives))
    maximize = ctx.experiment.objectives[metric] == "maximize"
    # A trial whose optimistic projection misses the constraint on the metric can never
    # join the feasible front, whatever it costs.
    bound = metric_bound(ctx.experiment.constraints, metric, ctx.baseline_values[metric], maximize=maximize)
    # The budget's ledger: what earlier stops gave up, each recorded on its trial.
    spent = sum(t.user_attrs.get(HV_CHARGE_ATTR, 0.0)
                for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    return ParetoStopper(curves=curves, front=front, maximize=maximize, quantile=settings.quantile,
                         min_curves=settings.min_curves, bound=bound, best_possible=ctx.task.best_possible_metric,
                         own_curve_from=settings.own_curve_from, error_fraction=settings.error_fraction,
                         hv_budget=settings.hv_budget, hv_spent=spent,
                         reference_costs={c: ctx.baseline_values[c] for c in ctx.cost_objectives})


def measure_baseline(study: optuna.Study, ctx: SearchContext) -> dict[str, float]:
    """Measure the fp32 baseline artifact once per run, like any trial, test split included.

    Each worker measures a private copy, so workers started together on one run folder
    never measure a folder another one is replacing; the first copy measured is kept
    as ``baseline/``.
    """
    key = ATTR_PREFIX + "baseline"
    if key in study.user_attrs:
        return dict(study.user_attrs[key])
    recipe = Recipe(task=ctx.experiment.task, seed=ctx.seed, target=ctx.experiment.target)
    private = save_artifact(ctx.baseline_model, recipe, ctx.run_dir / baseline_copy_name())
    try:
        values = ctx.measure_artifact(private, ctx.experiment.target, splits=("val", "test"))
        with contextlib.suppress(OSError):  # another worker published its copy first
            if not (ctx.run_dir / "baseline").exists():
                private.rename(ctx.run_dir / "baseline")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    study.set_user_attr(key, values)
    return values


def run_one_trial(study: optuna.Study, ctx: SearchContext) -> None:
    """Ask, evaluate, tell. Failures are recorded with their reason; the study goes on."""
    trial = study.ask()
    mark_owner(trial)
    try:
        outcome = run_trial_body(trial, ctx, make_stopper(study, ctx))
    except KeyboardInterrupt:
        trial.set_user_attr("fail_reason", INTERRUPTED)
        study.tell(trial, state=TrialState.FAIL)
        _requeue(study, trial.params)
        raise
    record_outcome(study, trial, outcome, ctx)


def mark_owner(trial: optuna.Trial) -> None:
    """Which process holds the trial, so a re-run can tell a dead owner's trial apart."""
    trial.set_user_attr(ATTR_PREFIX + "host", socket.gethostname())
    trial.set_user_attr(ATTR_PREFIX + "pid", os.getpid())


def record_outcome(study: optuna.Study, trial: optuna.Trial, outcome: Outcome, ctx: SearchContext) -> None:
    """Tell the study what a trial produced; only finite, complete values reach the sampler."""
    if outcome.status == "stopped":
        trial.set_user_attr("stop_reason", outcome.reason)
        study.tell(trial, state=TrialState.PRUNED)
        return
    objectives = ctx.experiment.objectives
    values = [outcome.values.get(name) for name in objectives]
    if outcome.status == "complete" and not all(_finite(v) for v in values):
        bad = ", ".join(n for n, v in zip(objectives, values, strict=True) if not _finite(v))
        outcome = Outcome("failed", reason=f"objective {bad} is not a finite number after measurement")
    if outcome.status == "failed":
        trial.set_user_attr("fail_reason", outcome.reason)
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_user_attr("measured", outcome.values)
    for constraint in ctx.experiment.constraints:
        violation = constraint.violation(outcome.values, ctx.baseline_values, objectives[constraint.objective])
        trial.set_constraint(constraint.label, violation)
    study.tell(trial, [float(v) for v in values])


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def search(
    experiment_path: str | Path, *, out: str | Path | None = None, overrides: Overrides = Overrides(),
    progress: bool = True, backend: str = "local", address: str | None = None,
    storage: str | None = None,
) -> Run:
    """Run (or resume) the experiment's search; returns the run folder opened for reading.

    ``backend="ray"`` runs the trials through Ray Tune (on the cluster at ``address``, or
    a local Ray instance); the study stays in the same storage either way.
    """
    if backend not in ("local", "ray"):
        raise AutoslimError(f"unknown backend {backend!r} (known: local, ray)")
    if address and backend != "ray":
        raise AutoslimError("--address needs --backend ray")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    experiment, space = load_experiment(experiment_path)
    experiment = apply_overrides(experiment, overrides)
    task = load_task(experiment.task)
    check_objectives(experiment, task.metric_name, OBJECTIVE_NAMES, task.metric_direction)
    check_space(space, build_probe_model(task), experiment)
    if backend == "ray":  # before anything is written: a wrong --address leaves no run folder
        from autoslim.search.ray_backend import connect

        connect(address)
    remove_stale_temp_dirs()  # what killed searches left in the temporary directory
    baseline = load_baseline(experiment.task, task, log=progress)
    run_dir = Path(out) if out else Path("runs") / experiment.name
    study, storage_obj = open_study(run_dir, experiment, space, task.metric_name, storage)
    try:
        remove_stale_run_files(run_dir)
        ctx = SearchContext(experiment, space, task, baseline.model, {}, run_dir, experiment.search.seed)
        _run_study(study, storage_obj, ctx, baseline, backend=backend, address=address, progress=progress)
    finally:
        release_worker_slot(run_dir)
        # Even after Ctrl-C the outputs describe every trial the study holds.
        write_outputs(load_run(run_dir, storage=storage), experiment)
    return load_run(run_dir, storage=storage)


def _run_study(study: optuna.Study, storage: optuna.storages.BaseStorage, ctx: SearchContext,
               baseline: Baseline, *, backend: str, address: str | None, progress: bool) -> None:
    """Measure the baseline, recover what a killed run left, and run the remaining budget."""
    runner = None
    if backend == "ray":
        from autoslim.search.ray_backend import RayRunner

        runner = RayRunner(ctx, address=address, baseline=baseline)  # routes ctx.measure first
    try:
        ctx.baseline_values = measure_baseline(study, ctx)
        study.set_user_attr(ATTR_PREFIX + "baseline_sha", baseline.weights_sha)
        recover_interrupted(study, storage)
        refresh_tables(ctx.run_dir, study)  # interrupted trials show as such at once
        _warm_start(study, ctx, baseline.fingerprint)
        if runner is not None:
            runner.run(study, progress=progress)
        else:
            _loop(study, ctx, progress=progress)
    finally:
        if runner is not None:
            runner.close()


def _warm_start(study: optuna.Study, ctx: SearchContext, fingerprint: str) -> None:
    settings = ctx.experiment.search
    if not (settings.warm_start or settings.warm_start_uniform) or study.trials:
        return
    from autoslim.search.warm_start import (
        enqueue_plans,
        plan_params,
        quant_component,
        uniform_params,
    )

    component = quant_component(ctx.space)
    if component is None:
        raise AutoslimError("search.warm_start needs a per-layer quantize.weight component in the space")
    plans = uniform_params(component, ctx.info.names, settings.warm_start_uniform)
    if settings.warm_start:
        plans += plan_params(ctx.task, ctx.baseline_model, fingerprint, component, settings.warm_start)
    # A warm start is the quantization plan alone (what "uniform int8" means to a user):
    # every other switchable stage is off, instead of being sampled beside it.
    others_off = {f"{c.name}.enabled": False for c in ctx.space.components if c is not component and c.optional}
    enqueue_plans(study, [others_off | plan for plan in plans])


def _loop(study: optuna.Study, ctx: SearchContext, *, progress: bool) -> None:
    settings = ctx.experiment.search
    start = time.monotonic()
    done = finished_count(study)
    bar = tqdm(total=settings.trials, initial=min(done, settings.trials), unit="trial",
               desc=ctx.experiment.name, disable=not progress, dynamic_ncols=True)
    try:
        while remaining_budget(study, settings.trials) > 0:
            if settings.timeout is not None and time.monotonic() - start > settings.timeout:
                break
            run_one_trial(study, ctx)
            front = prune_artifacts(study, ctx)
            # Current within one trial even after SIGKILL; the plot and summary wait for the end.
            refresh_tables(ctx.run_dir, study)
            done = finished_count(study)
            failed = sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                         if t.user_attrs.get("fail_reason") != INTERRUPTED)
            stopped = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
            bar.set_postfix(front=len(front), failed=failed, stopped=stopped)
            bar.update(min(done, settings.trials) - bar.n)
    finally:
        bar.close()


__all__ = ["Overrides", "search", "suggest_recipe"]
