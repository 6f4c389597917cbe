from __future__ import annotations

import copy

import pytest
import yaml

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe, resolve_layer_map
from autoslim.techniques.prune import PruneConfig
from autoslim.techniques.quantize import QuantizeConfig

TASK = {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4}}


def full_recipe() -> dict:
    return copy.deepcopy(
        {
            "schema_version": 1,
            "task": TASK,
            "seed": 3,
            "target": {"device": "cpu", "threads": 1, "batch_size": 8, "warmup": 1, "repeats": 5},
            "stages": [
                {
                    "kind": "prune",
                    "scope": "layer",
                    "layers": {"features.0": 0.5, "re:classifier\\..*": 0.75},
                    "fine_tune_epochs": 2,
                    "lr": 0.002,
                },
                {
                    "kind": "quantize",
                    "default": 8,
                    "layers": {"features.0": "fp32", "re:classifier.*": 2},
                },
            ],
            "provenance": {
                "experiment": "digits",
                "trial": 7,
                "values": {"accuracy": 0.98},
                "seed": 3,
                "versions": {"torch": "2.13.0"},
            },
        }
    )


def test_round_trip_through_yaml(tmp_path):
    recipe = Recipe.from_dict(full_recipe())
    path = recipe.save(tmp_path / "r.yaml")
    again = Recipe.load(path)
    assert again == recipe
    assert isinstance(again.stages[0], PruneConfig) and again.stages[0].layers["features.0"] == 0.5
    assert (
        isinstance(again.stages[1], QuantizeConfig)
        and again.stages[1].layers["re:classifier.*"] == 2
    )
    assert again.to_dict() == recipe.to_dict()


def test_compact_dump_keeps_only_non_defaults_and_every_kind():
    data = full_recipe()
    data["stages"].insert(0, {"kind": "distill", "alpha": 0.25, "schedule": {"kind": "phases"}})
    data["stages"].append({"kind": "distill", "schedule": {"kind": "linear", "end": 2.0}})
    recipe = Recipe.from_dict(data)
    assert recipe.to_dict(compact=True) == {
        "schema_version": 1,
        "task": TASK,
        "seed": 3,
        "target": {"threads": 1, "batch_size": 8, "warmup": 1, "repeats": 5},
        "stages": [
            # a schedule at all its defaults still says which schedule it is
            {"kind": "distill", "alpha": 0.25, "schedule": {"kind": "phases"}},
            {
                "kind": "prune",
                "scope": "layer",
                "layers": {"features.0": 0.5, "re:classifier\\..*": 0.75},
                "fine_tune_epochs": 2,
                "lr": 0.002,
            },
            {
                "kind": "quantize",
                "default": 8,
                "layers": {"features.0": "fp32", "re:classifier.*": 2},
            },
            {"kind": "distill", "schedule": {"kind": "linear", "end": 2.0}},
        ],
        "provenance": data["provenance"],
    }
    assert Recipe.from_dict(yaml.safe_load(recipe.to_yaml(compact=True))) == recipe


def test_compact_dump_of_a_default_recipe_is_its_task_and_schema():
    recipe = Recipe.from_dict({"task": TASK})
    assert recipe.to_dict(compact=True) == {"schema_version": 1, "task": TASK}
    assert Recipe.from_dict(recipe.to_dict(compact=True)) == recipe


def test_core_drops_provenance_only():
    recipe = Recipe.from_dict(full_recipe())
    core = recipe.core()
    assert core.provenance is None
    assert core.stages == recipe.stages and core.task == recipe.task


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda r: r.update(colour="red"), "colour: Extra inputs are not permitted"),
        (lambda r: r["task"].update(entry="no-colon"), "task.entry"),
        (lambda r: r["stages"].append({"kind": "teleport"}), "unknown stage kind 'teleport'"),
        (
            lambda r: r["stages"][1].update(default=7),
            "stage 1 (quantize): default: Input should be 2, 3, 4, 5, 6, 8, 'fp16', 'bf16' or 'fp32'",
        ),
        (
            lambda r: r["stages"][1]["layers"].update({"features.3": 16}),
            "stage 1 (quantize): layers.features.3",
        ),
        (lambda r: r["stages"][0].update(sparsity=1.5), "stage 0 (prune): sparsity"),
        (
            lambda r: r["stages"][0]["layers"].update({"features.3": -0.1}),
            "sparsity for 'features.3'",
        ),
        (lambda r: r["stages"][0].update(scope="global"), "needs scope: layer"),
        (lambda r: r["stages"][0].update(fine_tune_epochs=-1), "stage 0 (prune): fine_tune_epochs"),
        (lambda r: r["stages"][0].update(typo=1), "stage 0 (prune): typo: Extra inputs"),
        (lambda r: r["target"].update(threads=0), "target.threads"),
        (lambda r: r["target"].update(device="tpu"), "target.device"),
        (lambda r: r.update(stages={"kind": "prune"}), "stages must be a list"),
    ],
)
def test_bad_fields_are_rejected_with_a_one_line_reason(mutate, message):
    data = full_recipe()
    mutate(data)
    with pytest.raises(AutoslimError) as info:
        Recipe.from_dict(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_load_missing_and_malformed_files(tmp_path):
    with pytest.raises(AutoslimError, match="recipe file not found"):
        Recipe.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(AutoslimError, match=r"malformed YAML in .*bad.yaml \(line 2\)"):
        Recipe.load(bad)


def test_layer_map_exact_names_win_over_regex_and_first_regex_wins():
    names = ["a.0", "a.1", "b.0"]
    resolved = resolve_layer_map({"re:a\\..*": 4, "a.1": 8, "re:.*": 2}, names)
    assert resolved == {"a.0": 4, "a.1": 8, "b.0": 2}


def test_layer_map_rejects_unknown_names_and_empty_regexes():
    with pytest.raises(AutoslimError, match="unknown layer 'c.0'"):
        resolve_layer_map({"c.0": 4}, ["a.0"])
    with pytest.raises(AutoslimError, match="matches no layer"):
        resolve_layer_map({"re:z.*": 4}, ["a.0"])
    with pytest.raises(AutoslimError, match="bad layer regex"):
        resolve_layer_map({"re:(": 4}, ["a.0"])


def test_atomic_write_refuses_directories_and_leaves_no_temporary(tmp_path):
    from autoslim.recipe import write_text_atomic

    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(AutoslimError, match="it is a directory"):
        write_text_atomic(target, "x")
    write_text_atomic(tmp_path / "r.yaml", "a: 1\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r.yaml"]


def test_without_training_resets_only_training_fields_and_stays_valid():
    from autoslim.recipe import parse_stage

    adaptive = parse_stage(
        {
            "kind": "prune",
            "scope": "global",
            "sparsity": 0.6,
            "schedule": "adaptive",
            "fine_tune_epochs": 2,
            "lr": 0.01,
            "criterion": "taylor",
            "phases": [
                {"sparsity": 0.3, "epochs": 2, "lr": 0.01},
                {"sparsity": 0.6, "epochs": 2, "lr": 0.01},
            ],
        }
    )
    # the schedule's validators tie schedule, epochs and phases; all reset together
    assert adaptive.without_training() == parse_stage(
        {"kind": "prune", "scope": "global", "sparsity": 0.6}
    )
    qat = parse_stage(
        {
            "kind": "quantize",
            "default": 4,
            "layers": {"fc": 8},
            "qat_epochs": 3,
            "qat_lr": 3e-4,
            "qat_method": "lsq",
            "calibration": "mse",
            "granularity": "per_tensor",
        }
    )
    assert qat.without_training() == parse_stage(
        {"kind": "quantize", "default": 4, "layers": {"fc": 8}, "granularity": "per_tensor"}
    )
    assert parse_stage({"kind": "distill"}).without_training() == parse_stage({"kind": "distill"})
