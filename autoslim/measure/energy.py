"""Energy per batch: NVML's counter on a GPU, otherwise an explicit estimate.

The estimate counts what the runtime really executes, from one traced forward pass:
multiply-accumulates at the precision the layer's kernel computes in, the weight bytes
read from DRAM once per batch and the activations moved through on-chip SRAM, priced
with Horowitz (ISSCC 2014, 45 nm). A weight stored at 4 bits but dequantized to fp32
before the matmul is priced as fp32 compute; an int8 kernel as int8 multiplies with
int32 accumulation (priced at the int8 add, a lower bound). Every estimate is labelled ``estimated``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from autoslim.data import call_model
from autoslim.sparse.execute import SparseLinear
from autoslim.techniques.quantize._kernels import DynamicInt8Linear

# picojoules, Horowitz ISSCC 2014 (45 nm)
PJ_MULT = {torch.float32: 3.7, torch.float16: 1.1, torch.bfloat16: 1.1, torch.int8: 0.2}
PJ_ADD = {torch.float32: 0.9, torch.float16: 0.4, torch.bfloat16: 0.4, torch.int8: 0.03}
PJ_DRAM_PER_BYTE = 640.0 / 4  # 32-bit DRAM read
PJ_SRAM_PER_BYTE = 5.0 / 4  # 32-bit read from an 8 KB SRAM


def _macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, SparseLinear) and module.kernel == "csr":
        return (
            output.numel() // module.out_features * module.matrix.values.numel()
        )  # only non-zeros
    if isinstance(module, (nn.Linear, DynamicInt8Linear, SparseLinear)):
        return output.numel() * module.in_features
    kernel = module.weight[0].numel()  # in_channels/groups × kernel size
    return output.numel() * kernel


def _weight_and_dtype(module: nn.Module) -> tuple[int, int, torch.dtype]:
    """(weight elements, bytes per element, compute dtype) of what the kernel really reads."""
    if isinstance(module, DynamicInt8Linear):
        return module.in_features * module.out_features, 1, torch.int8
    if isinstance(module, SparseLinear) and module.kernel == "csr":
        matrix = module.matrix  # value + int64 column index per non-zero; row pointers ignored
        return (
            matrix.values.numel(),
            matrix.values.element_size() + matrix.col_indices.element_size(),
            torch.float32,
        )
    return module.weight.numel(), module.weight.element_size(), module.weight.dtype


def estimate_energy_mj(model: nn.Module, batch: torch.Tensor) -> float:
    """Estimated energy of one forward pass of ``batch``, in millijoules."""
    total_pj = 0.0

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total_pj
        numel, size, dtype = _weight_and_dtype(module)
        total_pj += _macs(module, output) * (PJ_MULT.get(dtype, 3.7) + PJ_ADD.get(dtype, 0.9))
        total_pj += numel * size * PJ_DRAM_PER_BYTE
        moved = (
            inputs[0].numel() * inputs[0].element_size() + output.numel() * output.element_size()
        )
        total_pj += moved * PJ_SRAM_PER_BYTE

    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, DynamicInt8Linear, SparseLinear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.inference_mode():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return total_pj * 1e-9


def nvml_energy_mj(
    fn: Callable[[], object], *, min_seconds: float = 3.0, device_index: int = 0
) -> float:
    """Measured GPU energy per call of ``fn`` from NVML's total-energy counter.

    The counter updates every 20-100 ms, so calls are repeated for ``min_seconds``.
    """
    import pynvml

    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        torch.cuda.synchronize()
        start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        start, calls = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds:
            fn()
            calls += 1
        torch.cuda.synchronize()
        return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_mj) / calls
    finally:
        pynvml.nvmlShutdown()
