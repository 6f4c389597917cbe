from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantHandler, float_width_of, grid_of
from autoslim.techniques.quantize._grid import (
    GridSpec,
    dequantize_levels,
    fake_quantize,
    qparams,
    quantize_levels,
)


def reference_fake_quant(
    w: torch.Tensor, bits: int, symmetric: bool, group: int | None
) -> torch.Tensor:
    """Textbook min-max fake quantization, one group at a time with Python scalars."""
    rows = w.reshape(w.shape[0], -1)
    size = group or rows.shape[1]
    out = torch.empty_like(rows)
    for r in range(rows.shape[0]):
        for start in range(0, rows.shape[1], size):
            g = rows[r, start : start + size]
            if symmetric:
                qmax = 2 ** (bits - 1) - 1
                scale = float(g.abs().max()) / qmax or 1.0
                q = torch.clamp(torch.round(g / scale), -qmax, qmax)
                out[r, start : start + size] = q * scale
            else:
                lo, hi = min(float(g.min()), 0.0), max(float(g.max()), 0.0)
                scale = (hi - lo) / (2**bits - 1) or 1.0
                zero = round(-lo / scale)
                q = torch.clamp(torch.round(g / scale) + zero, 0, 2**bits - 1)
                out[r, start : start + size] = (q - zero) * scale
    return out.reshape(w.shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize(("granularity", "group"), [("per_channel", None), ("group", 4)])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape", [(6, 8), (4, 2, 2, 2)])
def test_quantize_dequantize_matches_reference_formula(bits, granularity, group, symmetric, shape):
    torch.manual_seed(bits)
    w = torch.randn(shape)
    w[0] = 0.0  # a fully pruned channel stays exactly zero
    spec = GridSpec(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group)
    deq, scale, zero = fake_quantize(w, spec)
    torch.testing.assert_close(
        deq, reference_fake_quant(w, bits, symmetric, group), rtol=0, atol=1e-5
    )
    levels = quantize_levels(w, scale, zero, spec)
    assert levels.dtype == torch.uint8 and int(levels.max()) < 2**bits
    assert len(torch.unique(levels)) <= spec.levels
    torch.testing.assert_close(dequantize_levels(levels, scale, zero, spec), deq, rtol=0, atol=0)
    assert torch.equal(deq[0], torch.zeros_like(deq[0]))


def test_per_tensor_uses_one_scale():
    w = torch.tensor([[1.0, -0.5], [0.25, 3.0]])
    scale, zero = qparams(w, GridSpec(bits=8, granularity="per_tensor"))
    assert scale.shape == (1, 1) and scale.item() == pytest.approx(3.0 / 127)
    assert zero.item() == 0


def test_two_bits_is_ternary():
    w = torch.tensor([[-1.0, -0.4, 0.0, 0.6, 1.0]])
    deq, scale, _ = fake_quantize(w, GridSpec(bits=2))
    assert (deq / scale).round().tolist() == [[-1, 0, 0, 1, 1]]


def test_percentile_clips_outliers_to_the_hand_computed_value():
    w = torch.cat([torch.linspace(-1, 1, 1001), torch.tensor([50.0])]).reshape(1, -1)
    scale, _ = qparams(w, GridSpec(bits=8, calibration="percentile", percentile=99.0))
    expected = torch.quantile(w.abs(), 0.99).item() / 127
    assert scale.item() == pytest.approx(expected, rel=1e-6)
    assert scale.item() < 50.0 / 127 / 10


def test_mse_calibration_never_does_worse_than_minmax():
    torch.manual_seed(0)
    w = torch.randn(16, 64) * torch.rand(16, 1)
    w[:, 0] = 8.0  # outliers make min-max waste most of the grid
    for bits in (2, 3, 4):
        mm = fake_quantize(w, GridSpec(bits=bits))[0]
        mse = fake_quantize(w, GridSpec(bits=bits, calibration="mse"))[0]
        per_row = lambda d: ((d - w) ** 2).sum(dim=1)  # noqa: E731
        assert (per_row(mse) <= per_row(mm) + 1e-6).all()
        assert per_row(mse).sum() < per_row(mm).sum()


def test_handler_quantizes_only_the_named_layers_and_halves_fp16():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    before = model[2].weight.detach().clone()
    config = QuantizeConfig(default="fp32", layers={"0": 3, "3": "fp16"})
    WeightQuantHandler().apply(model, config, ApplyContext(task=None, seed=0))  # type: ignore[arg-type]
    assert grid_of(model[0]).bits == 3 and grid_of(model[2]) is None
    assert torch.equal(model[2].weight, before)
    assert float_width_of(model[3]) == "fp16"
    assert torch.equal(model[3].weight, model[3].weight.half().float())
    levels = torch.unique((model[0].weight / model[0].weight_scale).round())
    assert levels.abs().max() <= 3 and len(levels) <= 7


def test_group_size_must_divide_the_row():
    model = nn.Sequential(nn.Linear(6, 2))
    config = QuantizeConfig(default=4, granularity="group", group_size=4)
    with pytest.raises(AutoslimError, match="layer 0: group_size 4 does not divide the 6 inputs"):
        WeightQuantHandler().apply(model, config, ApplyContext(task=None, seed=0))  # type: ignore[arg-type]


def test_config_validation():
    with pytest.raises(ValueError, match="group_size is required"):
        QuantizeConfig(granularity="group")
    assert QuantizeConfig(default=8, layers={"re:b.*": "fp32", "a": 2}).widths(
        ["a", "b1", "c"]
    ) == {"a": 2, "c": 8}


def test_kl_calibration_keeps_uniform_data_whole_and_clips_an_outlier():
    from autoslim.techniques.quantize._grid import kl_threshold

    uniform = torch.linspace(0.0, 1.0, 4096).reshape(1, -1)
    assert kl_threshold(uniform, 8).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    outlier = torch.cat([torch.randn(1, 4000).abs(), torch.tensor([[30.0]])], dim=1)
    clip = kl_threshold(outlier, 8).item()
    assert 2.0 < clip < 5.0  # most of the grid goes to the bulk, not to the single 30
    scale, _ = qparams(outlier, GridSpec(bits=4, calibration="kl"))
    assert scale.item() == pytest.approx(clip / 7)


def test_a_full_per_layer_plan_is_written_as_its_common_width_plus_exceptions():
    from autoslim.techniques.quantize import compact_plan

    layers = ["a", "b", "c"]
    assert compact_plan({"a": 8, "b": 8, "c": 8}, layers) == {"default": 8, "layers": {}}
    assert compact_plan({"a": 4, "b": 8, "c": 4}, layers) == {"default": 4, "layers": {"b": 8}}
    # A plan over some layers only keeps the rest at the fp32 default.
    assert compact_plan({"a": 4, "b": 4}, layers) == {"layers": {"a": 4, "b": 4}}
    for plan in ({"a": 4, "b": 8, "c": "fp16"}, {"a": 2, "b": 2, "c": 2}):
        compact = QuantizeConfig(**compact_plan(plan, layers))
        assert compact.widths(layers) == QuantizeConfig(layers=plan).widths(layers)


def test_a_per_layer_search_that_lands_on_uniform_8_bit_writes_the_uniform_artifact(
    tmp_path, tiny_task_ref
):
    import optuna

    from autoslim.artifact import artifact_bytes, save_artifact
    from autoslim.pipeline import apply_recipe
    from autoslim.recipe import Recipe
    from autoslim.space import ModelInfo
    from autoslim.task import load_task
    from autoslim.techniques.quantize import WeightQuantSpace

    task = load_task(Recipe.from_dict({"task": tiny_task_ref}).task)
    info = ModelInfo.from_model(task.build_model())
    space = WeightQuantSpace(bits=[8, 4], per_layer=True, optional=False)
    params = {f"{space.name}.bits.{name}": 8 for name in info.names}
    stage = space.suggest(optuna.trial.FixedTrial(params), info)
    per_layer = Recipe.from_dict({"task": tiny_task_ref, "stages": [stage.model_dump()]})
    uniform = Recipe.from_dict(
        {"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 8}]}
    )
    sizes = [
        artifact_bytes(save_artifact(apply_recipe(r), r, tmp_path / str(i)))
        for i, r in enumerate((per_layer, uniform))
    ]
    assert sizes[0] == sizes[1]


def test_a_search_enqueued_uniform_plan_writes_the_standalone_uniform_artifact_byte_for_byte(
    tmp_path, experiment_file
):
    """The mixed-precision benchmark compares the search's front with standalone uniform
    recipes; the search's own uniform trials must be those very artifacts, not a few
    recipe bytes larger. The search settles the target's storage policy into its recipes,
    so the standalone recipe is written for that same target."""
    from autoslim.artifact import artifact_bytes, save_artifact
    from autoslim.pipeline import apply_recipe
    from autoslim.recipe import Recipe
    from autoslim.searching.driver import search
    from autoslim.searching.experiment import load_experiment
    from autoslim.sparse.policy import settle_storage_policy

    space = [{"type": "quantize.weight", "bits": [4, 8], "optional": False}]
    path = experiment_file(
        trials=2,
        space=space,
        search={"trials": 2, "seed": 0, "warm_start_uniform": [8, 4], "keep_artifacts": "all"},
    )
    run = search(path, out=tmp_path / "run", progress=False)
    experiment, _ = load_experiment(path)
    target = settle_storage_policy(experiment.target)
    for trial, bits in zip(run.study.trials, (8, 4), strict=True):
        standalone = Recipe(
            task=experiment.task,
            seed=experiment.search.seed,
            target=target,
            stages=[{"kind": "quantize", "default": bits}],
        )
        alone = save_artifact(apply_recipe(standalone), standalone, tmp_path / f"uniform{bits}")
        searched = tmp_path / "run" / "artifacts" / f"trial_{trial.number}"
        assert trial.values[1] == artifact_bytes(searched) == artifact_bytes(alone)
        for name in sorted(f.name for f in alone.iterdir()):
            assert (searched / name).read_bytes() == (alone / name).read_bytes(), name
