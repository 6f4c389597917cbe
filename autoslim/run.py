"""Run folders: one search's durable state and outputs, readable without re-running it.

::

    RUN_DIR/
      run.json         experiment name, study name, storage, objectives (written first)
      study.journal    Optuna journal storage: the single source of truth
      baseline/        the fp32 baseline artifact, measured like any trial
      artifacts/       trial_N/ artifacts (by default only those on the front survive)
      trials.csv  pareto.csv  pareto.png  summary.json   (regenerated after each search)

:func:`load_run` is what the CLI's ``pareto``/``export`` and the notebooks use: it reads
the study, never the CSVs, so it is right even after an interrupted search.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe, write_text_atomic
from autoslim.results.pareto import pareto_front

RUN_FILE = "run.json"
JOURNAL_FILE = "study.journal"
ATTR_PREFIX = "autoslim."


RDB_SCHEMES = ("postgresql", "mysql", "sqlite")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file path (server-free, multi-process safe) or a database URL.

    A PostgreSQL URL lets several ``autoslim search`` processes, on several machines,
    work on one study. A URL without a password takes it the libpq way
    (``PGPASSWORD`` or ``~/.pgpass``), so run folders never store one.
    """
    if "://" not in url:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(url))
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise AutoslimError(f"unsupported storage URL scheme {scheme!r} (use postgresql://, mysql:// or sqlite:///)")
    try:
        return _open_rdb(url)
    except Exception as exc:  # noqa: BLE001 — a driver or connection error is the user's to fix
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise AutoslimError(f"cannot open storage {public_storage_url(url)}: {first.strip()}") from None


SCHEMA_RACE_ATTEMPTS = 8


def _open_rdb(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage, retried when a concurrent worker won the race to create its tables.

    Workers started together on an empty database all run CREATE TABLE; the losers fail once
    the winner commits. The tables exist by then, so opening again succeeds; jitter spreads
    any further retries. Any other error is raised at once.
    """
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS + 1):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except Exception as exc:
            if attempt == SCHEMA_RACE_ATTEMPTS or not _lost_schema_race(exc):
                raise
            time.sleep(random.uniform(0.05, 0.3) * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _lost_schema_race(exc: Exception) -> bool:
    """True for the error a concurrent CREATE TABLE gives, never for a connection failure."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    if isinstance(exc, IntegrityError):  # PostgreSQL: duplicate key in pg_type
        return True
    return isinstance(exc, ProgrammingError) and "already exists" in str(exc)  # MySQL, PostgreSQL relations


def public_storage_url(url: str) -> str:
    """The URL with any password removed: what run.json records and messages show."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 — an unparsable URL is reported by open_storage
        return url.split("://", 1)[0] + "://…"


@dataclass
class Run:
    """A run folder opened for reading."""

    path: Path
    study: optuna.Study
    info: dict[str, Any]

    @property
    def objectives(self) -> dict[str, str]:
        """Objective → direction, in the study's order (the order of ``trial.values``)."""
        objectives = self.info["objectives"]
        order = self.info.get("objective_order", list(objectives))
        return {name: objectives[name] for name in order}

    @property
    def metric_name(self) -> str:
        return self.info["metric_name"]

    @property
    def baseline(self) -> dict[str, float]:
        return dict(self.study.user_attrs.get(ATTR_PREFIX + "baseline", {}))

    @property
    def labels(self) -> dict[str, str]:
        """Display labels: energy says whether it was measured or estimated."""
        source = self.baseline.get("energy_source", "estimated")
        return {name: f"{name} ({source})" if name == "energy_mj" else name for name in self.objectives}

    def table(self) -> pd.DataFrame:
        """One row per trial: state, feasibility, objective values, extras, params."""
        return trials_table(self.study, self.objectives)

    def front(self) -> pd.DataFrame:
        table = self.table()
        done = table[table["state"] == "COMPLETE"]
        if "repeat_of" in done:
            # A repeat is its twin's artifact with its twin's values: list the point once.
            done = done[done["repeat_of"].isna()]
        values = done[list(self.objectives)].to_numpy(dtype=float)
        idx = pareto_front(values, list(self.objectives.values()), done["feasible"].to_numpy(bool))
        return done.iloc[idx].sort_values(list(self.objectives)[0]).reset_index(drop=True)

    def recipe(self, trial_number: int) -> Recipe:
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise AutoslimError(f"run {self.path} has no trial {trial_number}")
        trial = trials[0]
        if trial.state != optuna.trial.TrialState.COMPLETE:
            raise AutoslimError(f"trial {trial_number} did not complete ({trial.state.name})")
        return Recipe.from_dict(trial.user_attrs["recipe"])


def trials_table(study: optuna.Study, objectives: dict[str, str]) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        measured = t.user_attrs.get("measured", {})
        for i, name in enumerate(objectives):
            value = t.values[i] if t.values is not None else measured.get(name, math.nan)
            row[name] = value
        row["feasible"] = t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())
        row.update({k: v for k, v in measured.items() if k not in objectives})
        row["fail_reason"] = t.user_attrs.get("fail_reason", "") or t.user_attrs.get("stop_reason", "")
        row["epochs_run"] = len(t.user_attrs.get("curve", []))
        # a repeat of an earlier trial's parameters reuses its measurement (no training)
        row["repeat_of"] = t.user_attrs.get("repeat_of", math.nan)
        row["seconds"] = t.duration.total_seconds() if t.duration else math.nan
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    columns = ["trial", "state", *objectives, "feasible"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def write_run_info(path: Path, info: dict[str, Any]) -> None:
    # JSON objects are unordered to many readers, but trial.values follow the objectives'
    # order: record it explicitly.
    info = {**info, "objective_order": list(info["objectives"])}
    write_text_atomic(path / RUN_FILE, json.dumps(info, indent=2))


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The validated ``run.json`` of a run folder."""
    path = Path(path)
    info_file = path / RUN_FILE
    if not info_file.is_file():
        raise AutoslimError(f"not an autoslim run folder (no {RUN_FILE}): {path}")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as exc:
        raise AutoslimError(f"corrupt {info_file}: {exc}") from None
    missing = [k for k in ("study_name", "objectives", "metric_name") if not isinstance(info, dict) or k not in info]
    if missing:
        raise AutoslimError(f"corrupt {info_file}: missing {', '.join(missing)}")
    return info


def load_run(path: str | Path, *, storage: str | None = None) -> Run:
    """Open a run folder written by ``autoslim search`` (``storage`` overrides the
    URL recorded in run.json, e.g. to add a password)."""
    path = Path(path)
    info = read_run_info(path)
    storage_url = storage or info.get("storage") or str(path / JOURNAL_FILE)
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=open_storage(storage_url))
    except KeyError:
        raise AutoslimError(f"run {path} has no study named {info.get('study_name')!r} in its storage") from None
    return Run(path=path, study=study, info=info)
