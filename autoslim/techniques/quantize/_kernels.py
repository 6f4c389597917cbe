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
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear

INT8_ENGINES = ("x86", "fbgemm", "qnnpack", "onednn")


def supports_int8_dynamic() -> bool:
    return torch.backends.quantized.engine in INT8_ENGINES


def int8_dynamic_linear(linear: nn.Linear, spec: GridSpec) -> nn.Module:
    """The same int8 levels and scales as the artifact, on the int8 GEMM kernel."""
    weight = linear.weight.detach()
    scale, zero = grid_params(linear)
    q = (quantize_levels(weight, scale, zero, spec).to(torch.int16) - spec.qmax).to(torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # quantized tensor creation is deprecated, still the int8 path
        if spec.granularity == "per_tensor":
            qweight = torch._make_per_tensor_quantized_tensor(q, float(scale.reshape(-1)[0]), 0)
        else:
            scales = scale.reshape(-1).double()
            zeros = torch.zeros_like(scales, dtype=torch.long)
            qweight = torch._make_per_channel_quantized_tensor(q, scales, zeros, 0)
    module = DynamicInt8Linear(
        linear.in_features, linear.out_features, bias_=linear.bias is not None, dtype=torch.qint8
    )
    module.set_weight_bias(qweight, None if linear.bias is None else linear.bias.detach().float())
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
    if getattr(module, "kernel", None) == "csr":
        return "fp32 CSR (torch.sparse)"
    dtype = getattr(getattr(module, "weight", None), "dtype", torch.float32)
    return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32 dense")
