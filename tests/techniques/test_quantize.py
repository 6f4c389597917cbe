from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.pipeline import ApplyContext
from autoslim.techniques.quantize import (
    QuantizeConfig,
    WeightQuantHandler,
    channel_scale,
    dequantize_weight,
    qmax,
    quantize_weight,
    quantized_bits,
)


def reference_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Textbook symmetric per-output-channel min-max fake quantization, row by row."""
    limit = 2 ** (bits - 1) - 1
    out = torch.empty_like(w)
    for c in range(w.shape[0]):
        row = w[c]
        scale = row.abs().max() / limit
        if scale == 0:
            out[c] = 0
            continue
        out[c] = torch.clamp(torch.round(row / scale), -limit, limit) * scale
    return out


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 3, 3), (3, 2, 5)])
def test_quantized_values_match_reference_formula(bits, shape):
    torch.manual_seed(bits)
    w = torch.randn(shape)
    w[0] = 0.0  # a fully pruned channel must stay exactly zero
    scale = channel_scale(w, bits)
    q = quantize_weight(w, scale, bits)
    assert q.dtype == torch.int8
    assert int(q.abs().max()) == qmax(bits)
    assert len(torch.unique(q)) <= 2 * qmax(bits) + 1
    torch.testing.assert_close(dequantize_weight(q, scale), reference_quantize(w, bits), rtol=0, atol=1e-6)


def test_two_bits_is_ternary_and_eight_bits_is_127_levels_each_side():
    assert qmax(2) == 1 and qmax(8) == 127
    w = torch.tensor([[-1.0, -0.4, 0.0, 0.6, 1.0]])
    q = quantize_weight(w, channel_scale(w, 2), 2)
    assert q.tolist() == [[-1, 0, 0, 1, 1]]


def test_handler_quantizes_only_the_named_layers():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    before = model[2].weight.detach().clone()
    config = QuantizeConfig(default="fp32", layers={"0": 3})
    WeightQuantHandler().apply(model, config, ApplyContext(task=None, seed=0))  # type: ignore[arg-type]
    assert quantized_bits(model[0]) == 3 and quantized_bits(model[2]) is None
    assert torch.equal(model[2].weight, before)
    levels = torch.unique(model[0].weight / model[0].weight_scale[:, None]).round()
    assert levels.abs().max() <= 3 and len(levels) <= 7


def test_bits_by_layer_resolves_default_and_regex():
    config = QuantizeConfig(default=8, layers={"re:b.*": "fp32", "a": 2})
    assert config.bits_by_layer(["a", "b1", "c"]) == {"a": 2, "c": 8}
