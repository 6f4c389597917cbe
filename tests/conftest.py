"""Shared fixtures: a private baseline cache and a tiny digits task that trains in seconds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Test helpers shared across packages (user_models.py) import as top-level modules;
# pytest's importlib mode does not put this folder on the path by itself.
sys.path.insert(0, str(Path(__file__).resolve().parent))

TINY_TASK = {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 3}}


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep baselines trained by tests out of the user's cache, shared across tests."""
    old = os.environ.get("AUTOSLIM_CACHE")
    os.environ["AUTOSLIM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("AUTOSLIM_CACHE", None)
    else:
        os.environ["AUTOSLIM_CACHE"] = old


@pytest.fixture
def tiny_task_ref() -> dict:
    return {"entry": TINY_TASK["entry"], "params": dict(TINY_TASK["params"])}


def write_experiment(folder, *, name="tiny", trials=3, space=None, objectives=None, **extra):
    """A real experiment on the tiny task: each trial takes a few seconds."""
    import yaml

    experiment = {
        "name": name,
        "task": {"entry": TINY_TASK["entry"], "params": dict(TINY_TASK["params"])},
        "space": space
        if space is not None
        else [
            {
                "type": "prune.magnitude",
                "scopes": ["global"],
                "fine_tune_epochs": {"low": 0, "high": 1},
            },
            {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"], "per_layer": False},
        ],
        "objectives": objectives or {"accuracy": "maximize", "size_bytes": "minimize"},
        "search": {"trials": trials, "seed": 0, "startup_trials": 2},
        "target": {"threads": 1, "batch_size": 16, "warmup": 1, "repeats": 3},
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


@pytest.fixture
def experiment_file(tmp_path):
    """``experiment_file(**overrides)`` writes a tiny experiment YAML and returns its path."""
    return lambda **kw: write_experiment(tmp_path, **kw)
