from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.artifact import (
    artifact_bytes,
    decode_state,
    encode_state,
    load_artifact,
    save_artifact,
)
from autoslim.errors import AutoslimError
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.techniques.quantize import (
    channel_scale,
    dequantize_weight,
    mark_quantized,
    quantize_weight,
)


def quantized_linear(bits: int, sparsity: float) -> nn.Module:
    torch.manual_seed(bits)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        w = layer.weight
        w[torch.rand_like(w) < sparsity] = 0.0
        scale = channel_scale(w, bits)
        w.copy_(dequantize_weight(quantize_weight(w, scale, bits), scale))
    mark_quantized(layer, bits, scale)
    return nn.Sequential(layer)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_encode_decode_round_trip_is_exact(bits, sparsity):
    model = quantized_linear(bits, sparsity)
    tensors, layout = encode_state(model)
    state = decode_state(tensors, layout)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    entry = layout["0.weight"]
    n = 64 * 32
    stored = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::"))
    # dense packed integers, or a 1-bit map plus packed non-zeros, whichever is smaller
    assert stored == min((n * bits + 7) // 8, (n + 7) // 8 + (entry.get("nnz", n) * bits + 7) // 8)


def test_sparse_float_weights_are_stored_as_bitmap_plus_values():
    layer = nn.Linear(100, 10)
    with torch.no_grad():
        layer.weight[:, 10:] = 0.0
    tensors, layout = encode_state(nn.Sequential(layer))
    assert layout["0.weight"]["enc"] == "fp32_bitmap"
    assert tensors["0.weight::values"].numel() == 100
    assert torch.equal(decode_state(tensors, layout)["0.weight"], layer.weight)


def test_artifact_size_equals_sum_of_files_and_load_restores_outputs(tmp_path, tiny_task_ref):
    recipe = Recipe.from_dict({"task": tiny_task_ref, "stages": [
        {"kind": "prune", "scope": "global", "sparsity": 0.7},
        {"kind": "quantize", "default": 4, "layers": {"features.0": 8}},
    ]})
    model = apply_recipe(recipe)
    out = save_artifact(model, recipe, tmp_path / "art")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["recipe.yaml", "weights.safetensors"]
    assert artifact_bytes(out) == sum(p.stat().st_size for p in out.iterdir())
    loaded = load_artifact(out)
    assert loaded.size_bytes == artifact_bytes(out)
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model(x), rtol=0, atol=1e-6)
    assert Recipe.load(out / "recipe.yaml") == recipe.core()


def test_compressed_artifact_is_smaller_than_fp32(tmp_path, tiny_task_ref):
    base = Recipe.from_dict({"task": tiny_task_ref})
    quant = Recipe.from_dict({"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 2}]})
    a = artifact_bytes(save_artifact(apply_recipe(base), base, tmp_path / "a"))
    b = artifact_bytes(save_artifact(apply_recipe(quant), quant, tmp_path / "b"))
    assert b < a / 3


def test_refuses_to_overwrite_a_foreign_directory_and_leaves_nothing_behind(tmp_path, tiny_task_ref):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    recipe = Recipe.from_dict({"task": tiny_task_ref})
    with pytest.raises(AutoslimError, match="not an autoslim artifact"):
        save_artifact(apply_recipe(recipe), recipe, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]


def test_loading_a_non_artifact_is_a_user_error(tmp_path):
    with pytest.raises(AutoslimError, match="not an autoslim artifact"):
        load_artifact(tmp_path)
