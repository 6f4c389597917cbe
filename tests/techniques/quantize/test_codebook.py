from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.artifact import decode_state, encode_state, load_artifact, save_artifact
from autoslim.pipeline import ApplyContext, apply_recipe
from autoslim.recipe import Recipe
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantHandler
from autoslim.techniques.quantize._codebook import CodebookSpec, assign, lookup, make_codebook
from autoslim.techniques.quantize._grid import GridSpec, fake_quantize


def test_pow2_codebook_holds_zero_and_signed_powers_of_two_of_the_row_max():
    w = torch.tensor([[0.1, -0.5, 4.0, 0.0]])
    codebook = make_codebook(w, CodebookSpec(bits=3, kind="pow2"))
    assert codebook.tolist() == [[-4.0, -2.0, -1.0, 0.0, 0.0, 1.0, 2.0, 4.0]]
    deq = lookup(assign(w, codebook, CodebookSpec(3, "pow2")), codebook, CodebookSpec(3, "pow2"))
    assert deq.tolist() == [
        [0.0, -1.0, 4.0, 0.0]
    ]  # 0.1 is nearer 0 than 1; -0.5 ties go to the lower index


def test_log_codebook_is_geometric_between_low_percentile_and_max():
    w = torch.linspace(0.01, 1.0, 200).reshape(1, -1)
    codebook = make_codebook(w, CodebookSpec(bits=3, kind="log"))[0]
    positive = codebook[codebook > 0]
    ratios = positive[1:] / positive[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, float(ratios[0])), rtol=1e-5, atol=0)
    assert positive.max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kmeans_beats_the_uniform_grid_in_squared_error(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 256) ** 3  # heavy tails: where a uniform grid wastes levels
    spec = CodebookSpec(bits=bits, kind="kmeans")
    codebook = make_codebook(w, spec)
    kmeans_err = ((lookup(assign(w, codebook, spec), codebook, spec) - w) ** 2).sum()
    uniform_err = ((fake_quantize(w, GridSpec(bits=bits))[0] - w) ** 2).sum()
    assert kmeans_err < uniform_err


@pytest.mark.parametrize("kind", ["pow2", "log", "kmeans"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_codebook_weights_round_trip_through_the_artifact_encoding(kind, per_channel):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 12))
    config = QuantizeConfig(default=3, grid_kind=kind, codebook_per_channel=per_channel)
    WeightQuantHandler().apply(model, config, ApplyContext(task=None, seed=0))  # type: ignore[arg-type]
    tensors, layout = encode_state(model)
    assert layout["0.weight"]["grid"] == {
        "kind": "codebook",
        "bits": 3,
        "codebook": kind,
        "per_channel": per_channel,
    }
    assert tensors["0.weight::q"].numel() == (480 * 3 + 7) // 8
    assert tensors["0.weight_codebook"].shape == (12 if per_channel else 1, 8)
    assert torch.equal(decode_state(tensors, layout)["0.weight"], model[0].weight)


def test_codebook_recipe_loads_back_exactly(tmp_path, tiny_task_ref):
    recipe = Recipe.from_dict(
        {
            "task": tiny_task_ref,
            "stages": [{"kind": "quantize", "default": 2, "grid_kind": "kmeans"}],
        }
    )
    model = apply_recipe(recipe)
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "a")).model
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-6)


def test_codebook_width_and_qat_limits():
    with pytest.raises(ValueError, match="kmeans codebooks take 2-4 bits, not \\[8\\]"):
        QuantizeConfig(default=8, grid_kind="kmeans")
    with pytest.raises(ValueError, match="QAT learns uniform grids"):
        QuantizeConfig(default=4, grid_kind="pow2", qat_epochs=1)
