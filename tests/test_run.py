"""Run folders: run.json (objective order, no secrets) and the study's storage (journal
repairs, credentials kept out of every message)."""

from __future__ import annotations

import json
import stat

import optuna
import pytest

from autoslim.cli import main
from autoslim.errors import AutoslimError
from autoslim.run import (
    JOURNAL_FILE,
    RUN_FILE,
    load_run,
    open_storage,
    public_storage_url,
    read_run_info,
    write_run_info,
)


def test_objectives_keep_the_study_order_not_alphabetical(tmp_path):
    objectives = {"size_bytes": "minimize", "accuracy": "maximize", "latency_ms": "minimize"}
    storage = open_storage(str(tmp_path / JOURNAL_FILE))
    study = optuna.create_study(
        study_name="x", storage=storage, directions=list(objectives.values())
    )
    study.add_trial(optuna.trial.create_trial(values=[1234.0, 0.9, 2.5]))
    write_run_info(
        tmp_path, {"study_name": "x", "objectives": objectives, "metric_name": "accuracy"}
    )

    run = load_run(tmp_path)
    assert list(run.objectives) == ["size_bytes", "accuracy", "latency_ms"]
    row = run.table().iloc[0]
    assert (row["size_bytes"], row["accuracy"], row["latency_ms"]) == (1234.0, 0.9, 2.5)


# --------------------------------------------------------------------------- storage URLs

SECRET_URL = (
    "postgresql://ann:pw-s3cret@db.example:5432/studies?password=qpass-1&sslpassword=ssl-pass-2"
    "&sslkey=/home/ann/key.pem&sslcert=/home/ann/cert.pem&passfile=/home/ann/pgpass&token=tok-3"
    "&api_key=api-4&Client_Secret=cs-5&sslmode=verify-full&application_name=autoslim"
)
SECRETS = (
    "pw-s3cret",
    "qpass-1",
    "ssl-pass-2",
    "key.pem",
    "cert.pem",
    "pgpass",
    "tok-3",
    "api-4",
    "cs-5",
)


def test_public_url_drops_every_credential_and_keeps_the_rest():
    assert (
        public_storage_url(SECRET_URL)
        == "postgresql://ann@db.example:5432/studies?application_name=autoslim&sslmode=verify-full"
    )
    assert (
        public_storage_url("mysql+pymysql://u:p@h/db?ssl_key=/k&charset=utf8")
        == "mysql+pymysql://u@h/db?charset=utf8"
    )
    assert public_storage_url("runs/x/study.journal") == "runs/x/study.journal"


def test_a_driver_error_that_quotes_credentials_is_masked(monkeypatch):
    from sqlalchemy.exc import OperationalError

    def refused(url, **kwargs):
        assert url == SECRET_URL  # the connection gets every credential
        raise OperationalError(
            "connect",
            {},
            Exception(
                f"password 'pw-s3cret' and sslpassword=ssl-pass-2 refused for {SECRET_URL}\nsecond line"
            ),
        )

    monkeypatch.setattr(optuna.storages, "RDBStorage", refused)
    with pytest.raises(AutoslimError) as caught:
        open_storage(SECRET_URL)
    message = str(caught.value)
    assert message.startswith(
        "cannot open storage postgresql://ann@db.example:5432/studies?application_name"
    )
    assert "password '***' and sslpassword=*** refused" in message and "\n" not in message
    assert not [s for s in SECRETS if s in message]


def test_run_json_naming_a_database_is_private_and_secret_free(tmp_path):
    write_run_info(
        tmp_path,
        {
            "study_name": "x",
            "objectives": {"accuracy": "maximize"},
            "metric_name": "accuracy",
            "storage": SECRET_URL,
        },
    )
    text = (tmp_path / RUN_FILE).read_text()
    assert not [s for s in SECRETS if s in text]
    assert json.loads(text)["storage"] == public_storage_url(SECRET_URL)
    assert stat.S_IMODE((tmp_path / RUN_FILE).stat().st_mode) == 0o600
    write_run_info(
        tmp_path,
        {
            "study_name": "x",
            "objectives": {"accuracy": "maximize"},
            "metric_name": "accuracy",
            "storage": None,
        },
    )
    assert (
        stat.S_IMODE((tmp_path / RUN_FILE).stat().st_mode) == 0o644
    )  # a journal run: nothing to hide


def test_run_json_that_is_not_utf8_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / RUN_FILE).write_bytes(b'{"study_name": "x\xff\xfe"}')
    with pytest.raises(AutoslimError, match=r"corrupt .*run.json: not UTF-8 text \(byte 17\)"):
        read_run_info(tmp_path)
    assert main(["pareto", str(tmp_path)]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


# --------------------------------------------------------------------------- damaged journals


def journal_with_trials(tmp_path, n: int = 3):
    """A journal holding a study of ``n`` completed trials; returns its path and lines."""
    path = tmp_path / JOURNAL_FILE
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        study.tell(trial, float(i))
    return path, path.read_bytes().splitlines(keepends=True)


def completed_values(path) -> list[float]:
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    return [t.value for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))]


def damaged_copies(path) -> list:
    return sorted(path.parent.glob(f"{path.name}.damaged-*"))


def test_a_torn_last_entry_is_cut_off_with_a_warning_and_the_study_goes_on(tmp_path, capsys):
    path, lines = journal_with_trials(tmp_path)
    original = b"".join(lines)[:-10]  # a killed writer's last entry, cut short
    path.write_bytes(original)
    offset = sum(len(line) for line in lines[:-1])

    assert completed_values(path) == [0.0, 1.0]  # the last entry was trial 2's result
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(
        f"warning: {path}: the entry at byte {offset} is cut short"
    )
    assert f"keeps the {len(lines) - 1} entries before it" in err
    assert path.read_bytes() == original[:offset]
    (kept,) = damaged_copies(path)
    assert kept.read_bytes() == original and kept.name in err

    # Optuna itself would append the next entry onto the torn one and lose the study.
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    study.tell(trial, 9.0)
    assert completed_values(path) == [0.0, 1.0, 9.0]
    assert capsys.readouterr().err == ""  # repaired once, silent since


@pytest.mark.parametrize(
    ("garbage", "problem"),
    [
        (b'{"op_code": 4, "worker_id": "w", "study_id"\n', "not valid JSON"),
        (b"\xff\xfe\x00garbage\n", "not UTF-8 text"),
        (b"[1, 2, 3]\n", "not a journal entry"),
    ],
)
def test_a_garbled_entry_keeps_the_study_before_it(tmp_path, capsys, garbage, problem):
    path, lines = journal_with_trials(tmp_path)
    cut = len(lines) - 3  # trial 2's parameter, user attrs and result come after
    original = b"".join(lines[:cut]) + garbage + b"".join(lines[cut:])
    path.write_bytes(original)
    offset = sum(len(line) for line in lines[:cut])

    assert completed_values(path) == [0.0, 1.0]
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"warning: {path}: the entry at byte {offset} is {problem}")
    assert f"keeps the {cut} entries before it, and drops the 3 after it" in err and "\n" not in err
    assert path.read_bytes() == original[:offset]
    (kept,) = damaged_copies(path)
    assert kept.read_bytes() == original


def test_a_journal_optuna_cannot_replay_is_a_one_line_error(tmp_path):
    path, lines = journal_with_trials(tmp_path)
    path.write_bytes(b"".join(lines) + b'{"op_code": 99, "worker_id": "w"}\n')  # no such operation
    with pytest.raises(
        AutoslimError, match=r"^cannot read study journal .*study\.journal: AssertionError"
    ):
        open_storage(str(path))
    assert damaged_copies(path) == []  # nothing was cut: every entry parses
