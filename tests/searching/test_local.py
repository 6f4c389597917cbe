"""End-to-end searches on the tiny task: outputs, export → apply, resume, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from autoslim.cli import main
from autoslim.run import RUN_FILE, load_run
from autoslim.searching import study as bookkeeping
from autoslim.searching.driver import Overrides, search
from autoslim.searching.record import INTERRUPTED

pytestmark = pytest.mark.slow


def completed(run) -> dict[int, tuple]:
    return {
        t.number: (tuple(t.values), tuple(sorted(t.params.items())))
        for t in run.study.get_trials(states=(TrialState.COMPLETE,))
    }


def test_search_writes_run_folder_and_exported_recipe_replays_exactly(
    tmp_path, experiment_file, capsys
):
    run = search(experiment_file(trials=3), out=tmp_path / "run", progress=False)
    for name in (
        "run.json",
        "study.journal",
        "trials.csv",
        "pareto.csv",
        "pareto.png",
        "summary.json",
    ):
        assert (run.path / name).is_file(), name
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["trials"]["COMPLETE"] + summary["trials"]["FAIL"] == 3
    assert summary["energy_source"] == "estimated"
    assert summary["notes"] == []  # no distill stage, so no teacher warning
    assert summary["labels"] == {"accuracy": "accuracy", "size_bytes": "size_bytes"}
    assert summary["baseline"]["size_bytes"] > 0 and "test_accuracy" in summary["baseline"]
    done = run.table().query("state == 'COMPLETE' and repeat_of.isna()")  # a repeat ran nothing
    phases = done[["compress_s", "save_s", "measure_s"]]
    assert (phases > 0).all().all()
    assert (phases.sum(axis=1) <= done["seconds"]).all()  # parts of the trial's own time

    assert main(["pareto", str(run.path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["objectives"] == {"accuracy": "maximize", "size_bytes": "minimize"}
    assert set(payload["baseline"]) == {"accuracy", "size_bytes"}
    assert payload["front"] and {"trial", "values"} <= set(payload["front"][0])
    assert main(["pareto", str(run.path), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("trial,") and len(lines) == 1 + len(payload["front"])

    chosen = payload["front"][-1]
    recipe_path = tmp_path / "recipe.yaml"
    assert (
        main(["export", str(run.path), "--trial", str(chosen["trial"]), "-o", str(recipe_path)])
        == 0
    )
    exported = yaml.safe_load(recipe_path.read_text())
    assert exported["provenance"]["trial"] == chosen["trial"]
    assert set(exported["provenance"]["versions"]) == {"autoslim", "torch", "optuna"}
    capsys.readouterr()
    assert main(["apply", str(recipe_path), "-o", str(tmp_path / "art"), "--json"]) == 0
    values = json.loads(capsys.readouterr().out)["values"]
    assert values["size_bytes"] == chosen["values"]["size_bytes"]
    assert abs(values["accuracy"] - chosen["values"]["accuracy"]) <= 0.005
    assert main(["evaluate", str(tmp_path / "art"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["values"]
    assert again["size_bytes"] == values["size_bytes"] and again["accuracy"] == values["accuracy"]


def test_select_rules_pick_from_the_run(tmp_path, experiment_file, capsys):
    run = search(experiment_file(trials=3), out=tmp_path / "run", progress=False)
    table = run.table()
    done = table[table["state"] == "COMPLETE"]
    smallest = int(done.sort_values(["size_bytes", "trial"]).iloc[0]["trial"])
    out = tmp_path / "small.yaml"
    assert main(["export", str(run.path), "--select", "min size_bytes", "-o", str(out)]) == 0
    assert yaml.safe_load(out.read_text())["provenance"]["trial"] == smallest
    capsys.readouterr()
    assert (
        main(
            [
                "export",
                str(run.path),
                "--select",
                "min size_bytes where size_bytes < 1",
                "-o",
                str(out),
            ]
        )
        == 2
    )
    assert "no trial satisfies" in capsys.readouterr().err


def test_rerun_resumes_and_refuses_a_changed_space(tmp_path, experiment_file, capsys):
    path = experiment_file(trials=2)
    first = completed(search(path, out=tmp_path / "run", progress=False))
    run = search(path, out=tmp_path / "run", overrides=Overrides(trials=4), progress=False)
    after = completed(run)
    assert len(run.study.trials) == 4
    assert {n: after[n] for n in first} == first  # nothing lost or redone

    changed = experiment_file(trials=4, space=[{"type": "quantize.weight", "bits": [4, 8]}])
    assert main(["search", str(changed), "--out", str(tmp_path / "run")]) == 2
    assert "space differ" in capsys.readouterr().err
    assert len(load_run(tmp_path / "run").study.trials) == 4


def test_a_crashing_trial_is_recorded_and_the_study_goes_on(tmp_path, experiment_file, monkeypatch):
    from autoslim.searching import evaluate

    real, calls = evaluate.measure_in_subprocess, []

    def flaky(path, target, **kw):
        calls.append(path)
        if len(calls) == 3:  # the baseline, trial 0, then trial 1 crashes
            raise RuntimeError("simulated out-of-memory\nsecond line")
        return real(path, target, **kw)

    monkeypatch.setattr(evaluate, "measure_in_subprocess", flaky)
    run = search(experiment_file(trials=3), out=tmp_path / "run", progress=False)
    states = {t.number: t.state for t in run.study.trials}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.FAIL, 2: TrialState.COMPLETE}
    assert run.study.trials[1].user_attrs["fail_reason"] == "RuntimeError: simulated out-of-memory"
    assert "recipe" in run.study.trials[1].user_attrs
    assert list(run.table()["fail_reason"])[1] == "RuntimeError: simulated out-of-memory"


def _csv_complete(out) -> set[int] | None:
    """Trial numbers trials.csv lists as COMPLETE; None before the first one is written."""
    if not (out / "trials.csv").exists():
        return None
    table = pd.read_csv(out / "trials.csv")
    return set(table.loc[table["state"] == "COMPLETE", "trial"].astype(int))


def test_sigkill_at_ten_random_moments_loses_nothing_and_the_tables_stay_current(
    tmp_path, experiment_file
):
    path, out = experiment_file(trials=12), tmp_path / "run"
    cmd = [sys.executable, "-m", "autoslim.cli", "search", str(path), "--out", str(out)]
    rng = random.Random(20240607)
    seen: dict = {}
    for _ in range(10):
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
        )
        # From the start-up (imports, the baseline, recovery) to a trial or two in: a fresh
        # process needs about 5 s to start and its first trial about 5 s more.
        time.sleep(rng.uniform(2.5, 9.0))
        assert proc.poll() is None, "the search finished before its last kill"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if not (out / RUN_FILE).exists():
            continue  # killed before the run folder existed
        run = load_run(out)
        now = completed(run)
        assert {n: now[n] for n in seen} == seen  # no completed trial lost or changed
        seen = now
        listed = _csv_complete(out)
        if listed is not None:
            done = run.study.get_trials(states=(TrialState.COMPLETE,))
            last = max(done, key=lambda t: t.datetime_complete).number if done else None
            assert listed <= set(now) and set(now) - listed <= {last}

    assert subprocess.run(cmd, capture_output=True).returncode == 0
    run = load_run(out)
    after = completed(run)
    assert {n: after[n] for n in seen} == seen
    finished = [
        t
        for t in run.study.trials
        if t.state in (TrialState.COMPLETE, TrialState.FAIL)
        and t.user_attrs.get("fail_reason") != INTERRUPTED
    ]
    assert len(finished) == 12
    assert not [t for t in run.study.trials if t.state == TrialState.RUNNING]
    assert _csv_complete(out) == set(after)
    # what the killed workers left in the run folder was cleaned at the next start
    assert not [p.name for p in out.iterdir() if "baseline-" in p.name]


def test_two_workers_started_together_on_one_run_folder_never_run_the_same_trial(
    tmp_path, experiment_file
):
    # One continuous parameter: two trials share parameters only if two samplers share a seed.
    space = [
        {
            "type": "prune.magnitude",
            "scopes": ["global"],
            "optional": False,
            "fine_tune_epochs": {"low": 0, "high": 0},
        }
    ]
    path, out = experiment_file(trials=8, space=space), tmp_path / "run"
    cmd = [sys.executable, "-m", "autoslim.cli", "search", str(path), "--out", str(out)]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]

    run = load_run(out)
    done = run.study.get_trials(states=(TrialState.COMPLETE,))
    fresh = [tuple(sorted(t.params.items())) for t in done if "repeat_of" not in t.user_attrs]
    assert len(done) >= 8 and len(fresh) == len(set(fresh))
    assert len({t.user_attrs["autoslim.pid"] for t in done}) == 2, (
        "both workers should have run trials"
    )
    slots = sorted((out / ".workers").glob("slot-*"))
    assert [p.name for p in slots] == ["slot-0", "slot-1"]  # distinct, and given back: files stay


def test_warm_start_enqueues_allocator_plans_as_first_trials(tmp_path, experiment_file):
    space = [{"type": "quantize.weight", "bits": [2, 4, 8, "fp32"], "optional": False}]
    path = experiment_file(
        trials=2, space=space, search={"trials": 2, "seed": 0, "warm_start": [0.1, 0.3]}
    )
    run = search(path, out=tmp_path / "run", progress=False)
    first, second = run.study.trials[0], run.study.trials[1]
    assert first.system_attrs.get("fixed_params") and second.system_attrs.get("fixed_params")
    widths = lambda t: [t.params[k] for k in sorted(t.params)]  # noqa: E731
    bits = lambda w: sum(32 if b == "fp32" else b for b in w)  # noqa: E731
    assert bits(widths(first)) < bits(widths(second))  # the tighter budget gets fewer bits
    assert first.state == TrialState.COMPLETE
    assert first.user_attrs["measured"]["size_bytes"] < second.user_attrs["measured"]["size_bytes"]


def test_a_uniform_warm_start_is_the_quantization_plan_alone(tmp_path, experiment_file):
    space = [
        {
            "type": "prune.magnitude",
            "scopes": ["global"],
            "fine_tune_epochs": {"low": 0, "high": 1},
        },
        {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"]},
    ]
    path = experiment_file(
        trials=1, space=space, search={"trials": 1, "seed": 0, "warm_start_uniform": [8]}
    )
    (trial,) = search(path, out=tmp_path / "run", progress=False).study.trials
    assert trial.params["prune.enabled"] is False and trial.params["quant.enabled"] is True
    assert {v for k, v in trial.params.items() if k.startswith("quant.bits.")} == {8}
    assert [s["kind"] for s in trial.user_attrs["recipe"]["stages"]] == ["quantize"]
    assert trial.user_attrs["recipe"]["stages"][0]["default"] == 8  # written as uniform 8-bit


def journal_study_with_a_running_trial(tmp_path):
    """A study on a journal file with one RUNNING trial marked as this host's."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(
        study_name="s", storage=storage, directions=["maximize", "minimize"]
    )
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.set_user_attr("autoslim.host", socket.gethostname())
    return study, storage, trial


def test_interrupted_trials_are_failed_and_their_params_queued_once(tmp_path):
    study, storage, trial = journal_study_with_a_running_trial(tmp_path)
    trial.set_user_attr("autoslim.pid", 2**22 + 12345)  # no such process
    assert bookkeeping.recover_interrupted(study, storage) == 1
    assert bookkeeping.recover_interrupted(study, storage) == 0
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["fail_reason"] == INTERRUPTED
    assert study.trials[1].system_attrs["fixed_params"] == study.trials[0].params


def test_a_trial_left_without_an_owner_is_recovered_once_its_grace_has_passed(tmp_path):
    # A process killed between asking for a trial and marking itself its owner (seen in CI:
    # the host attribute written, the pid not) left it RUNNING, and a re-run counted it as
    # another worker's and ran one trial short.
    study, storage, _ = journal_study_with_a_running_trial(tmp_path)  # the pid never written
    # young: another worker may be about to claim it
    assert bookkeeping.recover_interrupted(study, storage, grace_s=3600, wait=False) == 0
    assert study.trials[0].state == TrialState.RUNNING
    assert bookkeeping.recover_interrupted(study, storage, grace_s=0) == 1
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]
    assert study.trials[0].user_attrs["fail_reason"] == INTERRUPTED


def test_uniform_warm_start_plans_respect_each_layers_choices():
    from autoslim.searching.warm_start import uniform_params
    from autoslim.techniques.quantize import WeightQuantSpace

    component = WeightQuantSpace(bits=[2, 4, 8], layer_bits={"a": [8]}, optional=True)
    plans = uniform_params(component, ["a", "b"], [8, 4])
    assert plans == [
        {"quant.bits.a": 8, "quant.bits.b": 8, "quant.enabled": True}
    ]  # "a" cannot take 4


def test_search_notes_students_that_outscore_the_teacher_they_distil_from(
    tmp_path, experiment_file, capsys
):
    # The tiny baseline trains 3 epochs; 4 more (KD + CE) lift its uncompressed copy well
    # above it (0.93 against 0.86 val here), so its own baseline has little left to teach.
    space = [
        {
            "type": "distill",
            "optional": False,
            "alpha": {"low": 0.5, "high": 0.5},
            "temperature": {"low": 2.0, "high": 2.0},
        },
        {"type": "recover", "epochs": {"low": 4, "high": 4}, "lr": {"low": 3e-3, "high": 3e-3}},
    ]
    assert (
        main(
            ["search", str(experiment_file(trials=1, space=space)), "--out", str(tmp_path / "run")]
        )
        == 0
    )
    notes = json.loads((tmp_path / "run" / "summary.json").read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith(
        "1 of 1 trials reach the accuracy of the distill teacher"
    )
    assert f"note: {notes[0]}" in capsys.readouterr().out
