"""Storage policy: settled per experiment, recorded in the recipe, absent means smallest."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from autoslim.recipe import Recipe, Target
from autoslim.searching.evaluate import suggest_recipe
from autoslim.sparse.policy import policy_of, settle_storage_policy


def test_an_unset_policy_settles_to_smallest_because_latency_ties():
    assert settle_storage_policy(Target()).storage_policy == "smallest"


def test_an_explicit_policy_wins_over_the_objectives():
    target = Target(storage_policy="smallest")
    assert settle_storage_policy(target) is target


def test_a_recipe_without_a_policy_reads_as_smallest_and_dumps_as_before():
    assert policy_of(Target()) == "smallest"
    # Unset stays out of dumps: experiment fingerprints and old recipes are unchanged.
    assert "storage_policy" not in Target().model_dump(mode="json")
    assert (
        "storage_policy"
        not in Target.model_validate_json(Target().model_dump_json()).model_fields_set
    )


def test_the_policy_round_trips_through_recipe_yaml(tiny_task_ref):
    recipe = Recipe.from_dict({"task": tiny_task_ref, "target": {"storage_policy": "fastest"}})
    assert "storage_policy: fastest" in recipe.to_yaml()
    assert Recipe.from_dict(recipe.to_dict()).target.storage_policy == "fastest"
    with pytest.raises(Exception, match="storage_policy"):
        Recipe.from_dict({"task": tiny_task_ref, "target": {"storage_policy": "quickest"}})


def test_each_trial_recipe_records_the_settled_policy(tiny_task_ref):
    experiment = SimpleNamespace(
        task=Recipe.from_dict({"task": tiny_task_ref}).task,
        target=Target(threads=1),
        objectives={"accuracy": "maximize", "latency_ms": "minimize"},
    )
    ctx = SimpleNamespace(
        experiment=experiment,
        seed=3,
        info=None,
        space=SimpleNamespace(suggest=lambda trial, info: []),
    )
    recipe = suggest_recipe(trial=None, ctx=ctx)
    assert recipe.target == Target(threads=1, storage_policy="smallest")
    assert recipe.to_dict()["target"]["storage_policy"] == "smallest"
    experiment.target = Target(threads=1, storage_policy="fastest")  # asked for explicitly
    assert suggest_recipe(trial=None, ctx=ctx).to_dict()["target"]["storage_policy"] == "fastest"
