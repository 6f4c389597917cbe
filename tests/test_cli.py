"""Every listed bad input ends in one line on stderr, exit status 2, nothing written."""

from __future__ import annotations

import subprocess
import sys

import pytest

from autoslim.cli import main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"space": [{"type": "prune.telepathy"}]}, "unknown component 'prune.telepathy'"),
        (
            {"space": [{"type": "quantize.weight", "bits": [16]}]},
            "bits.0: Input should be 2, 3, 4, 5, 6, 8, 'fp16', 'bf16' or 'fp32'",
        ),
        (
            {"space": [{"type": "quantize.weight", "layer_bits": {"features.99": [8]}}]},
            "unknown layer 'features.99'",
        ),
        (
            {"space": [{"type": "quantize.weight", "layers": "head.*"}]},
            "layer regex 'head.*' matches no layer",
        ),
        (
            {"objectives": {"accuracy": "maximize", "speed": "minimize"}},
            "unknown objective 'speed'",
        ),
        ({"objectives": {"accuracy": "upward"}}, "objectives.accuracy"),
        ({"constraints": [{"objective": "latency_ms", "max": 1}]}, "not an objective"),
        ({"search": {"trials": 0}}, "search.trials"),
        ({"surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"task": {"entry": "autoslim.tasks.nowhere:make_task"}}, "is not trusted"),
        (
            {"task": {"entry": "autoslim.tasks.digits:make_task", "params": {"width": "four"}}},
            "could not build its model",
        ),
        (
            {"space": [{"type": "prune.magnitude", "sparsity": {"low": 0.5, "high": 2.0}}]},
            "sparsity range must lie in [0, 1)",
        ),
        (
            {"objectives": {"accuracy": "minimize"}},
            "objective 'accuracy' must be maximized, not minimized",
        ),
        ({"objectives": {"accuracy": "maximize", "size_bytes": "maximize"}}, "must be minimized"),
    ],
)
def test_bad_experiments_are_rejected_before_anything_is_written(
    capsys, tmp_path, experiment_file, kwargs, needle
):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "search", str(experiment_file(**kwargs)), "--out", str(out))
    assert_one_line_error(code, err, needle)
    assert not out.exists()


def test_a_trusted_entry_that_cannot_be_imported_is_one_line(capsys, tmp_path, experiment_file):
    path = experiment_file(task={"entry": "autoslim.tasks.nowhere:make_task"})
    code, _, err = run_cli(
        capsys, "search", str(path), "--out", str(tmp_path / "run"), "--trust-task"
    )
    assert_one_line_error(code, err, "cannot import task module 'autoslim.tasks.nowhere'")
    assert not (tmp_path / "run").exists()


def test_missing_and_malformed_files(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search", str(tmp_path / "absent.yaml"))
    assert_one_line_error(code, err, "experiment file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nobjectives: {accuracy: maximize\n")
    code, _, err = run_cli(capsys, "search", str(bad))
    assert_one_line_error(code, err, "malformed YAML")
    code, _, err = run_cli(capsys, "search", str(tmp_path / "absent.yaml"), "--trials", "many")
    assert_one_line_error(code, err, "invalid int value")


def test_apply_rejects_bad_recipes_and_writes_nothing(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "task: {entry: 'autoslim.tasks.digits:make_task', params: {width: 4, epochs: 3}}\n"
        "stages:\n- {kind: quantize, default: 16}\n"
    )
    code, _, err = run_cli(capsys, "apply", str(recipe), "-o", str(tmp_path / "art"))
    assert_one_line_error(code, err, "Input should be 2, 3, 4, 5, 6, 8, 'fp16', 'bf16' or 'fp32'")
    recipe.write_text(
        "task: {entry: 'autoslim.tasks.digits:make_task', params: {width: 4, epochs: 3}}\n"
        "stages:\n- {kind: quantize, layers: {not_a_layer: 4}}\n"
    )
    code, _, err = run_cli(capsys, "apply", str(recipe), "-o", str(tmp_path / "art"))
    assert_one_line_error(code, err, "unknown layer 'not_a_layer'")
    code, _, err = run_cli(
        capsys, "apply", str(tmp_path / "none.yaml"), "-o", str(tmp_path / "art")
    )
    assert_one_line_error(code, err, "recipe file not found")
    assert not (tmp_path / "art").exists()


def test_pareto_export_evaluate_reject_non_runs(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pareto", str(tmp_path))
    assert_one_line_error(code, err, "not an autoslim run folder")
    code, _, err = run_cli(
        capsys, "export", str(tmp_path), "--trial", "0", "-o", str(tmp_path / "r.yaml")
    )
    assert_one_line_error(code, err, "not an autoslim run folder")
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert_one_line_error(code, err, "not an autoslim artifact")
    code, _, err = run_cli(capsys, "export", str(tmp_path), "-o", "r.yaml")
    assert_one_line_error(code, err, "export needs one --trial or one --select")


def test_real_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "autoslim.cli", "search", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: experiment file not found: {tmp_path / 'nope.yaml'}"
    assert "Traceback" not in proc.stderr


def test_flag_values_are_validated_like_the_file(capsys, tmp_path, experiment_file):
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, "search", str(experiment_file()), "--trials", "-1", "--out", str(out)
    )
    assert_one_line_error(code, err, "search settings (--trials/--timeout/--seed): trials")
    assert not out.exists()


def test_search_refuses_a_foreign_folder_and_another_experiments_run(
    capsys, tmp_path, experiment_file
):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_text("meow")
    code, _, err = run_cli(capsys, "search", str(experiment_file(trials=1)), "--out", str(foreign))
    assert_one_line_error(code, err, "is not empty and holds no autoslim run")
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]
    run_dir = tmp_path / "run"
    (run_dir).mkdir()
    (run_dir / "run.json").write_text(
        '{"study_name": "tiny", "objectives": {}, "metric_name": "accuracy"}'
    )
    code, _, err = run_cli(
        capsys, "search", str(experiment_file(name="other", trials=1)), "--out", str(run_dir)
    )
    assert_one_line_error(code, err, "holds the run of experiment 'tiny', not 'other'")


def test_corrupt_run_json_and_export_onto_a_directory(capsys, tmp_path):
    (tmp_path / "run.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, "pareto", str(tmp_path))
    assert_one_line_error(code, err, "missing study_name, objectives, metric_name")


def test_version_and_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "autoslim", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0
    assert done.stdout.startswith("autoslim ")
    assert "torch " in done.stdout and "optuna " in done.stdout


def test_every_flag_has_help_and_every_command_an_example():
    import argparse

    from autoslim.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        assert "examples:" in (sub.epilog or ""), name
        for action in sub._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"{name} {action.dest} has no help text"
