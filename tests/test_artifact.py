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
from autoslim.techniques.quant_grid import GridSpec, fake_quantize
from autoslim.techniques.quantize import mark_grid


def quantized_linear(spec: GridSpec, sparsity: float) -> nn.Module:
    torch.manual_seed(spec.bits)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        w = layer.weight
        w[torch.rand_like(w) < sparsity] = 0.0
        deq, scale, zero = fake_quantize(w, spec)
        w.copy_(deq)
    mark_grid(layer, spec, scale, zero)
    return nn.Sequential(layer)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
@pytest.mark.parametrize(("symmetric", "granularity", "group"),
                         [(True, "per_channel", None), (False, "group", 16), (False, "per_tensor", None)])
def test_encode_decode_round_trip_is_exact(bits, sparsity, symmetric, granularity, group):
    spec = GridSpec(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group)
    model = quantized_linear(spec, sparsity)
    tensors, layout = encode_state(model)
    state = decode_state(tensors, layout)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    entry = layout["0.weight"]
    n = 64 * 32
    stored = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::"))
    nnz = int((model[0].weight != 0).sum())
    dense_packed, bitmap = (n * bits + 7) // 8, (n + 7) // 8 + (nnz * bits + 7) // 8
    if entry["enc"] == "sparse":  # symmetric grids: the smallest of every sparse format
        assert stored <= min(dense_packed, bitmap)
        assert entry["format"] != "dense" or stored == dense_packed
    else:  # dense packed integers, or a 1-bit map plus packed non-zeros, whichever is smaller
        assert stored == min(dense_packed, bitmap)


def test_sparse_float_weights_take_the_smallest_format():
    layer = nn.Linear(100, 10)
    with torch.no_grad():
        layer.weight[:, 10:] = 0.0
    tensors, layout = encode_state(nn.Sequential(layer))
    # every row holds exactly 10 non-zeros: ELLPACK (1-byte column indices + values) beats
    # the bitmap (125 + 400 bytes) and CSR (11 + 100 + 400 bytes)
    assert layout["0.weight"]["format"] == "ellpack"
    stored = sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::"))
    assert stored == 100 * 1 + 100 * 4
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


def test_fp16_weights_take_two_bytes_each_and_round_trip():
    from autoslim.techniques.quantize import FLOAT_ATTR

    layer = nn.Linear(32, 16)
    with torch.no_grad():
        layer.weight.copy_(layer.weight.half().float())
    setattr(layer, FLOAT_ATTR, "fp16")
    tensors, layout = encode_state(nn.Sequential(layer))
    assert layout["0.weight"]["format"] == "dense"
    assert sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::")) == 32 * 16 * 2
    assert torch.equal(decode_state(tensors, layout)["0.weight"], layer.weight)


def test_eight_bit_linear_layers_load_onto_the_int8_kernel(tmp_path, tiny_task_ref):
    from autoslim.techniques.kernels import DynamicInt8Linear

    recipe = Recipe.from_dict({"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 8}]})
    model = apply_recipe(recipe)
    out = save_artifact(model, recipe, tmp_path / "art")
    fast = load_artifact(out).model
    exact = load_artifact(out, runtime=False).model
    assert isinstance(fast.classifier[1], DynamicInt8Linear) and isinstance(fast.classifier[4], DynamicInt8Linear)
    assert isinstance(fast.features[0], nn.Conv2d)  # no int8 conv kernel without activation calibration
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x), rtol=0, atol=1e-6)
        assert (fast(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.9
        assert (fast(x) - model(x)).abs().max() < 0.1 * model(x).abs().max()


def test_storage_stage_pins_a_format_and_falls_back_when_it_cannot_hold_the_weight(tmp_path, tiny_task_ref):
    recipe = Recipe.from_dict({"task": tiny_task_ref, "stages": [
        {"kind": "prune", "scope": "global", "sparsity": 0.9},
        {"kind": "storage", "default": "csr", "layers": {"classifier.4": "nm"}},
    ]})
    model = apply_recipe(recipe)
    tensors, layout = encode_state(model)
    assert {layout[k]["format"] for k in layout if k != "classifier.4.weight"} == {"csr"}
    assert layout["classifier.4.weight"]["format"] != "nm"  # 90 % random zeros are not 2:4
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "a"), runtime=False).model
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
