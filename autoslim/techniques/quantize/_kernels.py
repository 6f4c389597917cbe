"""Real low-bit kernels, and which (bit width, device) pairs have one.

Only kernels that exist and were measured faster are used: on CPU, 8-bit Linear layers
run on PyTorch's int8 dynamic-quantization Linear (fbgemm/x86: int8 weights, activations
quantized per batch, int32 accumulation). ``benchmarks/quantization.py`` measures it
against fp32 and against ONNX Runtime's dynamic int8 on the same layers.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from autoslim.techniques.quantize._grid import GridSpec, fake_quantize, quantize_levels
from autoslim.techniques.quantize._marks import grid_params, mark_grid

with warnings.catch_warnings():
    warnings.simplefilter(
        "ignore"
    )  # torch.ao.quantization is deprecated but is what runs int8 here
    from torch.ao.nn.quantized.dynamic import GRU as DynamicInt8GRU
    from torch.ao.nn.quantized.dynamic import LSTM as DynamicInt8LSTM
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.nn.quantized.dynamic.modules.rnn import PackedParameter

INT8_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


def supports_int8_dynamic() -> bool:
    return torch.backends.quantized.engine in INT8_ENGINES


def _int8_weight(module: nn.Module, spec: GridSpec, weight: str = "weight") -> torch.Tensor:
    """A quantized tensor holding exactly the artifact's int8 levels and scales."""
    tensor = getattr(module, weight).detach()
    scale, zero = grid_params(module, weight)
    q = (quantize_levels(tensor, scale, zero, spec).to(torch.int16) - spec.qmax).to(torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # quantized tensor creation is deprecated, still the int8 path
        if spec.granularity == "per_tensor":
            return torch._make_per_tensor_quantized_tensor(q, float(scale.reshape(-1)[0]), 0)
        scales = scale.reshape(-1).double()
        zeros = torch.zeros_like(scales, dtype=torch.long)
        return torch._make_per_channel_quantized_tensor(q, scales, zeros, 0)


def takes_int8_kernel(linear: nn.Linear) -> bool:
    """Whether a Linear may be swapped for the int8 kernel: not when its parent reads its
    ``weight`` tensor instead of calling it (``nn.MultiheadAttention``'s ``out_proj``, which
    PyTorch marks ``NonDynamicallyQuantizableLinear`` for that reason)."""
    return not isinstance(linear, nn.modules.linear.NonDynamicallyQuantizableLinear)


def off_fused_transformer_path(model: nn.Module) -> None:
    """Keep PyTorch's transformer layers holding int8 kernels off their fused inference path.

    ``nn.TransformerEncoderLayer`` (and ``nn.TransformerEncoder`` with a padding mask) runs
    a fused kernel in inference that reads ``linear1.weight`` and ``linear2.weight`` as
    float tensors; an int8 Linear has none (its ``weight`` is a method), so the check
    itself crashes. The layer-by-layer path calls the Linears, int8 kernels included.
    ``activation_relu_or_gelu`` is read only to choose the fused path (0: not fused), and
    ``use_nested_tensor`` only by the encoder's nested-tensor path.
    """
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _holds_int8(module):
            module.activation_relu_or_gelu = 0
        if isinstance(module, nn.TransformerEncoder) and _holds_int8(module):
            module.use_nested_tensor = False


def _holds_int8(module: nn.Module) -> bool:
    return any(isinstance(m, DynamicInt8Linear) for m in module.modules())


def int8_dynamic_linear(linear: nn.Linear, spec: GridSpec) -> nn.Module:
    """The same int8 levels and scales as the artifact, on the int8 GEMM kernel."""
    qweight = _int8_weight(linear, spec)
    module = DynamicInt8Linear(
        linear.in_features, linear.out_features, bias_=linear.bias is not None, dtype=torch.qint8
    )
    module.set_weight_bias(qweight, None if linear.bias is None else linear.bias.detach().float())
    return module


# Recurrent layers run on torch's dynamic int8 GRU/LSTM (int8 GEMMs for the input and
# hidden projections, activations quantized every step with reduce_range) only from
# these hidden sizes up: there it won; below, the per-step activation quantization costs
# what the smaller GEMMs save, or more. Paired rounds on the shared 2-core box (load 3-6
# from other jobs), batch 64, 16 steps, ``python tests/techniques/quantize/
# rnn_kernel_timing.py THREADS ROUNDS``, int8/fp32 median [25th, 75th percentile]:
#   GRU  hidden 32: 0.94 [0.82, 1.16] (1 thread), 0.85 [0.15, 5.67] (2): no gain
#   GRU  hidden 128: 0.67 [0.58, 0.74] (1), 0.66 [0.39, 1.46] (2)
#   GRU  hidden 256: 0.61 [0.54, 0.67] (1), 0.51 [0.33, 0.91] (2)
#   GRU  hidden 512: 0.37 [0.35, 0.40] (1), 0.42 [0.34, 0.61] (2)
#   LSTM hidden 32-128: 1.02-3.86 (1), 1.74-7.95 (2): slower
#   LSTM hidden 256: 0.66 [0.58, 0.73] (1), 0.78 [0.52, 1.43] (2): not clear at 2 threads
#   LSTM hidden 512: 0.41 [0.38, 0.44] (1), 0.68 [0.46, 0.99] (2)
# So an 8-bit GRU of OddMix's size (hidden 32) stays on the fp32 kernel, decoded.
RNN_INT8_MIN_HIDDEN = {"GRU": 256, "LSTM": 512}


def int8_rnn_wins(layer: nn.RNNBase) -> bool:
    """Whether the int8 GRU/LSTM kernel exists for this layer and was measured faster."""
    threshold = RNN_INT8_MIN_HIDDEN.get(type(layer).__name__)
    return (
        threshold is not None
        and type(layer) in (nn.GRU, nn.LSTM)
        and layer.bias
        and getattr(layer, "proj_size", 0) == 0
        and layer.hidden_size >= threshold
    )


def int8_dynamic_rnn(layer: nn.RNNBase, spec: GridSpec, weights: list[str]) -> nn.Module:
    """The same int8 levels and scales as the artifact, on torch's dynamic int8 GRU/LSTM
    (``weights``: the layer's matrices, each marked with its own 8-bit grid)."""
    kind = DynamicInt8GRU if isinstance(layer, nn.GRU) else DynamicInt8LSTM
    module = kind(
        layer.input_size,
        layer.hidden_size,
        layer.num_layers,
        layer.bias,
        layer.batch_first,
        layer.dropout,
        layer.bidirectional,
        torch.qint8,
    )
    values = []
    for index in range(layer.num_layers):
        for suffix in ("", "_reverse")[: 2 if layer.bidirectional else 1]:
            names = {g: f"weight_{g}_l{index}{suffix}" for g in ("ih", "hh")}
            if not set(names.values()) <= set(weights):
                raise ValueError(f"{type(layer).__name__} has no grid for layer {index}{suffix}")
            biases = {g: getattr(layer, f"bias_{g}_l{index}{suffix}").detach() for g in names}
            packed = {
                g: torch.ops.quantized.linear_prepack(_int8_weight(layer, spec, n), biases[g])
                for g, n in names.items()
            }
            cell = torch.ops.quantized.make_quantized_cell_params_dynamic(
                packed["ih"], packed["hh"], biases["ih"], biases["hh"], True
            )
            values.append(PackedParameter(cell))
    module._all_weight_values = nn.ModuleList(values)
    return module


def int8_engine_warm_up() -> None:
    """Run one tiny int8 Linear so the engine's one-off set-up is not billed to a model."""
    if not supports_int8_dynamic():
        return

    linear = nn.Linear(16, 8)
    spec = GridSpec(bits=8)
    with torch.no_grad():
        deq, scale, zero = fake_quantize(linear.weight, spec)
        linear.weight.copy_(deq)
    mark_grid(linear, spec, scale, zero)
    with torch.inference_mode():
        int8_dynamic_linear(linear, spec)(torch.randn(4, 16))


def kernel_name(module: nn.Module) -> str:
    """What executes this layer, for reports and the energy estimate."""
    if isinstance(module, DynamicInt8Linear):
        return "int8 dynamic (torch fbgemm/x86)"
    if isinstance(module, (DynamicInt8GRU, DynamicInt8LSTM)):
        return "int8 dynamic recurrent (torch fbgemm/x86)"
    if getattr(module, "kernel", None) == "csr":
        return "fp32 CSR (torch.sparse)"
    dtype = getattr(getattr(module, "weight", None), "dtype", torch.float32)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32 dense")
