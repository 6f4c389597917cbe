"""Hostile inputs: a model of the security suite's own, built artifacts, and a count.

Every case marked ``hostile`` is one distinct malformed or hostile input. The count of
those refused cleanly (one ``AutoslimError`` line, exit status 2, no marker file, nothing
half-written) is printed at the end of the run.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import autoslim
from autoslim.artifact import save_artifact
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.task import Split, Splits, Task
from autoslim.trust import unregister_task

ENTRY = "autoslim_security_model:make_task"
_refused: set[str] = set()


def build_model() -> nn.Module:
    """Conv, BatchNorm and Linear layers: every kind of tensor an artifact stores."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    )


def _splits() -> Splits:
    generator = torch.Generator().manual_seed(0)
    split = Split(
        torch.randn(32, 1, 8, 8, generator=generator),
        torch.randint(0, 10, (32,), generator=generator),
    )
    return Splits(split, split, split)


def make_task() -> Task:
    return Task(name="security", build_model=build_model, load_data=_splits)


@pytest.fixture(scope="session", autouse=True)
def registered_model():
    autoslim.register_task(ENTRY, make_task)
    yield
    unregister_task(ENTRY)


# One stage list per stored encoding: sparse formats of signed levels, packed asymmetric
# levels (dense and bitmap), a codebook, float16 in a sparse format, raw float32.
RECIPES = {
    "sym4_sparse": [
        {"kind": "prune", "scope": "global", "sparsity": 0.8},
        {"kind": "quantize", "default": 4},
    ],
    "asym3_bitmap": [
        {"kind": "prune", "scope": "global", "sparsity": 0.8},
        {"kind": "quantize", "default": 3, "symmetric": False},
    ],
    "asym5_dense": [
        {"kind": "quantize", "default": 5, "symmetric": False, "granularity": "per_tensor"}
    ],
    "codebook": [{"kind": "quantize", "default": 3, "grid_kind": "kmeans"}],
    "fp16_sparse": [
        {"kind": "prune", "scope": "global", "sparsity": 0.9},
        {"kind": "quantize", "default": "fp16"},
    ],
    "fp32": [],
    "csr_int4": [
        {"kind": "prune", "scope": "global", "sparsity": 0.9},
        {"kind": "quantize", "default": 4},
        {"kind": "storage", "default": "csr"},
    ],
    **{
        f"{fmt}_fp32": [
            {"kind": "prune", "scope": "global", "sparsity": 0.9},
            {"kind": "storage", "default": fmt},
        ]
        for fmt in ("csr", "csc", "coo", "bsr", "ellpack", "dia")
    },
}


def recipe_for(stages: list[dict]) -> Recipe:
    return Recipe.from_dict(
        {
            "task": {"entry": ENTRY},
            "stages": stages,
            "target": {"threads": 1, "batch_size": 4, "warmup": 1, "repeats": 3},
        }
    )


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> dict:
    """name → a saved artifact folder of the security model, one per encoding."""
    root = tmp_path_factory.mktemp("artifacts")
    task = make_task()
    out = {}
    for name, stages in RECIPES.items():
        recipe = recipe_for(stages)
        model = apply_recipe(recipe, task=task, model=build_model())
        out[name] = save_artifact(model, recipe, root / name, task=task)
    return out


def pytest_configure(config):
    config.addinivalue_line("markers", "hostile: one distinct malformed or hostile input")


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed and "hostile" in report.keywords:
        _refused.add(report.nodeid)


def pytest_terminal_summary(terminalreporter):
    if _refused:
        terminalreporter.write_line(f"hostile inputs refused cleanly: {len(_refused)} distinct")
