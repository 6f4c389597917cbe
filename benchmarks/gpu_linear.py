"""GPU kernels for quantized linear layers: latency and NVML energy, measured per kernel.

For each shape (tokens × in → out) it times what really runs on the card: fp32 (TF32 off),
fp16, bf16 (``F.linear``), fp8 e4m3 (``torch._scaled_mm``, row-wise scales), int8
(``torch._int_mm``, int32 accumulation, dequantized after) and int4 weight-only
(``torch._weight_int4pack_mm``, group size 128, bf16 activations). Energy per call comes
from NVML's total-energy counter over runs of at least ``--seconds`` seconds. A kernel
that does not exist on this torch/card is reported with the reason, not skipped silently.

    python benchmarks/gpu_linear.py [--json] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _cuda_timing import cuda_ms  # benchmarks/ is on sys.path when run as a script

SHAPES = [(8192, 4096, 4096), (64, 4096, 4096), (64, 768, 3072)]


def nvml_mj_per_call(fn: Callable[[], object], seconds: float) -> float | None:
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        torch.cuda.synchronize()
        start_mj, start, calls = (
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle),
            time.perf_counter(),
            0,
        )
        while time.perf_counter() - start < seconds:
            for _ in range(20):
                fn()
            calls += 20
            torch.cuda.synchronize()
        return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_mj) / calls
    finally:
        pynvml.nvmlShutdown()


def _int4pack(q: torch.Tensor) -> torch.Tensor:
    """torch's int4 packing took int32 [n, k] before 2.5 and uint8 [n, k/2] since."""
    try:
        return torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8), 8)
    except RuntimeError:
        return torch._convert_weight_to_int4pack(q, 8)


def kernels(m: int, k: int, n: int) -> dict[str, Callable[[], Callable[[], object]]]:
    """Each entry builds its operands once and returns the call to time."""
    x32, w32 = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda") / k**0.5

    def fp(dtype):
        def build():
            x, w = x32.to(dtype), w32.to(dtype)
            return lambda: F.linear(x, w)

        return build

    def fp8():
        fmax = torch.finfo(torch.float8_e4m3fn).max
        xs = x32.abs().amax(dim=1, keepdim=True) / fmax
        ws = w32.abs().amax(dim=1, keepdim=True) / fmax
        xq = (x32 / xs).to(torch.float8_e4m3fn)
        wq = (w32 / ws).to(torch.float8_e4m3fn)
        return lambda: torch._scaled_mm(
            xq, wq.t(), scale_a=xs, scale_b=ws.t(), out_dtype=torch.bfloat16
        )

    def int8():
        xs = x32.abs().amax(dim=1, keepdim=True) / 127
        ws = w32.abs().amax(dim=1, keepdim=True) / 127
        xq = torch.round(x32 / xs).to(torch.int8)
        wq = torch.round(w32 / ws).to(torch.int8)  # [n, k] row-major, so wq.t() is column-major
        return lambda: torch._int_mm(xq, wq.t()).float() * xs * ws.t()

    def int4():
        group = 128
        wg = w32.reshape(n, k // group, group)
        lo, hi = wg.amin(dim=-1, keepdim=True), wg.amax(dim=-1, keepdim=True)
        scale = (hi - lo).clamp_min(1e-8) / 15
        q = torch.clamp(torch.round((wg - lo) / scale), 0, 15).to(torch.int32).reshape(n, k)
        packed = _int4pack(q)
        zeros = lo + 8 * scale  # the kernel computes (q - 8) * scale + zero
        scales_and_zeros = torch.stack([scale.reshape(n, -1), zeros.reshape(n, -1)], dim=-1)
        scales_and_zeros = scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)
        x = x32.to(torch.bfloat16)
        return lambda: torch._weight_int4pack_mm(x, packed, group, scales_and_zeros)

    return {
        "fp32": fp(torch.float32),
        "fp16": fp(torch.float16),
        "bf16": fp(torch.bfloat16),
        "fp8 e4m3 (_scaled_mm)": fp8,
        "int8 (_int_mm)": int8,
        "int4 w-only (int4pack_mm)": int4,
    }


def measure_shape(m: int, k: int, n: int, seconds: float) -> list[dict]:
    rows = []
    for name, build in kernels(m, k, n).items():
        row = {"shape": f"{m}x{k}->{n}", "kernel": name}
        try:
            call = build()
            call()
            torch.cuda.synchronize()
            row["ms"] = cuda_ms(call)
            row["energy_mj_nvml"] = nvml_mj_per_call(call, seconds)
        except Exception as exc:  # noqa: BLE001 — report what does not exist here
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        rows.append(row)
    by_name = {r["kernel"]: r for r in rows}
    for row in rows:
        if "ms" in row:
            row["speed_vs_fp32"] = by_name["fp32"]["ms"] / row["ms"]
            row["speed_vs_fp16"] = by_name["fp16"]["ms"] / row["ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [row for shape in SHAPES for row in measure_shape(*shape, args.seconds)]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return 0
    print(f"{meta['device']}, torch {meta['torch']}")
    print(f"{'shape':<18}{'kernel':<28}{'ms':>9}{'×fp32':>8}{'×fp16':>8}{'mJ/call (NVML)':>16}")
    for r in rows:
        if "error" in r:
            print(f"{r['shape']:<18}{r['kernel']:<28}  unavailable: {r['error']}")
            continue
        energy = f"{r['energy_mj_nvml']:.3f}" if r.get("energy_mj_nvml") is not None else "n/a"
        print(
            f"{r['shape']:<18}{r['kernel']:<28}{r['ms']:>9.3f}{r['speed_vs_fp32']:>8.2f}"
            f"{r['speed_vs_fp16']:>8.2f}{energy:>16}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
