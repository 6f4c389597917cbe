"""Several `autoslim search` processes sharing one study in a real PostgreSQL server.

`.ci/run` starts the server (`.ci/postgres.sh`) and sets AUTOSLIM_TEST_POSTGRES_URL.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from optuna.trial import TrialState

from autoslim.errors import AutoslimError
from autoslim.run import load_run, open_storage, public_storage_url

POSTGRES_URL = os.environ.get("AUTOSLIM_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="AUTOSLIM_TEST_POSTGRES_URL not set (.ci/run sets it)")


def test_public_url_drops_the_password_only():
    assert public_storage_url("postgresql://ann:s3cret@db.example:5432/studies") == \
        "postgresql://ann@db.example:5432/studies"
    assert public_storage_url("runs/x/study.journal") == "runs/x/study.journal"


def test_unknown_scheme_and_unreachable_server_are_one_line_errors():
    with pytest.raises(AutoslimError, match="unsupported storage URL scheme 'redis'"):
        open_storage("redis://localhost/0")
    with pytest.raises(AutoslimError, match=r"cannot open storage postgresql://nobody@127\.0\.0\.1:9/none"):
        open_storage("postgresql://nobody:pw@127.0.0.1:9/none")


@needs_postgres
@pytest.mark.slow
def test_two_processes_share_one_postgres_study_without_duplicates(tmp_path, experiment_file):
    name = f"pg_{uuid.uuid4().hex[:8]}"  # the database outlives the test
    path = experiment_file(name=name, trials=6)
    outs = [tmp_path / "worker_a", tmp_path / "worker_b"]
    procs = [subprocess.Popen([sys.executable, "-m", "autoslim.cli", "search", str(path), "--out", str(out),
                               "--storage", POSTGRES_URL], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
             for out in outs]
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
