from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.space import ModelInfo, SearchSpace
from autoslim.techniques.prune import PruneConfig
from autoslim.techniques.quantize import QuantizeConfig


def info() -> ModelInfo:
    return ModelInfo.from_model(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))
    )


SPEC = [
    {"type": "prune.magnitude", "scopes": ["global", "layer"]},
    {"type": "quantize.weight", "bits": [2, 4, "fp32"], "layer_bits": {"0": [8, "fp32"]}},
]


def test_model_info_lists_compressible_layers_in_order():
    layers = info().layers
    assert [(layer.name, layer.type, layer.params) for layer in layers] == [
        ("0", "Conv2d", 36),
        ("3", "Linear", 32),
    ]


def test_suggest_is_replayed_exactly_by_fixed_trial():
    space = SearchSpace.from_spec(SPEC)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        stages = space.suggest(trial, info())
        assert space.suggest(optuna.trial.FixedTrial(trial.params), info()) == stages
        study.tell(trial, 0.0)


def test_stage_types_order_and_choice_sets():
    space = SearchSpace.from_spec(SPEC)
    params = {
        "prune.enabled": True,
        "prune.scope": "layer",
        "prune.sparsity.0": 0.2,
        "prune.sparsity.3": 0.7,
        "prune.fine_tune_epochs": 0,
        "quant.enabled": True,
        "quant.bits.0": 8,
        "quant.bits.3": 2,
    }
    stages = space.suggest(optuna.trial.FixedTrial(params), info())
    assert stages == [
        PruneConfig(scope="layer", layers={"0": 0.2, "3": 0.7}, fine_tune_epochs=0),
        QuantizeConfig(default=8, layers={"3": 2}),  # the plan's common width plus exceptions
    ]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        space.suggest(trial, info())
        if "quant.bits.0" in trial.params:
            assert trial.params["quant.bits.0"] in (8, "fp32")
        study.tell(trial, 0.0)


def test_disabled_components_produce_no_stage():
    space = SearchSpace.from_spec(SPEC)
    stages = space.suggest(
        optuna.trial.FixedTrial({"prune.enabled": False, "quant.enabled": False}), info()
    )
    assert stages == []


def test_fingerprint_changes_with_the_space_only():
    a, b = SearchSpace.from_spec(SPEC), SearchSpace.from_spec(SPEC)
    c = SearchSpace.from_spec([SPEC[0], {**SPEC[1], "bits": [2, 4]}])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_duplicate_names_and_unknown_types_are_errors(tmp_path):
    with pytest.raises(AutoslimError, match="duplicate component names"):
        SearchSpace.from_spec([SPEC[1], SPEC[1]])
    with pytest.raises(AutoslimError, match="unknown component 'nope'"):
        SearchSpace.from_spec([{"type": "nope"}])
    with pytest.raises(AutoslimError, match="low 0.9 > high 0.1"):
        SearchSpace.from_spec([{"type": "prune.magnitude", "sparsity": {"low": 0.9, "high": 0.1}}])
    path = tmp_path / "space.yaml"
    path.write_text("components: []\n")
    with pytest.raises(AutoslimError, match="components"):
        SearchSpace.load(path)


def test_bundled_presets_load():
    from pathlib import Path

    for preset in sorted(
        Path(__file__).parents[1].joinpath("autoslim", "search_spaces").glob("*.yaml")
    ):
        assert SearchSpace.load(preset).components


def test_codebook_grids_use_their_own_width_parameters():
    space = SearchSpace.from_spec(
        [
            {
                "type": "quantize.weight",
                "optional": False,
                "bits": [2, 4, 8, "fp32"],
                "grid_kind": ["uniform", "kmeans"],
            }
        ]
    )
    params = {"quant.grid_kind": "kmeans", "quant.cbits.0": 2, "quant.cbits.3": "fp32"}
    (stage,) = space.suggest(optuna.trial.FixedTrial(params), info())
    assert stage == QuantizeConfig(default=2, layers={"3": "fp32"}, grid_kind="kmeans")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        (stage,) = space.suggest(trial, info())
        widths = set(stage.layers.values())
        assert stage.grid_kind == "uniform" or widths <= {2, 4, "fp32"}
        study.tell(trial, 0.0)


def test_storage_component_pins_the_format_for_all_layers():
    from autoslim.techniques.storage import StorageConfig

    space = SearchSpace.from_spec(
        [{"type": "storage.format", "optional": False, "formats": ["auto", "csr"]}]
    )
    assert space.suggest(optuna.trial.FixedTrial({"storage.format": "csr"}), info()) == [
        StorageConfig(default="csr")
    ]


def test_a_searched_float_enters_the_recipe_with_four_significant_digits():
    from autoslim.space import FloatRange

    lr = FloatRange(low=1e-4, high=3e-2, log=True)
    assert lr.suggest(optuna.trial.FixedTrial({"lr": 0.00956178662298805}), "lr") == 0.009562
    # rounding never leaves the range, and a stepped range keeps its grid
    assert (
        FloatRange(low=0.0, high=0.12346).suggest(optuna.trial.FixedTrial({"x": 0.12346}), "x")
        == 0.12346
    )
    assert (
        FloatRange(low=0.12344, high=1.0).suggest(optuna.trial.FixedTrial({"x": 0.12344}), "x")
        == 0.12344
    )
    assert (
        FloatRange(low=0.0, high=1.0, step=0.125).suggest(
            optuna.trial.FixedTrial({"x": 0.375}), "x"
        )
        == 0.375
    )
    assert FloatRange(low=0.5, high=0.5).suggest(optuna.trial.FixedTrial({}), "x") == 0.5


class Recurrent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.lstm = nn.LSTM(8, 6, num_layers=2, bidirectional=True)
        self.head = nn.Linear(12, 10, bias=False)
        self.out = nn.Linear(12, 10, bias=False)
        self.out.weight = self.head.weight  # a second name for one weight


def test_recurrent_layers_get_widths_but_are_never_compressible():
    from autoslim.space import (
        WeightSlot,
        compressible_layers,
        quantizable_layers,
        recurrent_weights,
        stored_weights,
    )

    model = Recurrent()
    info = ModelInfo.from_model(model)
    assert info.names == ["head", "out"] and list(compressible_layers(model)) == info.names
    assert info.width_names == ["head", "out", "lstm"] == list(quantizable_layers(model))
    assert info.matching("l.*", recurrent=True) == ["lstm"]
    with pytest.raises(AutoslimError, match="matches no layer"):
        info.matching("lstm")  # pruning's layers: no recurrent one
    assert recurrent_weights(model.lstm) == [
        f"weight_{g}_l{i}{s}" for i in (0, 1) for s in ("", "_reverse") for g in ("ih", "hh")
    ]
    stored = stored_weights(model)
    # each tensor once: ``out.weight`` is ``head.weight``
    assert list(stored) == ["head.weight"] + [
        f"lstm.{w}" for w in recurrent_weights(model.lstm)
    ] + ["embed.weight"]
    slot = stored["lstm.weight_hh_l1_reverse"]
    assert isinstance(slot, WeightSlot) and slot.weight is model.lstm.weight_hh_l1_reverse
    model.lstm.register_buffer("weight_hh_l1_reverse_scale", torch.ones(24, 1))
    assert slot.weight_scale is model.lstm.weight_hh_l1_reverse_scale
    assert getattr(slot, "autoslim_grid", None) is None


def test_adding_the_recurrent_field_keeps_existing_fingerprints():
    # as computed before ``quantize.weight`` had a ``recurrent`` field, so studies resume
    assert SearchSpace.from_spec([{"type": "quantize.weight"}]).fingerprint() == "e1c97eab9ff9f913"
    space = [{"type": "prune.magnitude"}, {"type": "quantize.weight", "bits": [4, 8]}]
    assert SearchSpace.from_spec(space).fingerprint() == "cac398017d2def79"
    off = [{"type": "quantize.weight", "recurrent": False}]
    assert SearchSpace.from_spec(off).fingerprint() != "e1c97eab9ff9f913"
