"""The contract every technique keeps, run over every registered search-space component.

A technique added to the registry (built in or through the ``autoslim.techniques``
entry-point group) is picked up here with no edit. For a few draws of its component:

- the recipe survives a YAML round trip, full and compact;
- replaying the trial's parameters with ``FixedTrial`` gives the same recipe;
- stripping training fields is idempotent and keeps the stage valid;
- apply → save → load gives the same outputs as the applied model;
- rebuilding a fresh model for the artifact's recipe gives the applied model's shapes.
"""

from __future__ import annotations

import optuna
import pytest
import torch
import yaml

from autoslim.artifact import artifact_recipe, load_artifact, save_artifact
from autoslim.pipeline import apply_recipe, handler_for, rebuild_structure
from autoslim.recipe import Recipe, Target, TaskRef
from autoslim.registry import StageHandler, component_types, stage_kinds
from autoslim.space import ModelInfo, SearchSpace, parse_component
from autoslim.task import load_task

TASK = TaskRef(entry="autoslim.tasks.digits:make_task", params={"width": 4, "epochs": 3})
DRAWS = 3
PRUNE = {"type": "prune.magnitude", "optional": False, "fine_tune_epochs": {"low": 1, "high": 1}}
# Components whose stage only shows its effect next to another stage get that one too,
# as (stages before, stages after): distillation (first, as it must be) changes pruning's
# fine-tune loss, and a storage format matters once weights are sparse. Any other
# component, a new one included, is tested on its own.
COMPANIONS = {"distill": ([], [PRUNE]), "storage.format": ([PRUNE], [])}
ONE_EPOCH = {"low": 0, "high": 1}
# Settings a component cannot work out from the model (structured pruning traces the
# model with an input of this shape: digits are 1×8×8 images), and fine-tunes kept to
# at most one epoch, since the contract is about structure, not accuracy.
OPTIONS = {
    "prune.structured": {"input_shape": [1, 8, 8], "fine_tune_epochs": ONE_EPOCH},
    "prune.magnitude": {"fine_tune_epochs": ONE_EPOCH},
    "recover": {"epochs": {"low": 1, "high": 1}},
}


@pytest.fixture(scope="module")
def task():
    return load_task(TASK)


def space_for(component_type: str) -> SearchSpace:
    before, after = COMPANIONS.get(component_type, ([], []))
    own = {"type": component_type, "optional": False, **OPTIONS.get(component_type, {})}
    return SearchSpace([parse_component(c) for c in [*before, own, *after]])


def drawn_recipes(space: SearchSpace, info: ModelInfo) -> list[tuple[dict, Recipe]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
    drawn = []
    for _ in range(DRAWS):
        trial = study.ask()
        stages = space.suggest(trial, info)
        drawn.append(
            (trial.params, Recipe(task=TASK, stages=stages, seed=0, target=Target(threads=1)))
        )
        study.tell(trial, 0.0)
    return drawn


def test_every_stage_kind_has_a_handler_and_a_component_that_makes_it(task):
    info = ModelInfo.from_model(task.build_model())
    made = set()
    for component_type in component_types():
        for _, recipe in drawn_recipes(space_for(component_type), info):
            made |= {stage.kind for stage in recipe.stages}
    for kind, config in stage_kinds().items():
        assert isinstance(handler_for(config.model_construct(kind=kind)), StageHandler), kind
    assert made == set(stage_kinds())


@pytest.mark.parametrize("component_type", sorted(component_types()))
def test_a_recipe_survives_yaml_and_replays_from_its_parameters(task, component_type):
    space = space_for(component_type)
    info = ModelInfo.from_model(task.build_model())
    for params, recipe in drawn_recipes(space, info):
        assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
        assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml(compact=True))) == recipe
        replayed = space.suggest(optuna.trial.FixedTrial(params), info)
        assert replayed == recipe.stages
        for stage in recipe.stages:
            stripped = stage.without_training()
            assert stripped.without_training() == stripped
            assert type(stripped).model_validate(stripped.model_dump()) == stripped


@pytest.mark.parametrize("component_type", sorted(component_types()))
def test_apply_save_load_gives_the_same_outputs_and_shapes(task, component_type, tmp_path):
    space = space_for(component_type)
    info = ModelInfo.from_model(task.build_model())
    inputs = task.data.val.inputs[:32]
    for draw, (_, recipe) in enumerate(drawn_recipes(space, info)):
        model = apply_recipe(recipe, task=task)
        folder = save_artifact(model, recipe, tmp_path / f"draw{draw}", task=task)
        loaded = load_artifact(folder, task=task, runtime=False).model
        with torch.no_grad():
            torch.testing.assert_close(loaded(inputs), model(inputs), rtol=0, atol=1e-5)
        rebuilt = rebuild_structure(task.build_model(), artifact_recipe(recipe, task))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        assert {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()} == shapes


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("component_type", sorted(component_types()))
def test_narrowed_to_a_runtime_every_draw_runs_natively_there(task, component_type, runtime):
    """``for_runtime`` and ``storage_only`` agree: on a runtime that ships its own file,
    the narrowed space draws nothing that would be stored smaller without running faster."""
    from autoslim.deploy.runtimes import runtime_named, storage_only
    from autoslim.errors import AutoslimError

    forms = runtime_named(runtime).forms("cpu")
    try:
        space = space_for(component_type).for_runtime(forms)
    except AutoslimError as exc:  # the whole space dropped: said in one line, with reasons
        assert runtime in str(exc) and "dropped" in str(exc)
        return
    for component in space.components:
        assert isinstance(component, type(parse_component({"type": component.type})))
    target = Target(threads=1, runtime=runtime)
    for _, recipe in drawn_recipes(space, ModelInfo.from_model(task.build_model())):
        assert storage_only(recipe.model_copy(update={"target": target})) == []
