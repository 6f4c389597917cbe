"""The study's bookkeeping, shared by every runner: open it, recover what a dead process
left, record outcomes, count the budget.

Storage is Optuna's journal file inside the run folder (no server, safe for several
processes, every finished trial on disk before the next one starts) or a database shared
by several workers. Re-running the same command reopens the study, fails the trials a
killed process left RUNNING (and queues their parameters again), and runs only the
remaining budget. What each trial records is :class:`~autoslim.searching.record.TrialRecord`.
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import time
import warnings
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from autoslim.errors import AutoslimError
from autoslim.run import (
    JOURNAL_FILE,
    RUN_FILE,
    is_database_url,
    open_storage,
    public_storage_url,
    read_run_info,
    write_run_info,
)
from autoslim.searching.cleanup import process_alive
from autoslim.searching.early_stop import Curve, FrontPoint, ParetoStopper, metric_bound
from autoslim.searching.evaluate import Outcome, SearchContext
from autoslim.searching.experiment import Experiment, fingerprints
from autoslim.searching.outputs import front_numbers
from autoslim.searching.record import INTERRUPTED, TrialRecord
from autoslim.searching.slots import worker_slot
from autoslim.space import SearchSpace

# Seed offset between worker slots: far beyond any trial budget, so two workers' seeds
# (each also offset by the trials already run) never meet.
SLOT_SEED_STRIDE = 100_003


def open_study(
    run_dir: Path,
    experiment: Experiment,
    space: SearchSpace,
    metric_name: str,
    storage_url: str | None = None,
) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """Create the study, or reopen it after checking it searches the same experiment.

    ``storage_url`` (e.g. ``postgresql://host/db``) shares one study between several
    ``autoslim search`` processes; by default the study is a journal file in the run folder.
    The URL connects as given; run.json records it without credentials, so a resume
    without ``--storage`` takes them from ``PGPASSWORD``, ``~/.pgpass`` and the like.
    """
    prints = fingerprints(experiment, space)
    stored_info = _check_run_folder(run_dir, experiment, prints)
    storage_url = _storage_for(run_dir, storage_url, stored_info.get("storage"))
    if storage_url is None:
        run_dir.mkdir(parents=True, exist_ok=True)  # the journal lives in it
    # Opened before run.json is written: a storage that does not open (a typo in the URL,
    # a server down) leaves no run folder that names it.
    storage = open_storage(storage_url or str(run_dir / JOURNAL_FILE))
    if not stored_info:
        write_run_info(
            run_dir,
            {
                "experiment": experiment.name,
                "study_name": experiment.name,
                "storage": storage_url,
                "objectives": experiment.objectives,
                "metric_name": metric_name,
                "fingerprints": prints,
                "experiment_spec": experiment.model_dump(mode="json"),
            },
        )
    else:
        _protect_run_info(run_dir, stored_info)
    existing = optuna.study.get_all_study_summaries(storage)
    n_existing = sum(s.n_trials for s in existing if s.study_name == experiment.name)
    # Workers sharing the study must not draw the same start-up points: each gets its
    # own seed offset. A lone worker keeps offset 0, so a single search stays reproducible.
    n_existing += SLOT_SEED_STRIDE * worker_slot(run_dir, shared_server=storage_url is not None)
    study = optuna.create_study(
        study_name=experiment.name,
        storage=storage,
        load_if_exists=True,
        directions=list(experiment.objectives.values()),
        sampler=make_sampler(experiment, n_existing),
    )
    if study.metric_names != list(experiment.objectives):
        # optuna-dashboard and the plots then say "accuracy", not "Objective 0"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(experiment.objectives))
    return study, storage


def _check_run_folder(run_dir: Path, experiment: Experiment, prints: dict[str, str]) -> dict:
    """The run.json already in ``run_dir`` ({} for a new run), refusing a folder that
    holds something else: another experiment, a changed one, or files of no run."""
    info_path = run_dir / RUN_FILE
    if not info_path.exists():
        if run_dir.is_dir() and not _only_startup_files(run_dir):
            raise AutoslimError(
                f"{run_dir} is not empty and holds no autoslim run; choose another --out"
            )
        return {}
    stored_info = read_run_info(run_dir)
    if stored_info.get("study_name") != experiment.name:
        raise AutoslimError(
            f"{run_dir} holds the run of experiment {stored_info.get('study_name')!r}, "
            f"not {experiment.name!r}; use --out for a new run folder"
        )
    stored = stored_info.get("fingerprints", {})
    changed = [part for part, digest in prints.items() if stored.get(part) != digest]
    if changed:
        raise AutoslimError(
            f"{run_dir} holds a study whose {', '.join(changed)} differ from {experiment.name}'s; "
            "refusing to resume (use --out for a new run folder)"
        )
    return stored_info


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
            seed=seed,
            n_startup_trials=settings.startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


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


def _only_startup_files(run_dir: Path) -> bool:
    """Empty, or holding only what a worker starting on it creates before run.json: the
    journal (with its lock), the worker slots, a half-written run.json. Workers started
    together on one run folder race to create these; a worker killed before it wrote
    run.json leaves them."""
    return all(
        p.name.startswith((".run.json.", JOURNAL_FILE)) or p.name == ".workers"
        for p in run_dir.iterdir()
    )


def _storage_for(run_dir: Path, given: str | None, stored: str | None) -> str | None:
    """The study's storage URL: as given (credentials included), else as the run folder
    recorded it (without them)."""
    if given and stored and public_storage_url(given) != public_storage_url(stored):
        raise AutoslimError(
            f"{run_dir} keeps its study in {public_storage_url(stored)}, not "
            f"{public_storage_url(given)}; use --out for a new run folder"
        )
    return given or stored


# ---------------------------------------------------------------- ownership and recovery


def mark_owner(trial: optuna.Trial) -> None:
    """Which process holds the trial, so a re-run can tell a dead owner's trial apart."""
    TrialRecord(host=socket.gethostname(), pid=os.getpid()).write_to(trial)


def requeue(study: optuna.Study, params: dict) -> None:
    """Queue an interrupted trial's parameters again, unless already queued.

    (Optuna's ``skip_if_exists`` would also match the interrupted trial itself.)
    """
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if params and not any(
        t.params == params or t.system_attrs.get("fixed_params") == params for t in waiting
    ):
        study.enqueue_trial(params)


def record_interrupted(study: optuna.Study, trial: optuna.Trial) -> None:
    """Fail a trial whose process is stopping before it finished, and queue its parameters
    again: an interrupted trial uses no budget (:func:`finished_count`)."""
    TrialRecord(fail_reason=INTERRUPTED).write_to(trial)
    study.tell(trial, state=TrialState.FAIL)
    requeue(study, trial.params)


# A process marks a trial it asked for as its own within milliseconds (mark_owner). One
# killed in between leaves a RUNNING trial with no owner; after this long, nobody will claim it.
OWNERLESS_GRACE_S = 10.0


def recover_interrupted(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    *,
    grace_s: float = OWNERLESS_GRACE_S,
    wait: bool = True,
) -> int:
    """Fail trials left RUNNING by a dead process and re-queue their params: those a dead
    process on this host owns, and those nobody owns ``grace_s`` after they started (the
    owner died between asking for the trial and marking it, on any host). An ownerless
    trial younger than that is waited for, so a re-run right after a kill does not count
    it as another worker's and run one trial short (``wait=False`` skips it instead)."""
    ages = [
        _ownerless_age(t) for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    ]
    young = [age for age in ages if age is not None and age < grace_s]
    if young and wait:
        time.sleep(grace_s - min(young))
    recovered = 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _abandoned(trial, grace_s):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        for key, value in TrialRecord(fail_reason=INTERRUPTED).to_user_attrs().items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        requeue(study, trial.params)
        recovered += 1
    return recovered


def _abandoned(trial: FrozenTrial, grace_s: float) -> bool:
    """Whether no live process will finish this RUNNING trial: nobody claimed it within
    ``grace_s``, or its owner is a dead process on this host (one on another host may live)."""
    age = _ownerless_age(trial)
    if age is not None:
        return age >= grace_s
    owner = TrialRecord.from_trial(trial)
    return owner.host == socket.gethostname() and not _alive(owner.pid)


def _ownerless_age(trial: FrozenTrial) -> float | None:
    """Seconds since a trial without a full owner (host and pid) started; None if owned.
    A trial with no start time (never the case for RUNNING) counts as just started."""
    if TrialRecord.from_trial(trial).owned:
        return None
    if trial.datetime_start is None:
        return 0.0
    return (datetime.datetime.now() - trial.datetime_start).total_seconds()


def _alive(pid: int) -> bool:
    """Whether another live process has this pid. This process's own pid on a RUNNING
    trial is an earlier process's, now dead, whose pid was reused: this one is recovering
    before it asks for any trial."""
    return pid != os.getpid() and process_alive(pid)


# ---------------------------------------------------------------- outcomes and budget


def record_outcome(
    study: optuna.Study, trial: optuna.Trial, outcome: Outcome, ctx: SearchContext
) -> None:
    """Tell the study what a trial produced; only finite, complete values reach the sampler."""
    if outcome.status == "stopped":
        TrialRecord(stop_reason=outcome.reason).write_to(trial)
        study.tell(trial, state=TrialState.PRUNED)
        return
    objectives = ctx.experiment.objectives
    values = [outcome.values.get(name) for name in objectives]
    if outcome.status == "complete" and not all(_finite(v) for v in values):
        bad = ", ".join(n for n, v in zip(objectives, values, strict=True) if not _finite(v))
        outcome = Outcome(
            "failed", reason=f"objective {bad} is not a finite number after measurement"
        )
    if outcome.status == "failed":
        TrialRecord(fail_reason=outcome.reason).write_to(trial)
        study.tell(trial, state=TrialState.FAIL)
        return
    TrialRecord(measured=outcome.values).write_to(trial)
    for constraint in ctx.experiment.constraints:
        violation = constraint.violation(
            outcome.values, ctx.baseline_values, objectives[constraint.objective]
        )
        trial.set_constraint(constraint.label, violation)
    study.tell(trial, [float(v) for v in values])


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def remaining_budget(study: optuna.Study, trials: int) -> int:
    """Trials still to start: the budget less finished trials and those other live
    workers (processes sharing the storage, or Ray workers) are running now."""
    running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return max(trials - finished_count(study) - running, 0)


def finished_count(study: optuna.Study) -> int:
    """Trials that used budget: completed, early-stopped and genuinely failed (not interrupted)."""
    return sum(
        1
        for t in study.get_trials(
            deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        )
        if not TrialRecord.from_trial(t).interrupted
    )


def failed_count(study: optuna.Study) -> int:
    """Trials that failed on their own (not interrupted)."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if not TrialRecord.from_trial(t).interrupted
    )


# ---------------------------------------------------------------- the stopping rule


def make_stopper(study: optuna.Study, ctx: SearchContext) -> ParetoStopper | None:
    """The early-stopping rule calibrated on the study's completed trials so far."""
    settings = ctx.experiment.search.early_stopping
    metric = ctx.task.metric_name
    if not settings.enabled or metric not in ctx.experiment.objectives:
        return None
    done = {
        t.number: TrialRecord.from_trial(t)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    }
    curves = tuple(Curve(r.curve, r.measured[metric]) for r in done.values() if r.curve)
    front = tuple(
        FrontPoint(done[n].measured[metric], {c: done[n].measured[c] for c in ctx.cost_objectives})
        for n in front_numbers(study, ctx.experiment.objectives)
    )
    maximize = ctx.experiment.objectives[metric] == "maximize"
    # A trial whose optimistic projection misses the constraint on the metric can never
    # join the feasible front, whatever it costs.
    bound = metric_bound(
        ctx.experiment.constraints, metric, ctx.baseline_values[metric], maximize=maximize
    )
    # The budget's ledger: what earlier stops gave up, each recorded on its trial.
    spent = sum(
        TrialRecord.from_trial(t).hv_charge or 0.0
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    )
    return ParetoStopper(
        curves=curves,
        front=front,
        maximize=maximize,
        quantile=settings.quantile,
        min_curves=settings.min_curves,
        bound=bound,
        best_possible=ctx.task.best_possible_metric,
        own_curve_from=settings.own_curve_from,
        error_fraction=settings.error_fraction,
        hv_budget=settings.hv_budget,
        hv_spent=spent,
        reference_costs={c: ctx.baseline_values[c] for c in ctx.cost_objectives},
    )
