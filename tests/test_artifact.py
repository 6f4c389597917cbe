from __future__ import annotations

import json

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
from autoslim.sparse import crossover as xo
from autoslim.sparse.choose import feasible_formats
from autoslim.sparse.execute import SparseLinear
from autoslim.sparse.formats import FORMATS, encode
from autoslim.techniques.quantize import mark_grid
from autoslim.techniques.quantize._grid import GridSpec, fake_quantize


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
@pytest.mark.parametrize(
    ("symmetric", "granularity", "group"),
    [(True, "per_channel", None), (False, "group", 16), (False, "per_tensor", None)],
)
def test_encode_decode_round_trip_is_exact(bits, sparsity, symmetric, granularity, group):
    spec = GridSpec(bits=bits, symmetric=symmetric, granularity=granularity, group_size=group)
    model = quantized_linear(spec, sparsity)
    tensors, layout = encode_state(model)
    state = decode_state(tensors, layout)
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
    entry = layout["0.weight"]
    n = 64 * 32
    stored = sum(
        t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::")
    )
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
    stored = sum(
        t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::")
    )
    assert stored == 100 * 1 + 100 * 4
    assert torch.equal(decode_state(tensors, layout)["0.weight"], layer.weight)


def test_artifact_size_equals_sum_of_files_and_load_restores_outputs(tmp_path, tiny_task_ref):
    recipe = Recipe.from_dict(
        {
            "task": tiny_task_ref,
            "stages": [
                {"kind": "prune", "scope": "global", "sparsity": 0.7},
                {"kind": "quantize", "default": 4, "layers": {"features.0": 8}},
            ],
        }
    )
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
    # shipped without defaults: only what differs from them, and every stage's kind
    assert (out / "recipe.yaml").read_text() == recipe.core().to_yaml(compact=True)
    assert "fine_tune_epochs" not in (out / "recipe.yaml").read_text()


def structured_then_4bit(task_ref: dict, ratio: float, seed: int = 0, **training) -> Recipe:
    prune = {"kind": "prune_structured", "ratio": ratio, "round_to": 1, "input_shape": [1, 8, 8]}
    quantize = {"kind": "quantize", "default": 4}
    for key, value in training.items():
        (quantize if key.startswith(("qat", "calibration")) else prune)[key] = value
    return Recipe.from_dict({"task": task_ref, "seed": seed, "stages": [prune, quantize]})


def test_one_architecture_ships_one_recipe_text_whatever_its_training(tmp_path, tiny_task_ref):
    # 0.5123 and 0.512 both keep 62 of the 128 hidden units (and 0.51 does; 0.5 keeps 64), so
    # the two models have one architecture; they differ in every training setting and the seed.
    trained = structured_then_4bit(
        tiny_task_ref,
        0.5123,
        seed=3,
        importance="taylor",
        fine_tune_epochs=1,
        lr=0.00123,
        calibration="mse",
        qat_epochs=1,
        qat_lr=0.000321,
    )
    plain = structured_then_4bit(tiny_task_ref, 0.512)
    model_a, model_b = apply_recipe(trained), apply_recipe(plain)
    assert model_a.classifier[1].out_features == model_b.classifier[1].out_features == 62
    a = save_artifact(model_a, trained, tmp_path / "a")
    b = save_artifact(model_b, plain, tmp_path / "b")
    text = (a / "recipe.yaml").read_text()
    assert text == (b / "recipe.yaml").read_text()
    for training_only in ("seed", "importance", "fine_tune_epochs", "lr", "calibration", "qat"):
        assert training_only not in text, training_only
    # the shortest ratio that keeps every shape: 0.51 does, 0.5 would not
    assert Recipe.load(a / "recipe.yaml").stages[0].ratio == 0.51
    assert apply_recipe(structured_then_4bit(tiny_task_ref, 0.5)).classifier[1].out_features == 64
    loaded, x = load_artifact(a).model, torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model_a.eval()(x), rtol=0, atol=1e-6)


def test_compressed_artifact_is_smaller_than_fp32(tmp_path, tiny_task_ref):
    base = Recipe.from_dict({"task": tiny_task_ref})
    quant = Recipe.from_dict(
        {"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 2}]}
    )
    a = artifact_bytes(save_artifact(apply_recipe(base), base, tmp_path / "a"))
    b = artifact_bytes(save_artifact(apply_recipe(quant), quant, tmp_path / "b"))
    assert b < a / 3


def test_refuses_to_overwrite_a_foreign_directory_and_leaves_nothing_behind(
    tmp_path, tiny_task_ref
):
    foreign = tmp_path / "docs"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    recipe = Recipe.from_dict({"task": tiny_task_ref})
    with pytest.raises(AutoslimError, match="holds files autoslim did not write"):
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
    assert (
        sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("0.weight::"))
        == 32 * 16 * 2
    )
    assert torch.equal(decode_state(tensors, layout)["0.weight"], layer.weight)


def test_eight_bit_linear_layers_load_onto_the_int8_kernel(tmp_path, tiny_task_ref):
    from autoslim.techniques.quantize._kernels import DynamicInt8Linear

    recipe = Recipe.from_dict(
        {"task": tiny_task_ref, "stages": [{"kind": "quantize", "default": 8}]}
    )
    model = apply_recipe(recipe)
    out = save_artifact(model, recipe, tmp_path / "art")
    fast = load_artifact(out).model
    exact = load_artifact(out, runtime=False).model
    assert isinstance(fast.classifier[1], DynamicInt8Linear) and isinstance(
        fast.classifier[4], DynamicInt8Linear
    )
    assert isinstance(
        fast.features[0], nn.Conv2d
    )  # no int8 conv kernel without activation calibration
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(exact(x), model(x), rtol=0, atol=1e-6)
        assert (fast(x).argmax(1) == model(x).argmax(1)).float().mean() > 0.9
        assert (fast(x) - model(x)).abs().max() < 0.1 * model(x).abs().max()


def test_storage_stage_pins_a_format_and_falls_back_when_it_cannot_hold_the_weight(
    tmp_path, tiny_task_ref
):
    recipe = Recipe.from_dict(
        {
            "task": tiny_task_ref,
            "stages": [
                {"kind": "prune", "scope": "global", "sparsity": 0.9},
                {"kind": "storage", "default": "csr", "layers": {"classifier.1": "nm"}},
            ],
        }
    )
    model = apply_recipe(recipe)
    tensors, layout = encode_state(model)
    assert {layout[k]["format"] for k in layout if k != "classifier.1.weight"} == {"csr"}
    assert layout["classifier.1.weight"]["format"] != "nm"  # 90 % random zeros are not 2:4
    loaded = load_artifact(save_artifact(model, recipe, tmp_path / "a"), runtime=False).model
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


@pytest.fixture
def fake_timer(monkeypatch, tmp_path):
    """Crossover timing without a clock: each timed kernel says what it is, a price list times it.

    ``install(csr_ms)`` prices CSR at ``csr_ms(sparsity)`` against dense at 1.0 and returns
    the list of what was timed. The crossover cache file is private to the test (only that
    file: the session's trained baseline stays shared).
    """
    monkeypatch.setattr(xo, "cache_path", lambda: tmp_path / xo.CACHE_FILE)

    def install(csr_ms):
        timed = []

        def kernels(out_features, in_features, batch, sparsity, seed=0):
            return (lambda: ("dense", sparsity)), (lambda: ("csr", sparsity))

        def timer(fn, repeats, warmup=3):
            kernel, sparsity = fn()
            timed.append((kernel, sparsity))
            return csr_ms(sparsity) if kernel == "csr" else 1.0

        monkeypatch.setattr(xo, "linear_kernels", kernels)
        monkeypatch.setattr(xo, "median_ms", timer)
        return timed

    return install


def csr_wins_from_80_percent(sparsity: float) -> float:
    return 4.0 * (1.0 - sparsity)  # faster than dense (1.0) above 75 %: crossover 0.8 on the grid


def pruned_recipe(task_ref: dict, policy: str | None = None, stages: tuple = ()) -> Recipe:
    """classifier.1 (128x32) at 90 % zeros, past the crossover; classifier.4 at 60 %, below it."""
    target = {"threads": 1, "batch_size": 8} | ({"storage_policy": policy} if policy else {})
    return Recipe.from_dict(
        {
            "task": task_ref,
            "target": target,
            "stages": [
                {
                    "kind": "prune",
                    "scope": "layer",
                    "sparsity": 0.9,
                    "layers": {"classifier.4": 0.6},
                },
                *stages,
            ],
        }
    )


def stored_formats(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path / "weights.safetensors"), framework="pt") as f:
        layout = json.loads(f.metadata()["autoslim.layout"])
    return {name.removesuffix(".weight"): entry["format"] for name, entry in layout.items()}


def test_fastest_policy_stores_csr_exactly_where_the_loaded_model_runs_csr(
    tmp_path, tiny_task_ref, fake_timer
):
    timed = fake_timer(csr_wins_from_80_percent)
    recipe = pruned_recipe(tiny_task_ref, "fastest")
    model = apply_recipe(recipe)
    out = save_artifact(model, recipe, tmp_path / "fast")
    formats = stored_formats(out)
    assert formats["classifier.1"] == "csr"
    loaded = load_artifact(out).model
    runs_csr = {
        name
        for name, m in loaded.named_modules()
        if isinstance(m, SparseLinear) and m.kernel == "csr"
    }
    # Only a Linear past its crossover runs CSR (a conv may still be stored CSR, smallest).
    assert runs_csr == {"classifier.1"}
    # Both Linear shapes were timed once, at save; the load read the cache.
    assert len(timed) == 2 * 2 * len(xo.DEFAULT_SPARSITIES)
    # Every layer that runs dense is stored in its smallest format, never dense for speed.
    smallest = stored_formats(
        save_artifact(model, pruned_recipe(tiny_task_ref), tmp_path / "small")
    )
    assert {k: v for k, v in formats.items() if k != "classifier.1"} == {
        k: v for k, v in smallest.items() if k != "classifier.1"
    }
    assert smallest["classifier.1"] != "csr"  # so the two policies really differ here
    # ...and yet the loaded models run the same kernels: storage does not pick the kernel.
    loaded_small = load_artifact(tmp_path / "small").model
    assert {n for n, m in loaded_small.named_modules() if isinstance(m, SparseLinear)} == runs_csr


def test_fastest_policy_is_the_smallest_where_the_sparse_kernel_never_wins(
    tmp_path, tiny_task_ref, fake_timer
):
    fake_timer(lambda sparsity: 2.0)
    model = apply_recipe(pruned_recipe(tiny_task_ref))
    fast = save_artifact(model, pruned_recipe(tiny_task_ref, "fastest"), tmp_path / "fast")
    small = save_artifact(model, pruned_recipe(tiny_task_ref, "smallest"), tmp_path / "small")
    assert (fast / "weights.safetensors").read_bytes() == (
        small / "weights.safetensors"
    ).read_bytes()


def test_smallest_policy_never_times_and_never_stores_a_larger_encoding(
    tmp_path, tiny_task_ref, monkeypatch
):
    monkeypatch.setattr(
        xo, "median_ms", lambda *a, **k: pytest.fail("timed a kernel for a smallest artifact")
    )
    recipe = pruned_recipe(tiny_task_ref)
    model = apply_recipe(recipe)
    tensors, layout = encode_state(model)
    for name in layout:  # fp32 weights stored raw (dense was smallest) are not in the layout
        matrix = model.get_parameter(name).detach()
        matrix = matrix.reshape(matrix.shape[0], -1)
        stored = sum(
            t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(f"{name}::")
        )
        assert stored == min(
            encode(matrix, f).nbytes for f in feasible_formats(matrix, FORMATS, (2, 4))
        ), name
    save_artifact(model, recipe, tmp_path / "a")


def test_the_policy_is_recorded_in_the_artifact_recipe_and_replays_to_the_same_bytes(
    tmp_path, tiny_task_ref, fake_timer
):
    fake_timer(csr_wins_from_80_percent)
    recipe = pruned_recipe(tiny_task_ref, "fastest")
    first = save_artifact(apply_recipe(recipe), recipe, tmp_path / "first")
    replayed = Recipe.load(first / "recipe.yaml")
    assert replayed.target.storage_policy == "fastest"
    again = save_artifact(apply_recipe(replayed), replayed, tmp_path / "again")
    assert (again / "weights.safetensors").read_bytes() == (
        first / "weights.safetensors"
    ).read_bytes()
    assert stored_formats(again)["classifier.1"] == "csr"


def test_a_storage_stage_can_ask_for_fastest_or_smallest_per_layer(
    tmp_path, tiny_task_ref, fake_timer
):
    fake_timer(csr_wins_from_80_percent)
    stage = {"kind": "storage", "layers": {"classifier.1": "fastest"}}
    recipe = pruned_recipe(tiny_task_ref, stages=(stage,))
    assert (
        stored_formats(save_artifact(apply_recipe(recipe), recipe, tmp_path / "a"))["classifier.1"]
        == "csr"
    )
    stage = {"kind": "storage", "default": "smallest"}
    recipe = pruned_recipe(tiny_task_ref, "fastest", stages=(stage,))
    assert (
        stored_formats(save_artifact(apply_recipe(recipe), recipe, tmp_path / "b"))["classifier.1"]
        != "csr"
    )


def test_fastest_leaves_layers_on_the_int8_kernel_out_of_csr(tmp_path, tiny_task_ref, fake_timer):
    fake_timer(csr_wins_from_80_percent)
    quantize = {"kind": "quantize", "layers": {"classifier.1": 8}}
    recipe = pruned_recipe(tiny_task_ref, "fastest", stages=(quantize,))
    model = apply_recipe(recipe)
    assert stored_formats(save_artifact(model, recipe, tmp_path / "a"))["classifier.1"] != "csr"
    assert not any(
        isinstance(m, SparseLinear) for m in load_artifact(tmp_path / "a").model.modules()
    )
