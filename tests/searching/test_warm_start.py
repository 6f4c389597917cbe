"""Warm starts: uniform baselines replayed (`baseline_params`, `normalise_stage`) and the
mixed-precision allocator's plans (`plan_params`)."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
from torch import nn

from autoslim.searching.warm_start import baseline_params, normalise_stage, plan_params
from autoslim.space import ModelInfo, SearchSpace, quantizable_layers, searched_float
from autoslim.techniques.quantize import QuantizeConfig
from autoslim.techniques.quantize._mixed_precision import weight_bytes

LR_MID = searched_float(math.sqrt(1e-4 * 3e-3))  # a searched float has 4 significant digits


@pytest.fixture
def info() -> ModelInfo:
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    return ModelInfo.from_model(model)


def prune_quant(**quant) -> SearchSpace:
    return SearchSpace.from_spec(
        [
            {
                "type": "prune.magnitude",
                "scopes": ["global", "layer"],
                "sparsity": {"low": 0.0, "high": 0.95},
                "fine_tune_epochs": {"low": 0, "high": 3},
                "lr": {"low": 1e-4, "high": 3e-3, "log": True},
            },
            {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"], **quant},
        ]
    )


def replayed(space: SearchSpace, info: ModelInfo, params: dict) -> list[dict]:
    """The stages a trial enqueued with `params` gets, normalised."""
    stages = space.suggest(optuna.trial.FixedTrial(params), info)
    return [normalise_stage(s, info.names) for s in stages]


def test_uniform_int8_is_every_layer_at_8_bits_with_pruning_off(info):
    space = prune_quant()
    params = baseline_params(space, info, [{"kind": "quantize", "default": 8}])
    assert params["prune.enabled"] is False and params["quant.enabled"] is True
    assert {k: v for k, v in params.items() if k.startswith("quant.bits.")} == {
        "quant.bits.0": 8,
        "quant.bits.3": 8,
    }
    assert replayed(space, info, params) == [
        normalise_stage({"kind": "quantize", "default": 8}, info.names)
    ]


def test_uniform_magnitude_pruning_replays_as_the_same_per_layer_stage(info):
    space = prune_quant()
    wanted = [
        {"kind": "prune", "scope": "layer", "sparsity": 0.7, "fine_tune_epochs": 3, "lr": LR_MID}
    ]
    params = baseline_params(space, info, wanted)
    assert params["prune.scope"] == "layer" and params["quant.enabled"] is False
    assert params["prune.sparsity.0"] == params["prune.sparsity.3"] == 0.7
    assert params["prune.fine_tune_epochs"] == 3 and params["prune.lr"] == LR_MID
    assert replayed(space, info, params) == [normalise_stage(wanted[0], info.names)]


def test_two_stages_are_matched_to_components_in_order(info):
    space = prune_quant()
    wanted = [
        {"kind": "prune", "scope": "global", "sparsity": 0.5},
        {"kind": "quantize", "default": 4},
    ]
    params = baseline_params(space, info, wanted)
    assert params["prune.sparsity"] == 0.5 and params["prune.fine_tune_epochs"] == 0
    assert "prune.lr" not in params  # no fine-tune reads it
    assert replayed(space, info, params) == [normalise_stage(s, info.names) for s in wanted]


@pytest.mark.parametrize(
    "stage",
    [
        {"kind": "prune", "scope": "layer", "sparsity": 0.97},  # beyond the range
        {
            "kind": "prune",
            "scope": "layer",
            "sparsity": 0.5,
            "fine_tune_epochs": 5,
        },  # more epochs than allowed
        {
            "kind": "prune",
            "scope": "layer",
            "sparsity": 0.5,
            "criterion": "taylor",
        },  # a criterion it lacks
        {"kind": "quantize", "default": 3},  # a width it lacks
        {"kind": "quantize", "default": 8, "calibration": "mse"},  # a grid setting it lacks
        {"kind": "prune_structured", "ratio": 0.5},  # no such component
    ],
)
def test_a_baseline_the_space_cannot_express_gives_none(info, stage):
    assert baseline_params(prune_quant(), info, [stage]) is None


def test_stages_out_of_the_spaces_order_give_none(info):
    wanted = [
        {"kind": "quantize", "default": 8},
        {"kind": "prune", "scope": "global", "sparsity": 0.5},
    ]
    assert baseline_params(prune_quant(), info, wanted) is None


def test_one_width_for_all_layers_answers_the_single_bits_question(info):
    space = prune_quant(per_layer=False)
    assert baseline_params(space, info, [{"kind": "quantize", "default": 8}])["quant.bits"] == 8
    mixed = {"kind": "quantize", "default": 8, "layers": {"3": 4}}
    assert baseline_params(space, info, [mixed]) is None
    assert baseline_params(prune_quant(), info, [mixed])["quant.bits.3"] == 4  # per layer: fine


def test_no_stages_switch_every_optional_component_off_and_a_required_one_fails(info):
    assert baseline_params(prune_quant(), info, []) == {
        "prune.enabled": False,
        "quant.enabled": False,
    }
    required = SearchSpace.from_spec(
        [{"type": "quantize.weight", "bits": [4, 8], "optional": False}]
    )
    assert baseline_params(required, info, []) is None
    assert baseline_params(required, info, [{"kind": "quantize", "default": 4}]) == {
        "quant.bits.0": 4,
        "quant.bits.3": 4,
    }


def test_structured_pruning_replays_with_neutral_rounding(info):
    space = SearchSpace.from_spec(
        [
            {
                "type": "prune.structured",
                "ratio": {"low": 0.0, "high": 0.75},
                "importance": ["l1", "l2"],
                "round_to": [1, 8],
                "fine_tune_epochs": {"low": 1, "high": 5},
                "lr": {"low": 3e-4, "high": 3e-3, "log": True},
            },
        ]
    )
    wanted = {
        "kind": "prune_structured",
        "ratio": 0.5,
        "importance": "l1",
        "fine_tune_epochs": 5,
        "lr": 1e-3,
    }
    params = baseline_params(space, info, [wanted])
    assert params["structured.round_to"] == 1 and params["structured.ratio"] == 0.5
    assert replayed(space, info, params) == [normalise_stage(wanted, info.names)]
    assert (
        baseline_params(space, info, [{**wanted, "fine_tune_epochs": 0}]) is None
    )  # below the range


def test_normalise_stage_makes_equivalent_spellings_equal(info):
    names = info.names
    assert normalise_stage(
        {"kind": "prune", "scope": "layer", "sparsity": 0.7}, names
    ) == normalise_stage({"kind": "prune", "scope": "layer", "layers": {"0": 0.7, "3": 0.7}}, names)
    assert normalise_stage({"kind": "quantize", "default": 8}, names) == normalise_stage(
        {"kind": "quantize", "layers": {"re:.*": 8}}, names
    )
    assert normalise_stage({"kind": "prune", "sparsity": 0.5, "lr": 0.1}, names) == normalise_stage(
        {"kind": "prune", "sparsity": 0.5, "lr": 0.2}, names
    )  # lr unread without a fine-tune
    assert normalise_stage(
        {"kind": "prune", "sparsity": 0.5, "fine_tune_epochs": 1, "lr": 0.1}, names
    ) != normalise_stage(
        {"kind": "prune", "sparsity": 0.5, "fine_tune_epochs": 1, "lr": 0.2}, names
    )


def oddmix():
    from tests.user_models import OddMix

    torch.manual_seed(0)
    return OddMix().eval()


@pytest.mark.parametrize("recurrent", [True, False])
def test_allocator_plans_cover_the_gru_where_the_component_quantizes_it(recurrent):
    """OddMix's GRU holds most of its weights (9216 of 14752). A plan that left it out
    would be a trial with its width drawn at random, beside a budget that never counted
    it; with ``recurrent`` on, it is a layer of the plan and of the budget."""
    from tests.user_models import loader_task

    task, model = loader_task("tokens", oddmix, sizes=(32, 32, 32)), oddmix()
    info = ModelInfo.from_model(model)
    spec = {"type": "quantize.weight", "bits": [2, 4, 8, "fp32"], "optional": False}
    space = SearchSpace.from_spec([{**spec, "recurrent": recurrent}])
    (plan,) = plan_params(task, model, "oddmix", space.components[0], [0.2])
    widths = {k.removeprefix("quant.bits."): v for k, v in plan.items()}
    assert list(widths) == (info.width_names if recurrent else info.names)
    layers, config = quantizable_layers(model), QuantizeConfig()
    used = sum(weight_bytes(layers[name], width, config) for name, width in widths.items())
    assert used <= 0.2 * sum(weight_bytes(layers[name], "fp32", config) for name in widths)
    # the plan is a whole trial of the space: every width it asks for is given
    (stage,) = space.suggest(optuna.trial.FixedTrial(plan), info)
    assert stage.recurrent is recurrent
    layer_widths = normalise_stage(stage, info.width_names)["layers"]
    assert {name: layer_widths[name] for name in widths} == widths
    if recurrent:
        assert widths["gru"] != "fp32"  # too big to keep in fp32 at a fifth of the bytes
