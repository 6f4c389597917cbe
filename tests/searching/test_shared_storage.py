"""Several `autoslim search` processes sharing one study in a real PostgreSQL server.

`.ci/run` starts the server (`.ci/postgres.sh`) and sets AUTOSLIM_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import uuid

import pytest
from optuna.trial import TrialState

from autoslim.errors import AutoslimError
from autoslim.run import load_run, open_storage, public_storage_url

POSTGRES_URL = os.environ.get("AUTOSLIM_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not POSTGRES_URL, reason="AUTOSLIM_TEST_POSTGRES_URL not set (.ci/run sets it)"
)


def test_public_url_drops_the_password_only():
    assert (
        public_storage_url("postgresql://ann:s3cret@db.example:5432/studies")
        == "postgresql://ann@db.example:5432/studies"
    )
    assert public_storage_url("runs/x/study.journal") == "runs/x/study.journal"


def test_unknown_scheme_and_unreachable_server_are_one_line_errors():
    with pytest.raises(AutoslimError, match="unsupported storage URL scheme 'redis'"):
        open_storage("redis://localhost/0")
    with pytest.raises(
        AutoslimError, match=r"cannot open storage postgresql://nobody@127\.0\.0\.1:9/none"
    ):
        open_storage("postgresql://nobody:pw@127.0.0.1:9/none")


def test_a_lost_schema_race_is_retried_but_a_connection_failure_is_not(monkeypatch):
    import optuna
    from sqlalchemy.exc import IntegrityError, OperationalError

    calls = []

    def flaky_storage(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # what PostgreSQL says to the loser of a concurrent CREATE TABLE
            raise IntegrityError(
                "CREATE TABLE studies", {}, Exception('duplicate key "pg_type_typname_nsp_index"')
            )
        return "storage"

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky_storage)
    monkeypatch.setattr("autoslim.run.time.sleep", lambda s: None)
    assert open_storage("postgresql://a@h/db") == "storage"
    assert len(calls) == 2

    def refused(url, **kwargs):
        calls.append(url)
        raise OperationalError("connect", {}, Exception("connection refused"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", refused)
    with pytest.raises(
        AutoslimError, match="cannot open storage postgresql://a@h/db: .*connection refused"
    ):
        open_storage("postgresql://a@h/db")
    assert len(calls) == 1


def _open_after(barrier, url, results):
    barrier.wait()  # all workers reach the empty database in the same instant
    try:
        open_storage(url)
        results.put("ok")
    except AutoslimError as exc:
        results.put(str(exc))


@needs_postgres
def test_workers_starting_together_on_an_empty_database_all_open_it():
    # Without the retry, 4 simultaneous opens lost the CREATE TABLE race in 5 of 5 tries.
    import sqlalchemy

    name = f"race_{uuid.uuid4().hex[:8]}"
    with sqlalchemy.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT").connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_open_after, args=(barrier, url, results)) for _ in range(4)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join()
    assert outcomes == ["ok"] * 4


@needs_postgres
@pytest.mark.slow
def test_two_processes_share_one_postgres_study_without_duplicates(tmp_path, experiment_file):
    name = f"pg_{uuid.uuid4().hex[:8]}"  # the database outlives the test
    path = experiment_file(name=name, trials=6)
    outs = [tmp_path / "worker_a", tmp_path / "worker_b"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "autoslim.cli",
                "search",
                str(path),
                "--out",
                str(out),
                "--storage",
                POSTGRES_URL,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]

    runs = [load_run(out) for out in outs]
    trials = runs[0].study.trials
    assert [t.number for t in trials] == [t.number for t in runs[1].study.trials]  # one study
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    # The budget is the study's: 6, plus at most one trial per extra worker that started
    # in the same instant as the last one (Optuna's MaxTrialsCallback has the same race).
    assert 6 <= len(finished) <= 7
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)
    owners = {t.user_attrs["autoslim.pid"] for t in finished}
    assert len(owners) == 2, "both processes should have run trials"
    for out in outs:  # each worker's folder is a normal run folder on the shared study
        assert (out / "trials.csv").is_file()
        assert "postgresql://autoslim@" in (out / "run.json").read_text()
