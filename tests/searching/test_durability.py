"""Run folders survive what users and machines do to them: a storage URL with secrets or a
typo, bad settings, killed workers' leftovers, and readers arriving mid-search."""

from __future__ import annotations

import json
import math
import os
import socket
import stat
import time

import optuna
import pandas as pd
import pytest

from autoslim.cli import main
from autoslim.errors import AutoslimError
from autoslim.run import JOURNAL_FILE, RUN_FILE, open_storage, write_run_info
from autoslim.searching import cleanup
from autoslim.searching.experiment import load_experiment
from autoslim.searching.outputs import refresh_tables
from autoslim.searching.record import TEST_METRICS
from autoslim.searching.slots import release_worker_slot
from autoslim.searching.study import open_study

SECRET_URL = "postgresql://ann:pw-s3cret@db.example/studies?sslpassword=ssl-pass-2&sslkey=/k/key.pem&sslmode=require"
PUBLIC_URL = "postgresql://ann@db.example/studies?sslmode=require"


def open_run(run_dir, path, storage=None):
    experiment, space = load_experiment(path)
    try:
        return open_study(run_dir, experiment, space, "accuracy", storage)
    finally:
        release_worker_slot(run_dir)


@pytest.fixture
def fake_database(monkeypatch):
    """The database replaced by an in-memory study store; records the URLs it was given."""
    urls: list[str] = []
    storage = optuna.storages.InMemoryStorage()

    def rdb(url):
        urls.append(url)
        return storage

    monkeypatch.setattr("autoslim.run._open_rdb", rdb)
    return urls


def test_run_json_records_the_storage_without_secrets_and_private(
    tmp_path, experiment_file, fake_database, capsys
):
    path, run_dir = experiment_file(), tmp_path / "run"
    open_run(run_dir, path, SECRET_URL)
    assert fake_database == [SECRET_URL]  # connecting uses every credential
    text = (run_dir / RUN_FILE).read_text()
    assert json.loads(text)["storage"] == PUBLIC_URL
    assert not [s for s in ("pw-s3cret", "ssl-pass-2", "key.pem") if s in text]
    assert stat.S_IMODE((run_dir / RUN_FILE).stat().st_mode) == 0o600

    open_run(run_dir, path)  # a resume without --storage: the recorded URL, secrets from libpq
    open_run(run_dir, path, SECRET_URL)  # or the full URL again
    assert fake_database == [SECRET_URL, PUBLIC_URL, SECRET_URL]
    with pytest.raises(AutoslimError) as caught:
        open_run(
            run_dir, path, "postgresql://ann:pw-s3cret@elsewhere/studies?sslpassword=ssl-pass-2"
        )
    assert str(caught.value) == (
        f"{run_dir} keeps its study in {PUBLIC_URL}, not postgresql://ann@elsewhere/studies; "
        "use --out for a new run folder"
    )
    captured = capsys.readouterr()
    assert "s3cret" not in captured.out + captured.err


def test_an_older_run_json_with_a_secret_is_scrubbed_on_resume(
    tmp_path, experiment_file, fake_database
):
    path, run_dir = experiment_file(), tmp_path / "run"
    open_run(run_dir, path, PUBLIC_URL)
    info = json.loads((run_dir / RUN_FILE).read_text())
    (run_dir / RUN_FILE).write_text(
        json.dumps({**info, "storage": SECRET_URL.replace("ann:pw-s3cret", "ann")})
    )
    os.chmod(run_dir / RUN_FILE, 0o644)
    open_run(run_dir, path, SECRET_URL)
    assert json.loads((run_dir / RUN_FILE).read_text())["storage"] == PUBLIC_URL
    assert stat.S_IMODE((run_dir / RUN_FILE).stat().st_mode) == 0o600


def test_a_storage_that_does_not_open_leaves_the_run_folder_usable(tmp_path, experiment_file):
    path, run_dir = experiment_file(), tmp_path / "run"
    typo = f"sqlite:///{tmp_path}/no-such-dir/study.db"
    with pytest.raises(AutoslimError, match="cannot open storage sqlite:///"):
        open_run(run_dir, path, typo)
    assert not (run_dir / RUN_FILE).exists()
    study, _ = open_run(run_dir, path)  # the same --out, now with the default journal
    assert json.loads((run_dir / RUN_FILE).read_text())["storage"] is None
    assert (run_dir / JOURNAL_FILE).is_file() and study.study_name == "tiny"


def test_a_run_folder_holding_a_journal_but_no_run_json_is_resumed(tmp_path, experiment_file):
    # what a worker killed between opening the journal and writing run.json leaves
    path, run_dir = experiment_file(), tmp_path / "run"
    run_dir.mkdir()
    open_storage(str(run_dir / JOURNAL_FILE))
    open_run(run_dir, path)
    assert (run_dir / RUN_FILE).is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(AutoslimError, match="is not empty and holds no autoslim run"):
        open_run(tmp_path / "other", path)


# --------------------------------------------------------------------------- settings


def test_a_negative_seed_is_refused_before_anything_is_written(tmp_path, experiment_file, capsys):
    out = tmp_path / "run"
    assert main(["search", str(experiment_file()), "--seed", "-3", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid search settings (--trials/--timeout/--seed): seed:")
    assert err.count("\n") == 1 and not out.exists()
    seeded = experiment_file(name="neg", search={"trials": 2, "seed": -3})
    assert main(["search", str(seeded), "--out", str(out)]) == 2
    assert "search.seed: Input should be greater than or equal to 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("bound", "message"),
    [
        ({"max_drop": -1}, "constraints.0.max_drop: Input should be greater than or equal to 0"),
        ({"max_ratio": 0}, "constraints.0.max_ratio: Input should be greater than 0"),
        ({"max_ratio": -0.5}, "constraints.0.max_ratio: Input should be greater than 0"),
        ({"max": float("nan")}, "constraints.0.max: Input should be a finite number"),
    ],
)
def test_nonsensical_constraints_are_refused(experiment_file, bound, message):
    path = experiment_file(constraints=[{"objective": "accuracy", **bound}])
    with pytest.raises(AutoslimError, match="invalid experiment") as caught:
        load_experiment(path)
    assert message in str(caught.value)


def test_zero_drop_and_a_positive_ratio_are_fine(experiment_file):
    path = experiment_file(
        constraints=[
            {"objective": "accuracy", "max_drop": 0},
            {"objective": "size_bytes", "max_ratio": 0.5},
        ]
    )
    experiment, _ = load_experiment(path)
    assert [c.label for c in experiment.constraints] == [
        "accuracy.max_drop",
        "size_bytes.max_ratio",
    ]


# --------------------------------------------------------------------------- tables mid-search


def test_tables_are_refreshed_from_the_study_as_it_stands(tmp_path):
    objectives = {"accuracy": "maximize", "size_bytes": "minimize"}
    study = optuna.create_study(
        study_name="x",
        storage=open_storage(str(tmp_path / JOURNAL_FILE)),
        directions=list(objectives.values()),
    )
    write_run_info(
        tmp_path, {"study_name": "x", "objectives": objectives, "metric_name": "accuracy"}
    )
    for accuracy, size in ((0.9, 100.0), (0.8, 50.0), (0.7, 80.0)):  # the last is dominated
        study.add_trial(
            optuna.trial.create_trial(
                values=[accuracy, size],
                user_attrs={"measured": {"accuracy": accuracy, "size_bytes": size}},
            )
        )
    study.set_user_attr(TEST_METRICS, {"0": 0.88})  # trial 1's test metric is not measured yet

    refresh_tables(tmp_path, study)
    trials = pd.read_csv(tmp_path / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2] and set(trials["state"]) == {"COMPLETE"}
    front = pd.read_csv(tmp_path / "pareto.csv")
    assert list(front["trial"]) == [1, 0]
    assert front["test_accuracy"].iloc[1] == 0.88 and math.isnan(front["test_accuracy"].iloc[0])

    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL, user_attrs={"fail_reason": "boom"}
        )
    )
    refresh_tables(tmp_path, study)
    assert list(pd.read_csv(tmp_path / "trials.csv")["fail_reason"].fillna("")) == [
        "",
        "",
        "",
        "boom",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "pareto.csv",
        "run.json",
        "study.journal",
        "trials.csv",
    ]


# --------------------------------------------------------------------------- leftovers


def aged(path, seconds: float):
    """Set the modification time of ``path`` and everything below it ``seconds`` back."""
    then = time.time() - seconds
    for inner in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(inner, (then, then), follow_symlinks=False)
    return path


def test_stale_scratch_folders_in_the_temp_dir_go_and_nothing_else(tmp_path):
    def folder(name: str, age: float):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"x")
        return aged(tmp_path / name, age)

    old = [
        folder("autoslim-measure-abc", 7200),
        folder("autoslim-ray-def", 7200),
        folder("autoslim-test-ghi", 7200),
    ]
    folder("autoslim-measure-young", 60)
    folder("someone-else-old", 7200)
    busy = folder("autoslim-ray-busy", 7200)
    (busy / "artifacts").mkdir()  # a live worker wrote here a moment ago
    aged(tmp_path / "autoslim-measure-abc", 7200)
    (tmp_path / "autoslim-measure-file").write_text("not a folder")
    aged(tmp_path / "autoslim-measure-file", 7200)
    (tmp_path / "autoslim-measure-link").symlink_to(tmp_path / "someone-else-old")

    removed = cleanup.remove_stale_temp_dirs(root=tmp_path)
    assert sorted(removed) == sorted(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "autoslim-measure-file",
        "autoslim-measure-link",
        "autoslim-measure-young",
        "autoslim-ray-busy",
        "someone-else-old",
    ]
    assert (tmp_path / "someone-else-old" / "weights.bin").is_file()


def test_dead_workers_leftovers_in_a_run_folder_go(tmp_path):
    host, dead = socket.gethostname(), 999_999_999
    for name in (
        f".baseline-{host}-{dead}",
        f"..baseline-{host}-{dead}.k2x9",
        f".baseline-{dead}",
        f".baseline-{host}-{os.getpid()}",
        f".baseline-{host}-1",
        f".baseline-other-host-{dead}",
        "baseline",
        "artifacts/trial_3",
        "artifacts/.trial_4.ab12",
        "artifacts/.trial_5.cd34",
    ):
        (tmp_path / name).mkdir(parents=True)
    aged(tmp_path / "artifacts" / ".trial_4.ab12", 7200)  # a save killed an hour ago
    (tmp_path / ".run.json.x1.tmp").write_text("{")
    aged(tmp_path / ".run.json.x1.tmp", 7200)

    removed = cleanup.remove_stale_run_files(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in removed) == sorted(
        [
            f".baseline-{host}-{dead}",
            f"..baseline-{host}-{dead}.k2x9",
            f".baseline-{dead}",
            "artifacts/.trial_4.ab12",
            ".run.json.x1.tmp",
        ]
    )
    # live pids (this one, init), another host's copy, the published baseline, a save in progress
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            f".baseline-{host}-{os.getpid()}",
            f".baseline-{host}-1",
            f".baseline-other-host-{dead}",
            "baseline",
            "artifacts",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == [
        ".trial_5.cd34",
        "trial_3",
    ]


def test_baseline_copies_are_named_after_host_and_pid():
    assert cleanup.baseline_copy_name() == f".baseline-{socket.gethostname()}-{os.getpid()}"
