"""Every shipped experiment file and search space loads and validates, without training.

User examples live in ``experiments/``, the benchmarks' own configurations in
``benchmarks/experiments/``; the preset search spaces they name live in ``autoslim/search_spaces/``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_FILES = sorted(
    [
        *ROOT.joinpath("experiments").glob("*.yaml"),
        *ROOT.joinpath("benchmarks", "experiments").glob("*.yaml"),
    ]
)
SPACE_FILES = sorted(ROOT.joinpath("autoslim", "search_spaces").glob("*.yaml"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def test_the_folders_hold_experiments_and_spaces():
    assert (ROOT / "experiments" / "digits.yaml") in EXPERIMENT_FILES  # the README's quick start
    assert any(
        p.parent.name == "experiments" and p.parent.parent.name == "benchmarks"
        for p in EXPERIMENT_FILES
    )
    assert SPACE_FILES


@pytest.mark.parametrize("path", EXPERIMENT_FILES, ids=_ids(EXPERIMENT_FILES))
def test_experiment_file_validates(path: Path):
    from autoslim.searching.experiment import load_experiment, space_presets

    experiment, space = load_experiment(path)
    if isinstance(experiment.space, str):
        # A preset, or a path relative to the experiment file: resolves from any folder.
        assert experiment.space in space_presets() or (path.parent / experiment.space).is_file(), (
            f"{path.name}: space {experiment.space} not found"
        )
    assert space.spec(), f"{path.name}: empty search space"
    module = experiment.task.entry.partition(":")[0]
    assert importlib.util.find_spec(module) is not None, (
        f"{path.name}: task module {module} not found"
    )


@pytest.mark.parametrize("path", SPACE_FILES, ids=_ids(SPACE_FILES))
def test_search_space_file_loads(path: Path):
    from autoslim.space import SearchSpace

    assert SearchSpace.load(path).spec()
