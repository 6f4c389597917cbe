"""Quantize stages on models written the way users write them (tests/user_models.py):
OddMix (embedding tied to the output head, depthwise and grouped Conv1d, a GRU) fed from
DataLoaders, and a Hugging Face BERT classifier fed dict batches. Each is quantized
through ``apply_recipe``, saved, loaded, and checked for bytes, outputs and ties."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch
from torch import nn

import autoslim.artifact
from autoslim.artifact import load_artifact, save_artifact
from autoslim.data import call_model
from autoslim.pipeline import apply_recipe
from autoslim.recipe import Recipe
from autoslim.space import (
    ModelInfo,
    WeightSlot,
    embedding_tables,
    quantizable_layers,
    stored_weights,
)
from autoslim.task import Task
from autoslim.techniques.quantize import QuantizeConfig, WeightQuantHandler, WeightQuantSpace
from autoslim.techniques.quantize._marks import grid_of
from autoslim.techniques.quantize._mixed_precision import layer_sensitivity, weight_bytes
from tests.user_models import OddMix, bert_classifier, loader_task

ENTRY = "tests.techniques.quantize.test_user_models"


def oddmix() -> OddMix:
    torch.manual_seed(0)
    return OddMix().eval()


def make_oddmix_task() -> Task:
    return loader_task("tokens", oddmix, sizes=(256, 128, 128), batch_size=32)


def make_bert_task() -> Task:
    return loader_task("bert", bert_classifier, sizes=(256, 128, 128), batch_size=32)


def recipe(entry: str, **stage) -> Recipe:
    return Recipe.from_dict(
        {"task": {"entry": f"{ENTRY}:{entry}"}, "stages": [{"kind": "quantize", **stage}]}
    )


def fp32_bytes(model: nn.Module) -> int:
    """What the fp32 model's tensors take, each tensor once."""
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def outputs(model: nn.Module, task: Task) -> torch.Tensor:
    inputs, _ = task.data.val.take(32)
    return call_model(model.eval(), inputs)


# --- the quantize side: layers, ties, marks ----------------------------------------------


def test_oddmix_gru_is_a_width_layer_but_not_a_compressible_one():
    model = oddmix()
    info = ModelInfo.from_model(model)
    assert info.names == ["depthwise", "grouped", "head", "classify"]
    assert info.width_names == [*info.names, "gru"]
    assert info.recurrent[0].params == sum(
        getattr(model.gru, w).numel() for w in ("weight_ih_l0", "weight_hh_l0")
    )
    assert list(quantizable_layers(model)) == info.width_names
    # the tied table is the head's: stored once, under the head, at the head's width
    assert embedding_tables(model) == {}
    stored = stored_weights(model)
    assert "embed.weight" not in stored and stored["head.weight"] is model.head
    assert isinstance(stored["gru.weight_hh_l0"], WeightSlot)


def test_per_layer_widths_cover_the_gru_unless_recurrent_is_off():
    info = ModelInfo.from_model(oddmix())
    params = {f"quant.bits.{n}": 4 for n in info.width_names} | {"quant.enabled": True}
    params["quant.bits.gru"] = 8
    stage = WeightQuantSpace().suggest(optuna.trial.FixedTrial(params), info)
    assert stage == QuantizeConfig(default=4, layers={"gru": 8})
    off = WeightQuantSpace(recurrent=False).suggest(optuna.trial.FixedTrial(params), info)
    assert off.recurrent is False and "gru" not in off.layers


def test_onnxruntime_keeps_recurrent_weights_fp32():
    from autoslim.deploy.runtimes import runtime_named

    forms = runtime_named("onnxruntime").forms("cpu")
    narrowed, notes = WeightQuantSpace(bits=[4, 8, "fp32"]).for_runtime(forms)
    assert narrowed.recurrent is False
    assert any("GRU/LSTM" in note for note in notes)
    torch_forms = runtime_named("torch").forms("cpu")
    assert WeightQuantSpace().for_runtime(torch_forms)[0].recurrent is True


@pytest.mark.parametrize("bits", [4, 8])
def test_quantize_puts_gru_matrices_on_their_grid_and_keeps_the_tie(bits):
    task = make_oddmix_task()
    model = apply_recipe(recipe("make_oddmix_task", default=bits), task=task, model=oddmix())
    assert model.head.weight is model.embed.weight
    for attr in ("weight_ih_l0", "weight_hh_l0"):
        spec = grid_of(model.gru, attr)
        assert spec is not None and spec.bits == bits
        rows = getattr(model.gru, attr).detach()
        assert max(len(torch.unique(r)) for r in rows) <= 2**bits
    assert grid_of(model.gru, "bias_ih_l0") is None  # biases stay fp32
    # the GRU still runs on its (in-place quantized) flat weights
    assert model.gru._flat_weights[0] is model.gru.weight_ih_l0
    outputs(model, task)


def test_rebuild_marks_the_same_buffers_as_apply():
    task = make_oddmix_task()
    stage = QuantizeConfig(default=4, layers={"gru": 3})
    applied = apply_recipe(
        recipe("make_oddmix_task", **stage.model_dump()), task=task, model=oddmix()
    )
    rebuilt = WeightQuantHandler().rebuild(oddmix(), stage)
    shapes = {k: tuple(v.shape) for k, v in applied.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    assert "gru.weight_hh_l0_scale" in shapes


def test_sensitivity_reads_loader_splits_and_covers_the_gru():
    task = make_oddmix_task()
    table = layer_sensitivity(task, oddmix(), [4])
    assert list(table["layer"]) == ["depthwise", "grouped", "head", "classify", "gru"]
    assert table["kl"].notna().all()
    gru = oddmix().gru
    # 4 bits a weight plus one fp32 scale per gate row: 5376 of 36864 bytes
    assert weight_bytes(gru, 4, QuantizeConfig()) == 9216 // 2 + 2 * 96 * 4
    assert weight_bytes(gru, "fp32", QuantizeConfig()) == 9216 * 4


@pytest.mark.slow  # 14 layers, each quantized and evaluated: about a minute on 2 cores
def test_sensitivity_on_dict_batches():
    pytest.importorskip("transformers")
    task = make_bert_task()
    table = layer_sensitivity(task, bert_classifier(), [4])
    assert len(table) == len(quantizable_layers(bert_classifier()))


# --- through the artifact -----------------------------------------------------------------

# Bytes of the artifact directory over the fp32 tensors' bytes (each tensor once): 0.240
# at 4 bits and 0.362 at 8 when measured (60 680 fp32 bytes). Before the GRU was
# quantized, OddMix's uniform 4-bit artifact stopped at 0.76x. Tiny models, so the
# safetensors header and layout record are a good part of it.
ODDMIX_RATIO = {4: 0.27, 8: 0.40}
# BERT (97 928 fp32 bytes, tables at the layers' width): 0.312 and 0.432 when measured,
# 6 kB of them layout record and tensor names of ~200 small tensors.
BERT_RATIO = {4: 0.35, 8: 0.47}


def saved_oddmix(tmp_path, bits):
    task = make_oddmix_task()
    r = recipe("make_oddmix_task", default=bits)
    model = apply_recipe(r, task=task, model=oddmix())
    return task, model, save_artifact(model, r, tmp_path / "a", task=task)


@pytest.mark.parametrize("bits", [4, 8])
def test_oddmix_artifact_stores_the_gru_bit_packed(tmp_path, bits):
    _, _, out = saved_oddmix(tmp_path, bits)
    ratio = autoslim.artifact.artifact_bytes(out) / fp32_bytes(oddmix())
    assert ratio < ODDMIX_RATIO[bits], ratio


@pytest.mark.parametrize("bits", [4, 8])
def test_oddmix_artifact_loads_the_same_and_stays_tied(tmp_path, bits):
    task, model, out = saved_oddmix(tmp_path, bits)
    loaded = load_artifact(out, task=task, runtime=False).model
    assert loaded.head.weight is loaded.embed.weight
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    assert torch.equal(outputs(loaded, task), outputs(model, task))
    # as it runs (8-bit Linear layers on the int8 kernel): close, not bit-equal
    running = load_artifact(out, task=task).model
    assert torch.allclose(outputs(running, task), outputs(model, task), atol=0.05)


def test_an_unquantized_tied_model_saves_too(tmp_path):
    task = make_oddmix_task()
    r = recipe("make_oddmix_task", default="fp32")
    model = apply_recipe(r, task=task, model=oddmix())
    out = save_artifact(model, r, tmp_path / "a", task=task)
    loaded = load_artifact(out, task=task).model
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(outputs(loaded, task), outputs(model, task))


@pytest.mark.parametrize("bits", [4, 8])
def test_bert_classifier_on_dict_batches(tmp_path, bits):
    pytest.importorskip("transformers")
    task = make_bert_task()
    r = recipe("make_bert_task", default=bits, embeddings=bits)
    model = apply_recipe(r, task=task, model=bert_classifier())
    out = save_artifact(model, r, tmp_path / "a", task=task)
    ratio = autoslim.artifact.artifact_bytes(out) / fp32_bytes(bert_classifier())
    assert ratio < BERT_RATIO[bits], ratio
    loaded = load_artifact(out, task=task, runtime=False).model
    assert torch.equal(outputs(loaded, task), outputs(model, task))
    running = load_artifact(out, task=task).model
    assert torch.allclose(outputs(running, task), outputs(model, task), atol=0.05)


def test_int8_recurrent_kernel_takes_the_artifacts_levels():
    """Where the int8 GRU/LSTM kernel is used (wide layers), it computes with exactly
    the stored levels: close to the dequantized fp32 layer, up to activation rounding."""
    from autoslim.techniques.quantize._kernels import int8_dynamic_rnn, supports_int8_dynamic

    if not supports_int8_dynamic():
        pytest.skip("no int8 engine")
    for kind in (nn.GRU, nn.LSTM):
        torch.manual_seed(0)
        model = nn.Sequential(kind(16, 24, num_layers=2, bidirectional=True, batch_first=True))
        stage = QuantizeConfig(default=8)
        WeightQuantHandler().apply(model, stage, None)
        layer = model[0]
        weights = [w for w in layer._flat_weights_names if w.startswith("weight_")]
        fast = int8_dynamic_rnn(layer, grid_of(layer, weights[0]), weights)
        x = torch.randn(4, 5, 16)
        with torch.no_grad():
            expected, got = layer(x)[0], fast(x)[0]
        assert torch.allclose(got, expected, atol=0.03), (got - expected).abs().max()


def test_copy_of_quantized_oddmix_keeps_marks():
    task = make_oddmix_task()
    model = apply_recipe(recipe("make_oddmix_task", default=4), task=task, model=oddmix())
    twin = copy.deepcopy(model)
    assert grid_of(twin.gru, "weight_ih_l0") == grid_of(model.gru, "weight_ih_l0")
    assert twin.head.weight is twin.embed.weight


def test_only_wide_8bit_recurrent_layers_move_onto_the_int8_kernel():
    from autoslim.recipe import Target
    from autoslim.techniques.quantize._kernels import DynamicInt8GRU, supports_int8_dynamic

    if not supports_int8_dynamic():
        pytest.skip("no int8 engine")
    model = nn.ModuleDict({"wide": nn.GRU(8, 256), "narrow": nn.GRU(8, 32), "lstm": nn.LSTM(8, 32)})
    handler = WeightQuantHandler()
    handler.apply(model, QuantizeConfig(default=8), None)
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        expected = model["wide"](x)[0]
    handler.runtime(model, QuantizeConfig(default=8), Target())
    assert isinstance(model["wide"], DynamicInt8GRU)
    assert type(model["narrow"]) is nn.GRU and type(model["lstm"]) is nn.LSTM
    with torch.no_grad():
        assert torch.allclose(model["wide"](x)[0], expected, atol=0.03)
    four = nn.ModuleDict({"wide": nn.GRU(8, 256)})
    handler.apply(four, QuantizeConfig(default=4), None)
    handler.runtime(four, QuantizeConfig(default=4), Target())
    assert type(four["wide"]) is nn.GRU  # 4-bit: decoded, on the fp32 kernel


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_pytorch_transformer_layers_run_their_linears_on_the_int8_kernel():
    """nn.TransformerEncoderLayer's fused inference path reads its Linears' float weights;
    with int8 kernels swapped in, the layers must run layer by layer (padding mask or not),
    and nn.MultiheadAttention's out_proj, whose weight it reads directly, stays a Linear."""
    from autoslim.recipe import Target
    from autoslim.techniques.quantize._kernels import DynamicInt8Linear, supports_int8_dynamic

    if not supports_int8_dynamic():
        pytest.skip("no int8 engine")
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    handler = WeightQuantHandler()
    handler.apply(model, QuantizeConfig(default=8), None)
    x = torch.randn(3, 5, 32)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    with torch.inference_mode():
        expected = [model(x), model(x, src_key_padding_mask=padding)]
    handler.runtime(model, QuantizeConfig(default=8), Target())
    for block in model.layers:
        assert isinstance(block.linear1, DynamicInt8Linear)
        assert isinstance(block.linear2, DynamicInt8Linear)
        assert type(block.self_attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    with torch.inference_mode():
        got = [model(x), model(x, src_key_padding_mask=padding)]
    for out, ref in zip(got, expected, strict=True):
        # padded positions come back as zeros from the fused nested path, so compare the rest
        keep = ~padding.unsqueeze(-1) if out is got[1] else torch.ones(1, dtype=torch.bool)
        diff = ((out - ref) * keep).abs().max() / ref.abs().max()
        assert diff < 0.05, diff  # int8 activations per batch: measured about 1 %
