"""``autoslim dashboard``: optuna-dashboard shows a real run's objective names and
constraints, and without the extra the command says how to install it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from autoslim.cli import main
from autoslim.results.dashboard import DashboardView, constraint_list
from tests.results.test_report import tiny_run


def test_without_the_extra_one_line_names_the_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # import fails as if absent
    assert main(["dashboard", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install "autoslim[dashboard]"' in err, err
    assert "Traceback" not in err


def test_constraint_list_keeps_the_experiment_order():
    attrs = {"constraints:b.max": 2.0, "other": 1, "constraints:a.min_drop": -1.0}
    assert constraint_list(attrs, ["a.min_drop", "b.max"]) == [-1.0, 2.0]
    assert constraint_list(attrs) == [2.0, -1.0]  # recorded order where none is given
    assert constraint_list({"other": 1}) == []


def test_the_view_adds_the_list_without_touching_the_storage():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    trial.set_constraint("accuracy.max_drop", -0.25)
    study.tell(trial, 1.0)
    study.tell(study.ask(), 2.0)  # unconstrained: shown as recorded
    view = DashboardView(storage, ["accuracy.max_drop"])
    study_id = storage.get_study_id_from_name(study.study_name)
    shown = view.get_all_trials(study_id, deepcopy=False)
    assert [t.system_attrs.get("constraints") for t in shown] == [[-0.25], None]
    assert view.get_trial(shown[0]._trial_id).system_attrs["constraints"] == [-0.25]
    assert "constraints" not in storage.get_all_trials(study_id, deepcopy=False)[0].system_attrs
    # what Optuna reads is unchanged: feasibility is the same in both forms
    assert shown[0].constraints["accuracy.max_drop"] == -0.25
    assert view.get_study_directions(study_id) == study.directions  # the rest passes through


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _wait_for(server: subprocess.Popen, url: str, log: Path, seconds: float = 60.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"autoslim dashboard exited {server.returncode}: {log.read_text()}")
        try:
            return _get(url)
        except OSError:  # not listening yet
            time.sleep(0.05)
    pytest.fail(f"autoslim dashboard did not answer {url} within {seconds} s")


@pytest.mark.slow
def test_dashboard_serves_objective_names_and_constraints(tmp_path_factory, tmp_path):
    pytest.importorskip("optuna_dashboard")
    run = tiny_run(tmp_path_factory)
    port = _free_port()
    log = tmp_path / "dashboard.log"  # a file, not a pipe: request logs can never block it
    with open(log, "w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "autoslim", "dashboard", str(run.path), "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}/api/studies"
        (summary,) = _wait_for(server, base, log)["study_summaries"]
        detail = _get(f"{base}/{summary['study_id']}")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"http://127.0.0.1:{port}/" in log.read_text()  # where to point the browser
    assert detail["objective_names"] == list(run.objectives) == ["accuracy", "size_bytes"]
    assert detail["directions"] == ["maximize", "minimize"]
    recorded = {t.number: t.constraints for t in run.study.get_trials()}
    assert len(detail["trials"]) == len(recorded) == 2
    for trial in detail["trials"]:
        # the dashboard marks feasibility from this list; Optuna keeps the named form
        assert trial["constraints"] == [recorded[trial["number"]]["accuracy.max_drop"]]
        assert all(value <= 0 for value in trial["constraints"])
