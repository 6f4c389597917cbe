"""``autoslim search --backend ray``: the same trials on a Ray cluster, through Ray Tune.

The Optuna study in autoslim's storage (the run folder's journal file, or PostgreSQL with
``--storage``) stays the single source of truth, so ``pareto``, ``export``, ``report`` and
the notebooks read a Ray run exactly like a local one.

- **Driver.** A Ray Tune ``Tuner`` asks :class:`StudySearcher`, an ``OptunaSearch`` over
  that storage, the study's own sampler and the same define-by-run search space. Tune
  bounds the concurrency (``search.ray.max_concurrent``) and reserves
  ``search.ray.cpus_per_trial`` CPUs (default: the target's threads) and
  ``gpus_per_trial`` GPUs for each trial.
- **Workers.** Each trial replays its sampled parameters with a ``FixedTrial`` and runs
  the same trial body as the local runner (:func:`autoslim.searching.evaluate.run_trial_body`).
  The outcome, a failure reason included, travels back in the reported result, and the
  driver records it like any runner (:func:`autoslim.searching.study.record_outcome`). A
  NaN never reaches the sampler, and no trial is left RUNNING (the gap in Ray's own
  ``OptunaSearch``).
- **Durability.** Resuming uses the Optuna storage, not ``Tuner.restore``: a re-run
  fails the trials a killed driver left RUNNING, re-queues their parameters and runs the
  rest of the budget. A worker that dies mid-trial is restarted up to
  ``search.ray.max_retries`` times, then the trial is recorded as failed with Ray's
  reason. A second completion for a trial the study already holds is ignored and counted.
- **Where latency is measured.** By default a trial measures its artifact in a fresh
  process on the node it ran on, within its reserved CPUs: right for a homogeneous
  cluster. On a mixed cluster, set ``search.ray.measure_resource: NAME`` and start the
  target machine with ``ray start --resources '{"NAME": 1}' --num-cpus 0``: every
  artifact (the baseline's too) is then shipped to a measuring actor there, which
  measures one artifact at a time while no trial can be scheduled on that node.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoslim.errors import AutoslimError, TrialFailed
from autoslim.measure import measure_in_subprocess
from autoslim.recipe import Target
from autoslim.searching.evaluate import Outcome, SearchContext, run_trial_body
from autoslim.searching.experiment import Experiment
from autoslim.searching.outputs import prune_artifacts, refresh_tables
from autoslim.searching.record import TrialRecord
from autoslim.searching.runner import Runner
from autoslim.searching.study import (
    finished_count,
    make_stopper,
    mark_owner,
    record_interrupted,
    record_outcome,
    remaining_budget,
)
from autoslim.space import SearchSpace

try:
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch
except ImportError:  # pragma: no cover - exercised only without the extra
    ray = None
    OptunaSearch = object

WORKER_DIED = "the Ray worker running it died"


def require_ray() -> None:
    if ray is None:
        raise AutoslimError("--backend ray needs Ray Tune: pip install 'autoslim[ray]'")


# --------------------------------------------------------------------------- runner


class RayRunner(Runner):
    """Connects to (or starts) Ray, routes measurement, and runs the remaining budget.

    Built before the baseline is measured: with ``search.ray.measure_resource`` every
    artifact, the baseline's included, is measured on the target node (``ctx.measure``).
    """

    def __init__(self, ctx: SearchContext, *, address: str | None, baseline) -> None:
        require_ray()
        self.baseline = baseline
        self.settings = ctx.experiment.search.ray
        connect(address)
        self.measurer = None
        if self.settings.measure_resource:
            self.measurer = _start_measurer(self.settings.measure_resource)
            ctx.measure = RemoteMeasure(self.measurer)
        self.searcher: StudySearcher | None = None

    def run(self, study: optuna.Study, ctx: SearchContext, *, progress: bool) -> None:
        settings = ctx.experiment.search
        budget = remaining_budget(study, settings.trials)
        if budget == 0:
            return
        searcher = self.searcher = StudySearcher(study, ctx)
        cpus = self.settings.cpus_per_trial or float(ctx.experiment.target.threads)
        trainable = tune.with_resources(
            tune.with_parameters(train_one, payload=self._payload(ctx)),
            {"cpu": cpus, "gpu": self.settings.gpus_per_trial},
        )
        bar = _progress_bar(study, settings.trials, ctx.experiment.name, progress)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=budget,
                time_budget_s=settings.timeout,
                max_concurrent_trials=self.settings.max_concurrent,
                # A reused worker keeps its loaded task and weights (worker_context).
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                # A fresh Tune experiment per invocation: the study, not Tune, is resumed.
                name=f"tune_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}",
                storage_path=str((ctx.run_dir / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=self.settings.max_retries),
                callbacks=[_RecordErrors(searcher, ctx, bar)],
                verbose=0,
            ),
        )
        try:
            tuner.fit()
        finally:
            searcher.abandon_unfinished()
            if bar is not None:
                bar.close()

    def _payload(self, ctx: SearchContext) -> WorkerPayload:
        from safetensors.torch import save

        state = {k: v.contiguous() for k, v in self.baseline.model.state_dict().items()}
        return WorkerPayload(
            experiment=ctx.experiment.model_dump(mode="json"),
            space=ctx.space.spec(),
            baseline_weights=save(state),
            baseline_sha=self.baseline.weights_sha,
            baseline_values=dict(ctx.baseline_values),
            run_dir=str(ctx.run_dir.resolve()),
            measurer=self.measurer,
        )

    def close(self) -> None:
        if self.searcher is not None:
            self.searcher.abandon_unfinished()


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (or start a local Ray); one line if it is not there."""
    require_ray()
    _check_reachable(address)
    _init_ray(address)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """A plain ``host:port`` that nothing answers on fails now; Ray itself would retry
    for minutes before giving up."""
    if not address or "://" in address or address == "auto":
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise AutoslimError(f"--address must be HOST:PORT (or ray://..., auto), not {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise AutoslimError(f"cannot connect to Ray at {address}: {exc.strerror or exc}") from None


def ray_address(address: str | None) -> str | None:
    """What ``ray.init`` is given: ``--address``, else ``RAY_ADDRESS`` (Ray reads it), else
    "local". Plain ``ray.init()`` would join the latest cluster a ``ray start`` left
    running on this machine, whoever started it for whatever purpose, and the search
    would die with it ("lost objects", plasma store gone) when that cluster is stopped."""
    if address:
        return address
    return None if os.environ.get("RAY_ADDRESS") else "local"


def _init_ray(address: str | None) -> None:
    # Tune would reject a failed trial's result for lacking the objectives; the searcher
    # reads the outcome instead.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    try:
        ray.init(address=ray_address(address), **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a local Ray instance"
        raise AutoslimError(
            f"cannot connect to Ray at {where}: {str(exc).splitlines()[0]}"
        ) from None


def _progress_bar(study: optuna.Study, total: int, name: str, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=min(finished_count(study), total),
        unit="trial",
        desc=f"{name} (ray)",
        dynamic_ncols=True,
    )


class StudySearcher(OptunaSearch):
    """Ray Tune's ``OptunaSearch`` on autoslim's study, recording outcomes the autoslim way."""

    def __init__(self, study: optuna.Study, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.duplicates = 0
        self._pending: dict[str, optuna.Trial] = {}
        objectives = ctx.experiment.objectives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            super().__init__(
                space=self._define_by_run,
                metric=list(objectives),
                mode=["max" if d == "maximize" else "min" for d in objectives.values()],
                sampler=study.sampler,
                study_name=study.study_name,
                storage=study._storage,
            )

    def _define_by_run(self, trial) -> None:
        self.ctx.space.suggest(trial, self.ctx.info)

    def suggest(self, trial_id: str) -> dict | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Tune warns when define-by-run takes > 50 ms
            if super().suggest(trial_id) is None:
                return None
        trial = self._ot_trials[trial_id]
        mark_owner(trial)  # the driver owns it: a re-run after SIGKILL re-queues it
        TrialRecord(backend="ray").write_to(trial)
        return {
            "number": trial.number,
            "params": dict(trial.params),
            "stopper": make_stopper(self._ot_study, self.ctx),
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate results are not fed to Optuna (it has no multi-objective pruning)."""

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        trial = self._ot_trials.get(trial_id)
        if trial is None or trial_id in self._completed_trials or self._finished(trial):
            self.duplicates += 1  # a retry's second report, or a trial a re-run already closed
            return
        self._completed_trials.add(trial_id)
        if error or not result or "autoslim_outcome" not in result:
            self._pending[trial_id] = trial  # Ray's reason follows in on_trial_error
            return
        # What the trial body recorded on the worker's FixedTrial, verbatim.
        for key, value in json.loads(result["autoslim_attrs"]).items():
            trial.set_user_attr(key, value)
        TrialRecord(
            node=result.get("autoslim_node", ""),
            window=(result["autoslim_started"], result["autoslim_finished"]),
        ).write_to(trial)
        record_outcome(
            self._ot_study,
            trial,
            Outcome.from_dict(json.loads(result["autoslim_outcome"])),
            self.ctx,
        )

    def fail(self, trial_id: str, reason: str) -> None:
        trial = self._pending.pop(trial_id, None)
        if trial is not None and not self._finished(trial):
            TrialRecord(fail_reason=reason).write_to(trial)
            self._ot_study.tell(trial, state=TrialState.FAIL)

    def abandon_unfinished(self) -> None:
        """After an interrupted fit: fail what is still open and re-queue its parameters."""
        for trial_id in list(self._pending):
            self.fail(trial_id, WORKER_DIED)
        for trial_id, trial in self._ot_trials.items():
            if trial_id not in self._completed_trials and not self._finished(trial):
                record_interrupted(self._ot_study, trial)
                self._completed_trials.add(trial_id)

    def _finished(self, trial: optuna.Trial) -> bool:
        storage = self._ot_study._storage
        study_id = storage.get_study_id_from_name(self._ot_study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        return storage.get_trial(trial_id).state.is_finished()

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: the study in its storage is the checkpoint."""

    def restore(self, checkpoint_path: str) -> None:
        raise AutoslimError(
            "resume a Ray search by re-running `autoslim search`, not Tuner.restore"
        )


if ray is not None:

    class _RecordErrors(tune.Callback):
        """Gives failed trials Ray's reason, keeps the front's artifacts, moves the bar."""

        def __init__(self, searcher: StudySearcher, ctx: SearchContext, bar) -> None:
            self.searcher, self.ctx, self.bar = searcher, ctx, bar

        def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
            self.searcher.fail(trial.trial_id, error_reason(trial))
            refresh_tables(self.ctx.run_dir, self.searcher._ot_study)
            self._advance()

        def on_trial_recover(self, iteration: int, trials: list, trial, **info) -> None:
            number = trial.config.get("number")
            logging.getLogger(__name__).warning(
                "trial %s: worker failed, retrying (%s)", number, error_reason(trial)
            )

        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            prune_artifacts(self.searcher._ot_study, self.ctx)
            refresh_tables(self.ctx.run_dir, self.searcher._ot_study)
            self._advance()

        def _advance(self) -> None:
            if self.bar is not None:
                study = self.searcher._ot_study
                self.bar.update(min(finished_count(study), self.bar.total) - self.bar.n)


def error_reason(trial) -> str:
    """One line from the error Ray recorded for a trial (its last failure)."""
    text = ""
    if trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text(errors="replace")
    failures = text.split("Failure # ")
    lines = [ln.strip() for ln in failures[-1].splitlines()[1:] if ln.strip()] if text else []
    # Ray's messages open with the error class; the actor-death ones say why it died.
    for line in lines:
        if "died" in line or "OutOfMemory" in line or "memory" in line.lower():
            return f"{WORKER_DIED}: {line[:200]}"
    return f"{WORKER_DIED}: {lines[0][:200]}" if lines else WORKER_DIED


# --------------------------------------------------------------------------- workers


@dataclass(frozen=True)
class WorkerPayload:
    """What every worker needs once: the experiment, the space and the fp32 weights."""

    experiment: dict
    space: list
    baseline_weights: bytes
    baseline_sha: str
    baseline_values: dict
    run_dir: str
    measurer: Any = None

    @property
    def key(self) -> str:
        spec = json.dumps([self.experiment, self.space, self.baseline_sha], sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


_CONTEXTS: dict[str, SearchContext] = {}


def worker_context(payload: WorkerPayload) -> SearchContext:
    """The trial context on a worker, built once per process."""
    if payload.key in _CONTEXTS:
        return _CONTEXTS[payload.key]
    from safetensors.torch import load

    from autoslim.task import load_task

    experiment = Experiment.model_validate(payload.experiment)
    task = load_task(experiment.task)
    model = task.build_model()
    model.load_state_dict(load(payload.baseline_weights))
    run_dir = Path(payload.run_dir)
    if not (run_dir / "run.json").is_file():
        # No shared filesystem with the driver: artifacts live only as long as measuring.
        run_dir = Path(tempfile.mkdtemp(prefix="autoslim-ray-"))
        search = experiment.search.model_copy(update={"keep_artifacts": "none"})
        experiment = experiment.model_copy(update={"search": search})
    ctx = SearchContext(
        experiment,
        SearchSpace.from_spec(payload.space),
        task,
        model.eval(),
        dict(payload.baseline_values),
        run_dir,
        experiment.search.seed,
    )
    if payload.measurer is not None:
        ctx = replace(ctx, measure=RemoteMeasure(payload.measurer))
    _CONTEXTS[payload.key] = ctx
    return ctx


def train_one(config: dict, payload: WorkerPayload) -> None:
    """Ray Tune's function trainable: one autoslim trial, reported once."""
    started = time.time()
    ctx = worker_context(payload)
    trial = optuna.trial.FixedTrial(config["params"], number=config["number"])
    outcome = run_trial_body(trial, ctx, config.get("stopper"))
    result: dict[str, Any] = {
        "autoslim_outcome": json.dumps(outcome.to_dict()),
        "autoslim_attrs": json.dumps(trial.user_attrs),
        "autoslim_node": ray.get_runtime_context().get_node_id(),
        "autoslim_started": started,
        "autoslim_finished": time.time(),
    }
    for name in ctx.experiment.objectives:
        value = outcome.values.get(name)
        if isinstance(value, (int, float)) and math.isfinite(value):
            result[name] = float(value)
    tune.report(result)


# --------------------------------------------------------------------------- measuring


def _start_measurer(resource: str):
    available = ray.cluster_resources().get(resource, 0)
    if available < 1:
        raise AutoslimError(
            f"no Ray node offers the custom resource {resource!r} for measuring; start the target "
            f"node with: ray start --resources '{{\"{resource}\": 1}}' --num-cpus 0"
        )
    return (
        ray.remote(Measurer)
        .options(num_cpus=0, resources={resource: 1}, max_concurrency=1)
        .remote()
    )


class Measurer:
    """A Ray actor on the target node: measures one shipped artifact at a time."""

    def measure(
        self,
        files: dict[str, bytes],
        target: dict,
        splits: list[str],
        reference_files: dict[str, bytes] | None = None,
    ) -> dict | str:
        folder = _write_files(files)
        reference = None if reference_files is None else _write_files(reference_files)
        try:
            return measure_in_subprocess(
                folder, Target.model_validate(target), splits=tuple(splits), reference=reference
            )
        except TrialFailed as exc:
            return str(exc)  # a reason, not a remote traceback
        finally:
            for written in (folder, reference):
                if written is not None:
                    shutil.rmtree(written, ignore_errors=True)


def _write_files(files: dict[str, bytes]) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="autoslim-measure-"))
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _read_files(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


class RemoteMeasure:
    """``ctx.measure`` that ships the artifact's bytes to the measuring actor."""

    def __init__(self, actor) -> None:
        self.actor = actor

    def __call__(
        self,
        path: Path,
        target: Target,
        splits: tuple[str, ...] = ("val",),
        reference: Path | None = None,
    ) -> dict:
        reference_files = None if reference is None else _read_files(Path(reference))
        values = ray.get(
            self.actor.measure.remote(
                _read_files(Path(path)),
                target.model_dump(mode="json"),
                list(splits),
                reference_files,
            )
        )
        if isinstance(values, str):
            raise TrialFailed(values)
        return values
