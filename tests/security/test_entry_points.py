"""A recipe, experiment or artifact that names code the user has not trusted runs nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import autoslim
from autoslim.cli import main
from autoslim.errors import AutoslimError
from tests.conftest import TINY_TASK, write_experiment

MARKER = "pwned"
# Each entry, called with its params, would leave the marker file in the working folder.
ATTACKS = {
    "os:system": {"command": f"touch {MARKER}"},
    "subprocess:run": {"args": ["touch", MARKER]},
    "subprocess:getoutput": {"cmd": f"touch {MARKER}"},
    "os:popen": {"cmd": f"touch {MARKER}"},
    "runpy:run_path": {"path_name": "evil.py"},
    "importlib:import_module": {"name": "evil"},
    "autoslim.cli:main": {"argv": ["export", "runs/x", "--trial", "0", "-o", MARKER]},
    "builtins:exec": {"source": f"open('{MARKER}', 'w')"},
}


@pytest.fixture
def attacked(tmp_path, monkeypatch):
    """A working folder holding the payload modules the attacks would reach."""
    (tmp_path / "evil.py").write_text(f"open({MARKER!r}, 'w').close()\n")
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    assert not (tmp_path / MARKER).exists(), "the attack ran"


def _recipe(folder: Path, entry: str, params: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({"task": {"entry": entry, "params": params}, "stages": []}))
    return path


def _one_line(capsys, argv: list[str], needle: str = "is not trusted") -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


@pytest.mark.hostile
@pytest.mark.parametrize("entry", sorted(ATTACKS))
def test_apply_refuses(capsys, attacked, entry):
    _one_line(capsys, ["apply", str(_recipe(attacked, entry, ATTACKS[entry])), "-o", "out"])
    assert not (attacked / "out").exists()


@pytest.mark.hostile
@pytest.mark.parametrize("entry", sorted(ATTACKS))
def test_evaluate_refuses(capsys, attacked, entry):
    folder = attacked / "artifact"
    folder.mkdir()
    _recipe(folder, entry, ATTACKS[entry])
    (folder / "weights.safetensors").write_bytes(b"")
    _one_line(capsys, ["evaluate", str(folder)])


@pytest.mark.hostile
@pytest.mark.parametrize("entry", sorted(ATTACKS))
def test_load_refuses(attacked, entry):
    folder = attacked / "artifact"
    folder.mkdir()
    _recipe(folder, entry, ATTACKS[entry])
    (folder / "weights.safetensors").write_bytes(b"")
    with pytest.raises(AutoslimError, match="is not trusted"):
        autoslim.load(folder)


@pytest.mark.hostile
@pytest.mark.parametrize("entry", sorted(ATTACKS))
def test_search_refuses(capsys, attacked, entry):
    path = write_experiment(attacked, trials=1)
    spec = yaml.safe_load(path.read_text())
    spec["task"] = {"entry": entry, "params": ATTACKS[entry]}
    path.write_text(yaml.safe_dump(spec))
    _one_line(capsys, ["search", str(path), "--out", "run"])
    assert not (attacked / "run").exists()


@pytest.mark.hostile
@pytest.mark.parametrize("command", ["sensitivity", "apply"])
def test_a_teacher_or_sensitivity_entry_is_refused_too(capsys, attacked, command):
    if command == "sensitivity":
        path = write_experiment(attacked, trials=1)
        spec = yaml.safe_load(path.read_text())
        spec["task"] = {"entry": "os:system", "params": ATTACKS["os:system"]}
        path.write_text(yaml.safe_dump(spec))
        _one_line(capsys, ["sensitivity", str(path), "--out", "s"])
        return
    recipe = attacked / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "task": dict(TINY_TASK),
                "stages": [
                    {
                        "kind": "distill",
                        "teacher": {"entry": "os:system", "params": ATTACKS["os:system"]},
                    }
                ],
            }
        )
    )
    _one_line(capsys, ["apply", str(recipe), "-o", "out"])


def _artifact_with_module(tmp_path: Path, artifacts: dict) -> Path:
    """The silent variant: a real artifact whose recipe names a module shipped beside it,
    which would run its payload and then return the real task."""
    import shutil

    folder = tmp_path / "artifact"
    shutil.copytree(artifacts["fp32"], folder)
    (folder / "evilmod.py").write_text(
        f"open({MARKER!r}, 'w').close()\nfrom tests.security.conftest import make_task\n"
    )
    text = (
        (folder / "recipe.yaml")
        .read_text()
        .replace("autoslim_security_model:make_task", "evilmod:make_task")
    )
    (folder / "recipe.yaml").write_text(text)
    return folder


@pytest.mark.hostile
@pytest.mark.parametrize("trust", [False, True])
def test_a_module_beside_the_artifact_is_never_imported(tmp_path, artifacts, trust):
    """``cd artifact && autoslim evaluate .``, as a user would type it, in a new process:
    refused untrusted; trusted, the folder is still not on sys.path, so nothing runs."""
    folder = _artifact_with_module(tmp_path, artifacts)
    cmd = [
        sys.executable,
        "-c",
        "import sys; from autoslim.cli import main; sys.exit(main(sys.argv[1:]))",
        "evaluate",
        ".",
        *(["--trust-task"] if trust else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    # The console script's sys.path[0] is its bin folder; -c stands in for it once '' is gone.
    cmd[2] = "import sys; del sys.path[0]; " + cmd[2]
    proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert ("is not trusted" if not trust else "cannot import task module 'evilmod'") in lines[0]
    assert not (folder / MARKER).exists()


def test_a_registered_factory_loads_with_nothing_imported(artifacts):
    import shutil
    import tempfile

    from tests.security.conftest import build_model

    folder = Path(tempfile.mkdtemp()) / "a"
    shutil.copytree(artifacts["fp32"], folder)
    text = (
        (folder / "recipe.yaml")
        .read_text()
        .replace("autoslim_security_model", "not_installed_anywhere")
    )
    (folder / "recipe.yaml").write_text(text)
    with pytest.raises(AutoslimError, match="is not trusted"):
        autoslim.load(folder)
    model = autoslim.load(folder, model_factory=build_model)
    assert model(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 10)
    shutil.rmtree(folder.parent)


def test_trust_task_lets_a_trusted_entry_run(tmp_path, artifacts):
    """Trust is what the flag says: with it the entry is imported (and only then)."""
    import shutil

    folder = tmp_path / "a"
    shutil.copytree(artifacts["fp32"], folder)
    text = (
        (folder / "recipe.yaml")
        .read_text()
        .replace("autoslim_security_model:make_task", "tests.security.conftest:make_task")
    )
    (folder / "recipe.yaml").write_text(text)
    with pytest.raises(AutoslimError, match="is not trusted"):
        autoslim.load(folder)
    assert autoslim.load(folder, trust_task=True) is not None
    with pytest.raises(AutoslimError, match="is not trusted"):  # the trust lasted one call
        autoslim.load(folder)
