from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autoslim.artifact import load_artifact, save_artifact
from autoslim.errors import TrialFailed
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe, TaskRef
from autoslim.task import load_task
from autoslim.techniques.quantize import grid_of, grid_params
from autoslim.techniques.quantize._grid import GridSpec, dequantize_levels, quantize_levels
from autoslim.techniques.quantize._qat import (
    LSQFakeQuant,
    STEFakeQuant,
    fold_batchnorm,
    round_ste,
    scale_grad,
)
from autoslim.train import TrainHooks


def test_round_ste_rounds_forward_and_passes_gradient_through():
    x = torch.tensor([0.2, 1.6, -2.4], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_scale_grad_keeps_value_and_scales_gradient():
    x = torch.tensor([3.0], requires_grad=True)
    y = scale_grad(x, 0.25)
    assert y.item() == 3.0
    y.backward()
    assert x.grad.item() == 0.25


def test_ste_gradient_is_one_inside_the_clip_range_and_zero_outside():
    spec = GridSpec(bits=2, calibration="percentile", percentile=75.0)
    w = torch.tensor([[0.1, -0.2, 0.3, 4.0]], requires_grad=True)
    STEFakeQuant(spec)(w).sum().backward()
    # the clip is the 75th percentile of |w|; 4.0 lies outside and gets no gradient
    assert w.grad[0, 3].item() == 0.0
    assert w.grad[0, :3].tolist() == [1.0, 1.0, 1.0]


def test_lsq_step_gradient_matches_the_paper_formula():
    spec = GridSpec(bits=3)  # Qp = 3
    w = torch.tensor([[0.5, -1.0, 2.9, 10.0]])
    quant = LSQFakeQuant(spec, w)
    with torch.no_grad():
        quant.step.fill_(1.0)
    quant(w).sum().backward()
    # d(q*s)/ds: -w/s + round(w/s) inside the range, ±Qp when clipped (Esser et al. 2020)
    v = w / 1.0
    inside = torch.where(v.abs() < 3, -v + v.round(), torch.sign(v) * 3)
    expected = inside.sum().item() / math.sqrt(4 * 3)
    assert quant.step.grad.item() == pytest.approx(expected)


def test_batchnorm_folding_is_exact_in_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model[1].weight.data.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(3, 2, 6, 6)
    before = model(x)
    assert fold_batchnorm(model) == 1
    assert isinstance(model[1], nn.Identity) and model[0].bias is not None
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["ste", "lsq"])
def test_qat_recipe_lands_on_the_grid_and_replays_from_the_artifact(
    tmp_path, tiny_task_ref, method
):
    recipe = Recipe.from_dict(
        {
            "task": tiny_task_ref,
            "stages": [
                {
                    "kind": "quantize",
                    "default": 4,
                    "fold_bn": True,
                    "qat_epochs": 1,
                    "qat_lr": 1e-3,
                    "qat_method": method,
                }
            ],
        }
    )
    model = apply_recipe(recipe)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    for module in (model.features[0], model.classifier[1]):
        spec = grid_of(module)
        scale, zero = grid_params(module)
        levels = quantize_levels(module.weight, scale, zero, spec)
        assert int(levels.max()) <= 2 * spec.qmax
        torch.testing.assert_close(
            dequantize_levels(levels, scale, zero, spec), module.weight, rtol=0, atol=1e-6
        )
    out = save_artifact(model, recipe, tmp_path / "art")
    loaded = load_artifact(out).model
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


def test_qat_divergence_fails_the_trial_with_a_reason(tiny_task_ref):
    recipe = Recipe.from_dict(
        {"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 4, "qat_epochs": 1}]}
    )
    task = load_task(TaskRef(**tiny_task_ref))
    hooks = TrainHooks(loss=lambda m, x, y: m(x).sum() * float("inf"))
    with pytest.raises(TrialFailed, match="training loss became"):
        apply_recipe(recipe, task=task, hooks=hooks)


def test_the_benchmarked_4_bit_qat_setting_is_a_recipe_stage_and_a_search_space_setting():
    """benchmarks/quantization.py's MNIST-1D 4-bit QAT row is one quantize stage; a
    quantize.weight component with its values fixed suggests exactly that stage."""
    import importlib.util
    from pathlib import Path

    import optuna

    from autoslim.space import LayerInfo, ModelInfo
    from autoslim.techniques.quantize import QuantizeConfig, WeightQuantSpace

    path = Path(__file__).parents[3] / "benchmarks" / "quantization.py"
    spec = importlib.util.spec_from_file_location("bench_quantization", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stage = QuantizeConfig(**{k: v for k, v in bench.QAT_STAGE.items() if k != "kind"})
    assert (stage.default, stage.granularity, stage.symmetric) == (
        4,
        "per_channel",
        True,
    )  # every layer 4-bit
    assert not stage.layers
    space = WeightQuantSpace(
        bits=[4],
        per_layer=False,
        optional=False,
        qat_method=[stage.qat_method],
        qat_epochs={"low": stage.qat_epochs, "high": stage.qat_epochs},
        qat_lr={"low": stage.qat_lr, "high": stage.qat_lr, "log": True},
    )
    info = ModelInfo((LayerInfo("features.0", "", 0, ()), LayerInfo("classifier.1", "", 0, ())), 0)
    suggested = space.suggest(optuna.trial.FixedTrial({"quant.bits": 4}), info)
    assert suggested == stage
