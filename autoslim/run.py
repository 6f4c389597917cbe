"""Run folders: one search's durable state and outputs, readable without re-running it.

::

    RUN_DIR/
      run.json         experiment name, study name, storage (never its secrets), objectives;
                       written once the storage has opened
      study.journal    Optuna journal storage: the single source of truth
      baseline/        the fp32 baseline artifact, measured like any trial
      artifacts/       trial_N/ artifacts (by default only those on the front survive)
      trials.csv  pareto.csv                 (refreshed after every trial)
      pareto.png  summary.json               (written when a search ends)

:func:`load_run` is what the CLI's ``pareto``/``export`` and the notebooks use: it reads
the study, never the CSVs, so it is right even after an interrupted search.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from autoslim.results.pareto import pareto_front
from autoslim.searching.record import BASELINE_ATTR, TrialRecord

RUN_FILE = "run.json"
JOURNAL_FILE = "study.journal"


RDB_SCHEMES = ("postgresql", "mysql", "sqlite")


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """A journal file path (server-free, multi-process safe) or a database URL.

    A PostgreSQL URL lets several ``autoslim search`` processes, on several machines,
    work on one study. ``url`` is used as given, secrets included; what messages show is
    :func:`public_storage_url`. A URL without a password takes it the libpq way
    (``PGPASSWORD`` or ``~/.pgpass``), so run folders never store one.
    """
    if "://" not in url:
        return open_journal(Path(url))
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme not in RDB_SCHEMES:
        raise AutoslimError(
            f"unsupported storage URL scheme {scheme!r} (use postgresql://, mysql:// or sqlite:///)"
        )
    try:
        return _open_rdb(url)
    except Exception as exc:  # noqa: BLE001 — a driver or connection error is the user's to fix
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise AutoslimError(
            f"cannot open storage {public_storage_url(url)}: {scrub_secrets(first.strip(), url)}"
        ) from None


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
    return isinstance(exc, ProgrammingError) and "already exists" in str(
        exc
    )  # MySQL, PostgreSQL relations


# Query parameters whose value may be a credential, matched as parts of the lower-cased key:
# password, sslpassword, passfile, sslkey, ssl_key, token, api_key, client_secret, ...
SECRET_KEY_PARTS = ("pass", "pwd", "secret", "token", "key", "cred")
# Not secret by name, but only useful beside a key that is: the client certificate.
SECRET_KEYS = ("sslcert", "ssl_cert")


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return key in SECRET_KEYS or any(part in key for part in SECRET_KEY_PARTS)


def is_database_url(url: str | None) -> bool:
    return bool(url) and "://" in str(url)


def public_storage_url(url: str) -> str:
    """The URL without credentials: what run.json records and every message shows.

    Drops the password and every query parameter that may hold a secret
    (:func:`is_secret_key`). A run resumed from run.json alone therefore connects without
    them: libpq then reads ``PGPASSWORD``, ``~/.pgpass``, ``PGSSLKEY`` and the like, or
    ``--storage`` gives the full URL again.
    """
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        secret = [key for key in parsed.query if is_secret_key(key)]
        return (
            parsed._replace(password=None)
            .difference_update_query(secret)
            .render_as_string(hide_password=False)
        )
    except Exception:  # noqa: BLE001 — an unparsable URL is reported by open_storage
        return url.split("://", 1)[0] + "://…"


def _secret_values(url: str) -> list[str]:
    """The credentials in ``url``, decoded and as written, longest first."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 — nothing parsed, nothing to name
        return []
    values = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if is_secret_key(key):
            values += [value] if isinstance(value, str) else list(value)
    values = [str(v) for v in values if v]
    return sorted({*values, *(quote(v, safe="") for v in values)}, key=len, reverse=True)


# A shorter secret is masked only where it stands alone, or every "a" of a message would go.
MIN_MASKED_SECRET = 4


def scrub_secrets(text: str, url: str) -> str:
    """``text`` (a driver's error, say) with the URL's credentials masked as ``***``."""
    text = text.replace(url, public_storage_url(url))
    for value in _secret_values(url):
        if len(value) >= MIN_MASKED_SECRET:
            text = text.replace(value, "***")
        else:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "***", text)
    return text


# --------------------------------------------------------------------------- journal files

# What Optuna raises while replaying a journal it cannot read.
_REPLAY_ERRORS = (ValueError, KeyError, TypeError, AttributeError, AssertionError)


def open_journal(path: Path) -> optuna.storages.JournalStorage:
    """The journal storage at ``path``, after repairing a torn or garbled entry.

    Optuna skips a last entry cut short by a killed writer, but appends the next entry
    onto it, which breaks the study for good; an entry it cannot parse before the last
    one stops every read. Either way the entries before the damage are kept (see
    :func:`repair_journal`); the damaged file is never deleted.
    """
    from optuna.storages.journal import JournalFileBackend

    def replay() -> optuna.storages.JournalStorage:
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))

    if _last_entry_damaged(path):
        repair_journal(path)
    try:
        return replay()
    except _REPLAY_ERRORS as exc:
        error: Exception = exc
    if repair_journal(path):  # damage before the last entry
        try:
            return replay()
        except _REPLAY_ERRORS as exc:
            error = exc
    reason = next((ln for ln in str(error).splitlines() if ln.strip()), "")
    raise AutoslimError(
        f"cannot read study journal {path}: {type(error).__name__} {reason}".rstrip()
    ) from None


def repair_journal(path: Path) -> bool:
    """Cut the journal at its first damaged entry; True if there was one.

    Entries are a log that replays in order, so nothing after the damage can be trusted
    either. The original is kept as ``<name>.damaged-<time>`` and a one-line warning names
    the byte offset. Runs under the journal's own write lock, so an entry another process
    is appending right now is not mistaken for a torn one.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file():
        return False
    lock = JournalFileSymlinkLock(str(path))
    try:
        lock.acquire()  # a dead writer's lock is broken after Optuna's grace period
    except OSError as exc:  # a run folder this user may only read
        print(
            f"warning: {path} looks damaged but cannot be repaired here: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return False
    try:
        data = path.read_bytes()
        damage = first_damaged_entry(data)
        if damage is None:
            return False
        offset, kept, problem = damage
        kept_as = _keep_original(path)
        write_bytes_atomic(path, data[:offset])
    finally:
        lock.release()
    dropped = data[offset:].count(b"\n") - 1
    after = f", and drops the {dropped} after it" if dropped > 0 else ""
    print(
        f"warning: {path}: the entry at byte {offset} is {problem}; the study keeps the {kept} "
        f"entries before it{after} (the original file is kept as {kept_as.name})",
        file=sys.stderr,
    )
    return True


def first_damaged_entry(data: bytes) -> tuple[int, int, str] | None:
    """(byte offset, entries before it, what is wrong) of the first entry Optuna cannot use."""
    offset = count = 0
    while offset < len(data):
        end = data.find(b"\n", offset)
        if end < 0:
            return offset, count, "cut short (its write never finished)"
        problem = _entry_problem(data[offset : end + 1])
        if problem:
            return offset, count, problem
        offset, count = end + 1, count + 1
    return None


def _entry_problem(line: bytes) -> str | None:
    try:
        entry = json.loads(line)
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except ValueError:
        return "not valid JSON"
    if not (
        isinstance(entry, dict)
        and type(entry.get("op_code")) is int
        and isinstance(entry.get("worker_id"), str)
    ):
        return "not a journal entry"
    return None


def _last_entry_damaged(path: Path) -> bool:
    """True when the journal's last entry is torn or unreadable (read from the end only)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(path, "rb") as handle:
        end, tail = size, b""
        while True:
            start = max(0, end - (1 << 16))
            handle.seek(start)
            tail = handle.read(end - start) + tail
            cut = tail.rfind(b"\n", 0, len(tail) - 1)  # the newline before the last entry
            if cut >= 0 or start == 0:
                break
            end = start
    last = tail[cut + 1 :]
    return not last.endswith(b"\n") or _entry_problem(last) is not None


def _keep_original(path: Path) -> Path:
    """A second name for the damaged file, so replacing ``path`` never deletes it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        kept = path.with_name(f"{path.name}.damaged-{stamp}" + (f"-{n}" if n else ""))
        try:
            os.link(path, kept)
            return kept
        except FileExistsError:
            continue
        except OSError:  # a filesystem without hard links
            if kept.exists():
                continue
            shutil.copy2(path, kept)
            return kept
    raise AutoslimError(f"cannot keep a copy of the damaged {path}: too many copies already")


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a private temporary file and rename; the file never exists half-written
    or, for ``mode`` 0o600, readable by others even for an instant."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Run:
    """A run folder opened for reading."""

    path: Path
    study: optuna.Study
    info: dict[str, Any]
    # The task, where the run was made in this process (autoslim.compress): what loading
    # its artifacts needs when no importable entry names the task.
    task: Any = None

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
        return dict(self.study.user_attrs.get(BASELINE_ATTR, {}))

    @property
    def labels(self) -> dict[str, str]:
        """Display labels: energy says whether it was measured or estimated."""
        source = self.baseline.get("energy_source", "estimated")
        return {
            name: f"{name} ({source})" if name == "energy_mj" else name for name in self.objectives
        }

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

    def load(self, trial_number: int | None = None, **kwargs: Any) -> Any:
        """The compressed model of a trial (None: the fp32 baseline) from its artifact,
        as a runnable ``nn.Module``; keywords go to :func:`autoslim.load_artifact`."""
        from autoslim.artifact import load_artifact

        folder = self.path / (
            "baseline" if trial_number is None else f"artifacts/trial_{trial_number}"
        )
        if not folder.is_dir():
            raise AutoslimError(
                f"run {self.path} kept no artifact for trial {trial_number} "
                "(search.keep_artifacts keeps the front's by default; autoslim export rebuilds any)"
            )
        kwargs.setdefault("task", self.task)
        return load_artifact(folder, **kwargs).model

    def recipe(self, trial_number: int) -> Recipe:
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number == trial_number]
        if not trials:
            raise AutoslimError(f"run {self.path} has no trial {trial_number}")
        trial = trials[0]
        if trial.state != optuna.trial.TrialState.COMPLETE:
            raise AutoslimError(f"trial {trial_number} did not complete ({trial.state.name})")
        recipe = TrialRecord.from_trial(trial).recipe
        if recipe is None:
            raise AutoslimError(f"trial {trial_number} of run {self.path} recorded no recipe")
        return Recipe.from_dict(recipe)


TRIAL_PHASES = ("compress", "save", "measure")


def trials_table(study: optuna.Study, objectives: dict[str, str]) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        row: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        record = TrialRecord.from_trial(t)
        measured = record.measured or {}
        for i, name in enumerate(objectives):
            value = t.values[i] if t.values is not None else measured.get(name, math.nan)
            row[name] = value
        row["feasible"] = t.state.name == "COMPLETE" and all(v <= 0 for v in t.constraints.values())
        row.update({k: v for k, v in measured.items() if k not in objectives})
        row["fail_reason"] = record.fail_reason or record.stop_reason or ""
        row["epochs_run"] = len(record.curve or ())
        # a repeat of an earlier trial's parameters reuses its measurement (no training)
        row["repeat_of"] = math.nan if record.repeat_of is None else record.repeat_of
        row["seconds"] = t.duration.total_seconds() if t.duration else math.nan
        for phase in TRIAL_PHASES:  # where the time went: compressing or measuring
            row[f"{phase}_s"] = (record.phase_seconds or {}).get(phase, math.nan)
        row.update({f"param:{k}": v for k, v in t.params.items()})
        rows.append(row)
    columns = ["trial", "state", *objectives, "feasible"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def write_run_info(path: Path, info: dict[str, Any]) -> None:
    """Write run.json: readable by its owner only when it names a database, whose host
    and user are not for everyone, and never with the URL's secrets."""
    storage = info.get("storage")
    # JSON objects are unordered to many readers, but trial.values follow the objectives'
    # order: record it explicitly.
    info = {
        **info,
        "objective_order": list(info["objectives"]),
        "storage": public_storage_url(storage) if storage else storage,
    }
    path.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if is_database_url(storage) else 0o644
    write_bytes_atomic(path / RUN_FILE, json.dumps(info, indent=2).encode(), mode)


def read_run_info(path: str | Path) -> dict[str, Any]:
    """The validated ``run.json`` of a run folder."""
    path = Path(path)
    info_file = path / RUN_FILE
    if not info_file.is_file():
        raise AutoslimError(f"not an autoslim run folder (no {RUN_FILE}): {path}")
    try:
        info = json.loads(info_file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise AutoslimError(f"corrupt {info_file}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise AutoslimError(f"corrupt {info_file}: {exc}") from None
    missing = [
        k
        for k in ("study_name", "objectives", "metric_name")
        if not isinstance(info, dict) or k not in info
    ]
    if missing:
        raise AutoslimError(f"corrupt {info_file}: missing {', '.join(missing)}")
    return info


def load_run(path: str | Path, *, storage: str | None = None) -> Run:
    """Open a run folder written by ``autoslim search`` (``storage`` overrides the
    URL recorded in run.json, which holds no credentials, e.g. to add a password)."""
    path = Path(path)
    info = read_run_info(path)
    storage_url = storage or info.get("storage") or str(path / JOURNAL_FILE)
    try:
        study = optuna.load_study(study_name=info["study_name"], storage=open_storage(storage_url))
    except KeyError:
        raise AutoslimError(
            f"run {path} has no study named {info.get('study_name')!r} in its storage"
        ) from None
    return Run(path=path, study=study, info=info)
