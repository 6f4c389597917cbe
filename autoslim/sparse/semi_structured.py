"""GPU candidate kernel: 2:4 semi-structured fp16 via ``torch.sparse.to_sparse_semi_structured``.

Measured on an H100 (torch 2.11, 8192x4096x4096) 2:4 was 2x *slower* than dense fp16, so
it is never assumed faster: a layer uses it only when its weight is 2:4, the shape meets
the kernel's constraints, and the dense/2:4 ratio timed on this GPU (cached like the CPU
crossover) says 2:4 wins. Everything here is guarded: without CUDA it answers "dense".
"""

from __future__ import annotations

import torch

from autoslim.errors import AutoslimError
from autoslim.sparse import crossover as xo
from autoslim.sparse.layouts import nm_holds

# fp16 constraints of the CUTLASS/cuSPARSELt kernels: weight rows and columns.
MIN_ROWS_MULTIPLE, MIN_COLS_MULTIPLE = 32, 64


def available() -> bool:
    return torch.cuda.is_available() and hasattr(torch.sparse, "to_sparse_semi_structured")


def fits(weight: torch.Tensor) -> bool:
    """2:4 pattern along rows and a shape the fp16 kernel accepts."""
    rows, cols = weight.shape
    if rows % MIN_ROWS_MULTIPLE or cols % MIN_COLS_MULTIPLE:
        return False
    return nm_holds(weight.detach().cpu().numpy() != 0, (2, 4))


def compress(weight: torch.Tensor) -> torch.Tensor:
    """The fp16 2:4 compressed weight on the current CUDA device."""
    if not available():
        raise AutoslimError(
            "2:4 semi-structured needs a CUDA device and torch.sparse.to_sparse_semi_structured"
        )
    return torch.sparse.to_sparse_semi_structured(weight.detach().to("cuda", torch.float16))


def _two_four(rows: int, cols: int, generator: torch.Generator) -> torch.Tensor:
    weight = torch.randn(rows, cols, generator=generator)
    keep = torch.rand(rows, cols // 4, 4, generator=generator).argsort(dim=-1)[..., :2]
    mask = torch.zeros(rows, cols // 4, 4).scatter_(-1, keep, 1.0).reshape(rows, cols)
    return weight * mask


def measure_ratio(
    out_features: int, in_features: int, batch: int, *, repeats: int = 50, use_cache: bool = True
) -> float:
    """2:4 / dense fp16 median time for ``x[batch, in] @ W.T`` on this GPU (cached)."""
    key = f"semi_structured|{out_features}x{in_features}|batch={batch}|torch={torch.__version__}|{xo.device_name('cuda')}"
    if use_cache and key in (cache := xo.read_cache()):
        return cache[key]["ratio"]
    generator = torch.Generator().manual_seed(0)
    weight = _two_four(out_features, in_features, generator).to("cuda", torch.float16)
    x = torch.randn(batch, in_features, generator=generator).to("cuda", torch.float16)
    packed = compress(weight)

    def synced(fn):
        return lambda: (fn(), torch.cuda.synchronize())

    with torch.inference_mode():
        dense = xo.median_ms(synced(lambda: torch.nn.functional.linear(x, weight)), repeats)
        sparse = xo.median_ms(synced(lambda: torch.nn.functional.linear(x, packed)), repeats)
    xo.write_cache_entry(key, {"ratio": sparse / dense})
    return sparse / dense


def choose_kernel(weight: torch.Tensor, batch: int) -> str:
    """``semi_structured`` where available, applicable and measured faster; else ``dense``."""
    if not (available() and fits(weight)):
        return "dense"
    ratio = measure_ratio(weight.shape[0], weight.shape[1], batch)
    return "semi_structured" if ratio < 1.0 else "dense"
