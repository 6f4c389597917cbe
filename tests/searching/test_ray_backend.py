"""The Ray Tune backend: outcome recording (unit) and real Ray clusters (slow)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

pytest.importorskip("ray")

from autoslim.run import load_run  # noqa: E402
from autoslim.searching.evaluate import SearchContext  # noqa: E402
from autoslim.searching.experiment import load_experiment  # noqa: E402
from autoslim.searching.ray_backend import WORKER_DIED, StudySearcher  # noqa: E402
from autoslim.searching.record import ATTR_PREFIX, INTERRUPTED  # noqa: E402
from autoslim.task import load_task  # noqa: E402

HERE = Path(__file__).parent


# ----------------------------------------------------------------- searcher (unit)


@pytest.fixture
def searcher(tmp_path, experiment_file):
    """A StudySearcher on an in-memory study of the tiny experiment (no Ray needed)."""
    experiment, space = load_experiment(experiment_file(trials=4))
    task = load_task(experiment.task)
    ctx = SearchContext(
        experiment,
        space,
        task,
        task.build_model(),
        {"accuracy": 0.9, "size_bytes": 1000.0},
        tmp_path,
        0,
    )
    study = optuna.create_study(
        study_name="tiny",
        directions=["maximize", "minimize"],
        storage=optuna.storages.InMemoryStorage(),
    )
    return StudySearcher(study, ctx)


def test_with_early_stopping_on_each_trial_ships_the_current_stopping_rule(
    tmp_path, experiment_file
):
    from autoslim.searching.early_stop import ParetoStopper

    path = experiment_file(
        trials=4,
        search={"trials": 4, "early_stopping": {"enabled": True}},
        constraints=[{"objective": "accuracy", "max_drop": 0.05}],
    )
    experiment, space = load_experiment(path)
    task = load_task(experiment.task)
    ctx = SearchContext(
        experiment,
        space,
        task,
        task.build_model(),
        {"accuracy": 0.9, "size_bytes": 1000.0},
        tmp_path,
        0,
    )
    study = optuna.create_study(study_name="tiny", directions=["maximize", "minimize"])
    config = StudySearcher(study, ctx).suggest("t0")
    assert isinstance(config["stopper"], ParetoStopper) and config[
        "stopper"
    ].bound == pytest.approx(0.85)


def result_for(
    config: dict, status: str = "complete", values: dict | None = None, reason: str = ""
) -> dict:
    values = values if values is not None else {"accuracy": 0.8, "size_bytes": 500.0}
    return {
        "autoslim_outcome": json.dumps({"status": status, "values": values, "reason": reason}),
        "autoslim_attrs": json.dumps({"recipe": {"stages": []}}),
        "autoslim_node": "node-a",
        "autoslim_started": 1.0,
        "autoslim_finished": 2.0,
    }


def trial_of(searcher: StudySearcher, number: int) -> optuna.trial.FrozenTrial:
    return next(t for t in searcher._ot_study.get_trials() if t.number == number)


def test_suggest_asks_the_study_and_ships_number_and_params(searcher):
    config = searcher.suggest("t0")
    trial = trial_of(searcher, config["number"])
    assert trial.state == TrialState.RUNNING
    assert config["params"] == trial.params and config["params"]  # define-by-run space replayed
    assert trial.user_attrs[ATTR_PREFIX + "pid"] == os.getpid()
    assert config["stopper"] is None  # early stopping is off in this experiment


def test_completed_outcome_is_told_with_values_attrs_and_constraints(searcher):
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", result_for(config))
    trial = trial_of(searcher, config["number"])
    assert trial.state == TrialState.COMPLETE and trial.values == [0.8, 500.0]
    assert trial.user_attrs["measured"] == {"accuracy": 0.8, "size_bytes": 500.0}
    assert trial.user_attrs["recipe"] == {"stages": []}
    assert trial.user_attrs[ATTR_PREFIX + "node"] == "node-a"


def test_nan_objective_becomes_a_failure_with_reason_never_a_nan_tell(searcher):
    config = searcher.suggest("t0")
    searcher.on_trial_complete(
        "t0", result_for(config, values={"accuracy": math.nan, "size_bytes": 10.0})
    )
    trial = trial_of(searcher, config["number"])
    assert trial.state == TrialState.FAIL and trial.values is None
    assert "accuracy" in trial.user_attrs["fail_reason"]


def test_failed_and_stopped_outcomes_keep_their_reasons(searcher):
    first, second = searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", result_for(first, "failed", {}, "TrialFailed: loss is nan"))
    searcher.on_trial_complete("b", result_for(second, "stopped", {}, "cannot reach the front"))
    assert (
        trial_of(searcher, first["number"]).user_attrs["fail_reason"] == "TrialFailed: loss is nan"
    )
    stopped = trial_of(searcher, second["number"])
    assert (
        stopped.state == TrialState.PRUNED
        and stopped.user_attrs["stop_reason"] == "cannot reach the front"
    )


def test_duplicate_completion_is_ignored_and_counted(searcher):
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", result_for(config))
    searcher.on_trial_complete(
        "t0", result_for(config, values={"accuracy": 0.1, "size_bytes": 1.0})
    )
    assert searcher.duplicates == 1
    assert trial_of(searcher, config["number"]).values == [0.8, 500.0]


def test_worker_error_fails_the_trial_with_rays_reason(searcher):
    config = searcher.suggest("t0")
    searcher.on_trial_complete("t0", None, error=True)
    assert trial_of(searcher, config["number"]).state == TrialState.RUNNING  # reason pending
    searcher.fail("t0", f"{WORKER_DIED}: actor died")
    trial = trial_of(searcher, config["number"])
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"].endswith("actor died")


def test_abandoned_trials_are_failed_as_interrupted_and_requeued_once(searcher):
    config = searcher.suggest("t0")
    searcher.abandon_unfinished()
    searcher.abandon_unfinished()  # idempotent
    trials = searcher._ot_study.get_trials()
    assert trial_of(searcher, config["number"]).user_attrs["fail_reason"] == INTERRUPTED
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == config["params"]


# ----------------------------------------------------------------- real Ray (slow)


def ray_experiment(experiment_file, trials: int, **ray_settings):
    return experiment_file(
        trials=trials,
        search={
            "trials": trials,
            "seed": 0,
            "startup_trials": 2,
            "ray": {"cpus_per_trial": 1, **ray_settings},
        },
    )


def env_with_tests_on_path() -> dict:
    """Ray workers inherit the driver's environment: this lets them import test tasks."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH", "")]))
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def search_cmd(path, out, *extra) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoslim.cli",
        "search",
        str(path),
        "--out",
        str(out),
        "--backend",
        "ray",
        *extra,
    ]


def finished_trials(run) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in run.study.trials
        if t.state in (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
        and t.user_attrs.get("fail_reason") != INTERRUPTED
    ]


@pytest.mark.slow
def test_two_node_cluster_runs_trials_at_once_and_writes_a_normal_run_folder(
    tmp_path, experiment_file, capsys
):
    from ray.cluster_utils import Cluster

    env = env_with_tests_on_path()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        proc = subprocess.run(
            search_cmd(
                ray_experiment(experiment_file, 2, max_concurrent=2),
                out,
                "--address",
                cluster.address,
            ),
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    finally:
        cluster.shutdown()
    run = load_run(out)
    done = [t for t in run.study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    assert len({t.user_attrs[ATTR_PREFIX + "node"] for t in done}) == 2  # both nodes worked
    windows = sorted(tuple(t.user_attrs[ATTR_PREFIX + "window"]) for t in done)
    assert any(b[0] < a[1] for a, b in zip(windows, windows[1:], strict=False)), (
        "no two trials ran at once"
    )

    from autoslim.cli import main

    assert main(["pareto", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["front"] and set(payload["front"][0]["values"]) == {"accuracy", "size_bytes"}


@pytest.mark.slow
def test_sigkill_of_the_ray_driver_then_rerun_keeps_every_completed_trial_once(
    tmp_path, experiment_file
):
    path, out = ray_experiment(experiment_file, 4, max_concurrent=1), tmp_path / "run"
    env = env_with_tests_on_path()
    proc = subprocess.Popen(
        search_cmd(path, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    before: dict = {}
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None and len(before) < 2:
        time.sleep(1)
        try:
            before = {
                t.number: t.values
                for t in load_run(out).study.trials
                if t.state == TrialState.COMPLETE
            }
        except Exception:  # noqa: BLE001 — the run folder may be half-created
            continue
    assert proc.poll() is None, "search finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_for_ray_to_exit(proc.pid)

    rerun = subprocess.run(
        search_cmd(path, out), capture_output=True, text=True, env=env, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    run = load_run(out)
    after = {t.number: t.values for t in run.study.trials if t.state == TrialState.COMPLETE}
    assert {n: after[n] for n in before} == before  # nothing completed was lost or redone
    assert len(finished_trials(run)) == 4
    assert not [t for t in run.study.trials if t.state == TrialState.RUNNING]
    numbers = [t.number for t in run.study.trials]
    assert len(numbers) == len(set(numbers))


def _wait_for_ray_to_exit(driver_pid: int, seconds: float = 30) -> None:
    """Ray's reaper stops a dead driver's local cluster; give it a moment."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "ppid,command"], capture_output=True, text=True).stdout
        if not any(
            line.split(None, 1)[0] == str(driver_pid)
            for line in ps.splitlines()[1:]
            if line.strip()
        ):
            return
        time.sleep(1)


@pytest.mark.slow
@pytest.mark.parametrize("retries", [1, 0])
def test_worker_killed_mid_trial_is_retried_or_failed_and_the_study_finishes(
    tmp_path, experiment_file, retries
):
    marker = tmp_path / "killed-once"
    space = [
        {
            "type": "prune.magnitude",
            "scopes": ["global"],
            "optional": False,
            "fine_tune_epochs": {"low": 1, "high": 1},
        }
    ]
    path = experiment_file(
        trials=2,
        space=space,
        task={"entry": "killer_task:make_task", "params": {"marker": str(marker)}},
        search={
            "trials": 2,
            "seed": 0,
            "startup_trials": 2,
            "ray": {"cpus_per_trial": 1, "max_concurrent": 1, "max_retries": retries},
        },
    )
    out = tmp_path / "run"
    # a test task, not bundled: trusted for this command (the Ray workers inherit the trust)
    proc = subprocess.run(
        search_cmd(path, out, "--trust-task"),
        capture_output=True,
        text=True,
        env=env_with_tests_on_path(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.exists(), "the worker was never killed"
    run = load_run(out)
    states = sorted(t.state.name for t in finished_trials(run))
    assert len(states) == 2 and not [t for t in run.study.trials if t.state == TrialState.RUNNING]
    if retries:
        assert states == ["COMPLETE"] * 2
    else:
        failed = [t for t in run.study.trials if t.state == TrialState.FAIL]
        assert len(failed) == 1 and failed[0].user_attrs["fail_reason"].startswith(WORKER_DIED)


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("127.0.0.1:1", "cannot connect to Ray at 127.0.0.1:1"),
        ("nonsense", "--address must be HOST:PORT"),
    ],
)
def test_a_wrong_address_is_one_line_exit_2_and_writes_no_run_folder(
    tmp_path, experiment_file, capsys, address, message
):
    from autoslim.cli import main

    out = tmp_path / "run"
    assert (
        main(
            [
                "search",
                str(experiment_file(trials=1)),
                "--out",
                str(out),
                "--backend",
                "ray",
                "--address",
                address,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {message}") and "\n" not in err
    assert not out.exists()


def test_without_an_address_ray_starts_its_own_instance(monkeypatch):
    """Plain ray.init() would join whatever cluster `ray start` left on this machine."""
    from autoslim.searching.ray_backend import ray_address

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address(None) == "local"
    assert ray_address("10.0.0.5:6379") == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert ray_address(None) is None  # Ray reads RAY_ADDRESS itself
