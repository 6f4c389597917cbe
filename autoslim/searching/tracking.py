"""Experiment tracking: every trial of a search as a run in the team's MLflow.

An experiment's ``tracking: {mlflow: {uri, experiment}}`` section turns it on. Each
finished trial (complete, failed or stopped) becomes one MLflow run, tagged with the
study and trial number, holding the trial's parameters, its objective values and every
other number measured on its artifact, its state and failure reason, and its recipe as
``recipe.yaml``. When the search ends, the front's runs are tagged
``autoslim.front = true`` and a run named ``front`` holds ``pareto.csv`` and
``summary.json``.

Syncing is idempotent (a trial already logged is skipped), so it runs after every trial
and again at the end, also after a resume or on several workers. The run folder stays the
source of truth: a tracking server that is down costs a warning, never a trial.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import yaml

from autoslim.recipe import StrictModel
from autoslim.searching.record import TrialRecord

FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.FAIL,
    optuna.trial.TrialState.PRUNED,
)
_warned: set[str] = set()


class MlflowTracking(StrictModel):
    """Where trials are logged: a tracking URI (a server, or ``sqlite:///mlflow.db``) and
    the MLflow experiment (default: the autoslim experiment's name)."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str | None = None
    # Where a new MLflow experiment stores artifacts (recipes, tables). Unset: beside a
    # local SQLite store's file, else wherever the tracking server puts them.
    artifacts: str | None = None

    def artifact_location(self) -> str | None:
        if self.artifacts or not self.uri.startswith("sqlite:///"):
            return self.artifacts
        return str(Path(self.uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts")


class Tracking(StrictModel):
    mlflow: MlflowTracking | None = None


def tracking_of(run) -> Tracking:
    """The tracking settings the run folder was created with."""
    spec = run.info.get("experiment_spec", {}).get("tracking") or {}
    return Tracking.model_validate(spec)


def sync_trials(run, *, front: list[int] | None = None) -> int:
    """Log the run's finished trials that MLflow does not hold yet; with ``front``, also
    tag the front and log the run's tables. Returns how many trials were logged."""
    settings = tracking_of(run).mlflow
    if settings is None:
        return 0
    try:
        return _sync_mlflow(run, settings, front)
    except Exception as exc:  # noqa: BLE001 — tracking must never cost a trial
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if message not in _warned:
            _warned.add(message)
            print(f"warning: MLflow tracking at {settings.uri} failed ({message})", file=sys.stderr)
        return 0


def _sync_mlflow(run, settings: MlflowTracking, front: list[int] | None) -> int:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.uri)
    experiment_id = _experiment_id(
        client, settings.experiment or run.info["experiment"], settings.artifact_location()
    )
    study = run.info["study_name"]
    logged = {
        r.data.tags.get("autoslim.trial"): r.info.run_id
        for r in client.search_runs(
            [experiment_id],
            filter_string=f"tags.`autoslim.study` = '{study}'",
            max_results=50000,
        )
    }
    count = 0
    for trial in run.study.get_trials(deepcopy=False, states=FINISHED):
        if str(trial.number) not in logged:
            logged[str(trial.number)] = _log_trial(client, experiment_id, study, run, trial)
            count += 1
    if front is not None:
        for number in front:
            if str(number) in logged:
                client.set_tag(logged[str(number)], "autoslim.front", "true")
        _log_front(client, experiment_id, study, Path(run.path))
    return count


def _experiment_id(client, name: str, artifacts: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifacts)


def _log_trial(client, experiment_id: str, study: str, run, trial) -> str:
    record = TrialRecord.from_trial(trial)
    tags = {
        "autoslim.study": study,
        "autoslim.trial": str(trial.number),
        "autoslim.state": trial.state.name,
        "autoslim.run_folder": str(Path(run.path).resolve()),
    }
    reason = record.fail_reason or record.stop_reason
    if reason:
        tags["autoslim.reason"] = reason[:5000]
    mlflow_run = client.create_run(experiment_id, run_name=f"trial {trial.number}", tags=tags)
    run_id = mlflow_run.info.run_id
    for key, value in trial.params.items():
        client.log_param(run_id, key, value)
    for key, value in _numbers(trial, run, record).items():
        client.log_metric(run_id, key, value)
    if record.recipe:
        client.log_text(run_id, yaml.safe_dump(record.recipe, sort_keys=False), "recipe.yaml")
    client.set_terminated(run_id, "FINISHED" if trial.state.name == "COMPLETE" else "FAILED")
    return run_id


def _numbers(trial, run, record: TrialRecord) -> dict[str, float]:
    """The objective values, then every other finite number measured on the artifact."""
    numbers = dict(zip(run.objectives, trial.values or (), strict=False))
    for key, value in (record.measured or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.setdefault(key, value)
    return {k: float(v) for k, v in numbers.items() if math.isfinite(float(v))}


def _log_front(client, experiment_id: str, study: str, folder: Path) -> None:
    tags = {"autoslim.study": study, "autoslim.trial": "front"}
    existing = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`autoslim.study` = '{study}' and tags.`autoslim.trial` = 'front'",
    )
    run_id = (
        existing[0].info.run_id
        if existing
        else client.create_run(experiment_id, run_name="front", tags=tags).info.run_id
    )
    for name in ("pareto.csv", "summary.json"):
        if (folder / name).is_file():
            client.log_text(run_id, (folder / name).read_text(), name)
    client.set_terminated(run_id)
