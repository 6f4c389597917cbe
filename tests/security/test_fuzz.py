"""Property: any recipe text or layout record is a valid load or one AutoslimError line."""

from __future__ import annotations

import copy
import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import autoslim
from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from tests.security.tamper import read, tampered_copy

pytestmark = pytest.mark.hostile
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

WORDS = [
    "task",
    "entry",
    "params",
    "stages",
    "kind",
    "prune",
    "quantize",
    "storage",
    "distill",
    "default",
    "layers",
    "sparsity",
    "scope",
    "global",
    "bits",
    "granularity",
    "group",
    "group_size",
    "symmetric",
    "target",
    "threads",
    "schema_version",
    "seed",
    "re:.*",
    "autoslim.tasks.digits:make_task",
    "fp16",
]
HOSTILE = (
    st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | st.sampled_from(WORDS)
    | st.text(max_size=30)
)
TREES = st.recursive(
    HOSTILE,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=25,
)


@FUZZ
@given(tree=st.dictionaries(st.sampled_from(WORDS), TREES, max_size=6))
def test_fuzzed_recipe_loads_or_is_one_line(tree):
    folder = Path(tempfile.mkdtemp())
    try:
        path = folder / "recipe.yaml"
        path.write_text(yaml.safe_dump(tree, allow_unicode=True))
        try:
            assert isinstance(Recipe.load(path), Recipe)
        except AutoslimError as exc:
            assert "\n" not in str(exc)
    finally:
        shutil.rmtree(folder)


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzzed_yaml_text_loads_or_is_one_line(text):
    folder = Path(tempfile.mkdtemp())
    try:
        (folder / "recipe.yaml").write_text(text)
        try:
            Recipe.load(folder / "recipe.yaml")
        except AutoslimError as exc:
            assert "\n" not in str(exc)
    finally:
        shutil.rmtree(folder)


def _leaves(value, path=()):
    """Every path into a JSON value, containers included (they are replaced whole too)."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


def _replace(layout: dict, path: tuple, value) -> None:
    *parents, last = path
    node = layout
    for key in parents:
        node = node[key]
    node[last] = value


@pytest.mark.parametrize(
    "source", ["sym4_sparse", "asym3_bitmap", "codebook", "csr_int4", "bsr_fp32"]
)
def test_fuzzed_layout_loads_or_is_one_line(tmp_path_factory, artifacts, source):
    _, layout = read(artifacts[source])
    paths = [p for p in _leaves(layout) if p]

    @FUZZ
    @given(index=st.integers(0, len(paths) - 1), value=TREES)
    def check(index, value):
        if isinstance(value, float) and math.isnan(value):
            value = None  # JSON has no NaN: the writer would refuse it, not the loader
        folder = tmp_path_factory.mktemp("fuzz")
        shutil.rmtree(folder)
        mutate = lambda tensors, lay: _replace(lay, paths[index], copy.deepcopy(value))  # noqa: E731
        try:
            tampered_copy(artifacts[source], folder, mutate)
        except (ValueError, TypeError, OverflowError):
            return  # not writable as JSON metadata
        try:
            autoslim.load(folder)
        except AutoslimError as exc:
            assert "\n" not in str(exc)
        finally:
            shutil.rmtree(folder)

    json.dumps(layout)
    check()
