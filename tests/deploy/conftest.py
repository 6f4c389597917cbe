"""Two artifacts of the tiny digits task, built once for the deploy tests: fp32 and 8-bit."""

from __future__ import annotations

import pytest

from autoslim.artifact import save_artifact
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe


def _artifact(folder, stages):
    from tests.conftest import TINY_TASK

    recipe = Recipe.from_dict({"task": TINY_TASK, "stages": stages})
    return save_artifact(apply_recipe(recipe), recipe, folder / "artifact")


@pytest.fixture(scope="session")
def fp32_artifact(tmp_path_factory):
    return _artifact(tmp_path_factory.mktemp("fp32"), [])


@pytest.fixture(scope="session")
def int8_artifact(tmp_path_factory):
    return _artifact(tmp_path_factory.mktemp("int8"), [{"kind": "quantize", "default": 8}])
