from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from autoslim.artifact import load_artifact, save_artifact
from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext, apply_recipe
from autoslim.recipe import Recipe
from autoslim.tasks.mnist1d import ResConvNet, TransformerNet, make_task
from autoslim.techniques.prune.importance import GradStats
from autoslim.techniques.structured import (
    GroupImportance,
    PrunedMultiheadAttention,
    StructuredPruneConfig,
    StructuredPruneHandler,
    prune_channels,
    prune_heads,
    to_pruned_attention,
)

TASK = {
    "entry": "autoslim.tasks.mnist1d:make_task",
    "params": {"model": "rescnn", "width": 16, "epochs": 1, "num_samples": 400},
}


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so equality tests exercise them."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model.eval()


def mask_like_history(dense: nn.Module, history: list, example: torch.Tensor) -> nn.Module:
    """Zero (instead of removing) every output channel Torch-Pruning removed."""
    graph = tp.DependencyGraph().build_dependency(dense, example_inputs=example)
    out_fns = (
        tp.prune_conv_out_channels,
        tp.prune_linear_out_channels,
        tp.prune_batchnorm_out_channels,
    )
    with torch.no_grad():
        for name, is_out, idxs in history:
            module = dense.get_submodule(name)
            fn = graph.get_pruner_of_module(module).prune_out_channels if is_out else None
            assert fn is not None
            for dep, dep_idxs in graph.get_pruning_group(module, fn, idxs):
                if dep.pruning_fn in out_fns:
                    dep.layer.weight[dep_idxs] = 0
                    if dep.layer.bias is not None:
                        dep.layer.bias[dep_idxs] = 0
    return dense


@pytest.mark.parametrize("criterion", ["l1", "l2", "random", "bn_scale"])
def test_channel_removal_is_exact_against_the_masked_dense_model(criterion):
    torch.manual_seed(0)
    model = randomise_bn(ResConvNet(channels=16, blocks=3))
    x = torch.randn(5, 40)
    config = StructuredPruneConfig(ratio=0.5, importance=criterion)
    stats = GradStats(generator=torch.Generator().manual_seed(0))
    history = prune_channels(
        pruned := copy.deepcopy(model), config, GroupImportance(criterion, stats)
    )
    assert history, "something must have been pruned"
    masked = mask_like_history(copy.deepcopy(model), history, torch.ones(1, 40))
    assert pruned.stem[0].out_channels == 8 and pruned.blocks[0].conv1.out_channels == 8
    torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(masked(x), model(x), atol=1e-3)  # the mask really changed the model


def test_round_to_keeps_channel_multiples_and_ignores_the_classifier():
    model = ResConvNet(channels=64, blocks=3)
    prune_channels(
        model, StructuredPruneConfig(ratio=0.3, round_to=8), GroupImportance("l1", GradStats())
    )
    widths = {m.out_channels for m in model.modules() if isinstance(m, nn.Conv1d)}
    assert widths == {40}  # int(64 * 0.7) = 44, rounded down to a multiple of 8
    assert model.head.out_features == 10


def test_group_ratios_override_the_global_ratio():
    model = ResConvNet(channels=16, blocks=3)
    config = StructuredPruneConfig(ratio=0.5, group_ratios={"re:blocks\\.0\\.conv1": 0.25})
    prune_channels(model, config, GroupImportance("l1", GradStats()))
    assert model.blocks[0].conv1.out_channels == 12
    assert model.blocks[2].conv1.out_channels == 8


def test_bn_scale_skips_groups_without_batchnorm_and_reports_them():
    task = make_task(model="transformer", width=16, num_samples=400)
    model = TransformerNet(d_model=16, heads=4, ffn=32)
    ctx = ApplyContext(task=task, seed=0)
    StructuredPruneHandler().apply(
        model, StructuredPruneConfig(ratio=0.5, importance="bn_scale"), ctx
    )
    assert model.layers[0].linear1.out_features == 32
    assert "layers.0.linear1" in ctx.records["structured.skipped"]


def test_heads_are_really_removed_and_exact_against_masked_heads():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    scores = {"self_attn": torch.tensor([3.0, 0.5, 2.0, 0.1])}  # heads 1 and 3 go
    pruned = copy.deepcopy(layer)
    prune_heads(pruned, 0.5, scores)
    attn = pruned.self_attn
    assert isinstance(attn, PrunedMultiheadAttention) and attn.num_heads == 2 and attn.head_dim == 4
    assert attn.in_proj.weight.shape == (24, 16) and attn.out_proj.weight.shape == (16, 8)
    masked = copy.deepcopy(layer)
    with torch.no_grad():
        for head in (1, 3):
            masked.self_attn.out_proj.weight[:, head * 4 : (head + 1) * 4] = 0
    torch.testing.assert_close(pruned(x), masked(x), atol=1e-5, rtol=1e-5)


def test_converted_attention_matches_torch_with_masks():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(2, 6, 16)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    padding = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    ref = mha(x, x, x, attn_mask=causal, key_padding_mask=padding, need_weights=False)[0]
    out = to_pruned_attention(mha)(x, x, x, attn_mask=causal, key_padding_mask=padding)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("criterion", ["taylor", "fisher"])
def test_artifact_of_a_structurally_pruned_model_loads_with_identical_outputs(tmp_path, criterion):
    task = make_task(**TASK["params"])
    recipe = Recipe.from_dict(
        {
            "task": TASK,
            "stages": [
                {
                    "kind": "prune_structured",
                    "ratio": 0.5,
                    "importance": criterion,
                    "round_to": 4,
                    "calibration_samples": 8,
                    "fine_tune_epochs": 0,
                }
            ],
        }
    )
    torch.manual_seed(0)
    model = apply_recipe(recipe, task=task, model=randomise_bn(task.build_model()))
    assert model.stem[0].out_channels == 8
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "a"), task=task).model
    x, _ = task.data.val.take(16)
    assert torch.equal(loaded(x), model(x))


def test_transformer_recipe_with_heads_and_ffn_round_trips(tmp_path):
    params = {"model": "transformer", "width": 16, "epochs": 1, "num_samples": 400}
    task = make_task(**params)
    recipe = Recipe.from_dict(
        {
            "task": {"entry": TASK["entry"], "params": params},
            "stages": [
                {"kind": "prune_structured", "ratio": 0.5, "heads": 0.5, "fine_tune_epochs": 1}
            ],
        }
    )
    model = apply_recipe(recipe, task=task, model=task.build_model())
    assert model.layers[1].self_attn.num_heads == 4 and model.layers[1].linear1.out_features == 64
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "t"), task=task).model
    x, _ = task.data.val.take(16)
    torch.testing.assert_close(loaded(x), model(x))


def test_bad_input_is_a_one_line_error():
    with pytest.raises(AutoslimError, match="input shape"):
        StructuredPruneHandler().rebuild(
            nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2)), StructuredPruneConfig(ratio=0.5)
        )
    with pytest.raises(AutoslimError, match="matches no layer"):
        prune_channels(
            ResConvNet(channels=8),
            StructuredPruneConfig(ratio=0.5, group_ratios={"re:nope": 0.1}),
            GroupImportance("l1", GradStats()),
        )
    with pytest.raises(AutoslimError, match="invalid recipe"):
        Recipe.from_dict({"task": TASK, "stages": [{"kind": "prune_structured", "ratio": 1.2}]})


@pytest.mark.parametrize("preset", ["structured.yaml", "structured_gradual.yaml"])
def test_presets_load_and_suggest_replayable_stages(preset):
    import optuna

    import autoslim
    from autoslim.space import ModelInfo, SearchSpace

    # the presets ship inside the package (autoslim/search_spaces)
    space = SearchSpace.load(Path(autoslim.__file__).parent / "search_spaces" / preset)
    info = ModelInfo.from_model(TransformerNet(d_model=16, heads=4, ffn=32))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    stages = space.suggest(trial, info)
    again = space.suggest(optuna.trial.FixedTrial(trial.params), info)
    assert stages == again
    structured = next((s for s in stages if isinstance(s, StructuredPruneConfig)), None)
    if structured is not None:
        assert 0.0 <= structured.ratio <= 0.75 and structured.round_to in (1, 8)


def test_bn_scale_in_a_space_for_a_model_without_batchnorm_is_a_configuration_error():
    import optuna

    from autoslim.space import ModelInfo
    from autoslim.tasks.mnist1d import make_task
    from autoslim.techniques.structured import StructuredPruneSpace

    info = ModelInfo.from_model(make_task(model="cnn").build_model())  # convs and linears only
    assert not info.has_module("BatchNorm")
    trial = optuna.create_study().ask()
    with pytest.raises(AutoslimError, match="bn_scale .* no BatchNorm layer"):
        StructuredPruneSpace(importance=["l1", "bn_scale"]).suggest(trial, info)
    assert StructuredPruneSpace(importance=["l1"], optional=False).suggest(trial, info) is not None
    with_bn = ModelInfo.from_model(make_task(model="rescnn").build_model())
    assert with_bn.has_module("BatchNorm")
    assert (
        StructuredPruneSpace(importance=["bn_scale"], optional=False).suggest(
            optuna.create_study().ask(), with_bn
        )
        is not None
    )


def test_shortest_form_takes_the_fewest_digits_that_keep_the_structure():
    config = StructuredPruneConfig(
        ratio=0.7073, heads=0.25, importance="taylor", group_multipliers={"re:.*": 1.234}
    )

    def only_ratio_from_two_digits(candidate: StructuredPruneConfig) -> bool:
        return (
            candidate.ratio in (0.71, 0.707)
            and candidate.model_copy(update={"ratio": config.ratio}) == config
        )

    accepts_two_digits = StructuredPruneHandler().shortest_form(config, only_ratio_from_two_digits)
    # 0.7 is refused and 0.71 taken; every other shorter form is refused
    assert accepts_two_digits == config.model_copy(update={"ratio": 0.71})
    everything = StructuredPruneHandler().shortest_form(config, lambda c: True)
    assert (
        everything.ratio,
        everything.heads,
        everything.importance,
        everything.group_multipliers,
    ) == (0.7, 0.2, "l1", {"re:.*": 1.2})
    assert StructuredPruneHandler().shortest_form(config, lambda c: False) == config
