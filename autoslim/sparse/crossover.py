"""Measured crossover: the sparsity above which a sparse kernel beats dense on this machine.

Whether CSR pays depends on shape, batch, threads, torch build and CPU, and guesses are
wrong both ways (CSR at 90 % is 2.3x faster than dense at batch 64 here, BSR is 4.6x
slower). So the crossover is timed: random matrices at each candidate sparsity, dense vs
sparse, median of repeats after warm-up. Timing takes seconds, so results are cached
in ``$AUTOSLIM_CACHE/crossover_cache.json`` (default ``~/.cache/autoslim``), keyed by
kernel, shape, rows, threads, torch version and device, and reused.

For a Linear layer the rows are those of the product it computes: ``prod(shape[:-1])``
of its input, which is the batch for ``[batch, features]`` input but batch x tokens for
a transformer's ``[batch, tokens, features]`` (see :mod:`autoslim.sparse.runtime`).

The crossover is the lowest measured sparsity from which the sparse kernel is faster at
*every* higher measured sparsity too, so one noisy fast sample cannot switch a layer
to a kernel that is slower just above it. ``None`` means sparse never won.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from autoslim._threads import fixed_threads

DEFAULT_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
CACHE_FILE = "crossover_cache.json"
Kernels = tuple[Callable[[], object], Callable[[], object]]


def cache_path() -> Path:
    root = Path(os.environ.get("AUTOSLIM_CACHE", Path.home() / ".cache" / "autoslim"))
    return root / CACHE_FILE


def device_name(device: str = "cpu") -> str:
    """A name that changes when the hardware does, so a shared cache is never misapplied."""
    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(torch.device(device))}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu:{line.split(':', 1)[1].strip()}"
    return f"cpu:{platform.machine()}"


def read_cache() -> dict:
    try:
        return json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}


def write_cache_entry(key: str, entry: dict) -> None:
    """Merge one entry into the cache file atomically (a crash never leaves half a file)."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    cache = read_cache() | {key: entry}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path)


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    """Median wall time of ``fn`` in ms; the median resists shared-machine noise."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def crossover_from_ratios(ratios: dict[float, float]) -> float | None:
    """Lowest sparsity with sparse/dense time < 1 there and at every higher sparsity."""
    crossover = None
    for sparsity in sorted(ratios, reverse=True):
        if ratios[sparsity] >= 1.0:
            break
        crossover = sparsity
    return crossover


def random_sparse(
    rows: int, cols: int, sparsity: float, generator: torch.Generator
) -> torch.Tensor:
    """A float32 matrix with exactly ``round(sparsity * rows * cols)`` zeros."""
    weight = torch.randn(rows, cols, generator=generator)
    zeros = round(sparsity * rows * cols)
    weight.view(-1)[torch.randperm(rows * cols, generator=generator)[:zeros]] = 0.0
    return weight


def to_csr(matrix: torch.Tensor) -> torch.Tensor:
    """CSR copy of a dense matrix, without torch's per-call "CSR support is in beta" warning.

    Indices are int32 where they fit: torch's CPU CSR matmul (MKL) ran faster with
    them than with the default int64 on a 768x3072 weight at 80 % and 95 % sparsity
    (7-14 % on a 16-core Xeon), and take half the memory.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")
        csr = matrix.to_sparse_csr()
        if csr.values().numel() < 2**31 - 1 and max(matrix.shape) < 2**31 - 1:
            csr = torch.sparse_csr_tensor(
                csr.crow_indices().to(torch.int32),
                csr.col_indices().to(torch.int32),
                csr.values(),
                csr.shape,
                check_invariants=False,
            )
        return csr


def csr_linear(
    x: torch.Tensor, csr: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``W`` in CSR; a single row uses the faster matrix-vector kernel."""
    out = torch.mv(csr, x[0]).unsqueeze(0) if x.shape[0] == 1 else torch.sparse.mm(csr, x.t()).t()
    return out if bias is None else out + bias


def linear_kernels(
    out_features: int, in_features: int, rows: int, sparsity: float, seed: int = 0
) -> Kernels:
    """Dense vs CSR ``x @ W.T`` with ``x`` of ``rows`` rows (what the layer multiplies)."""
    generator = torch.Generator().manual_seed(seed)
    weight = random_sparse(out_features, in_features, sparsity, generator)
    x = torch.randn(rows, in_features, generator=generator)
    csr = to_csr(weight)
    return (lambda: F.linear(x, weight)), (lambda: csr_linear(x, csr))


def measure_ratios(
    make_kernels: Callable[[float], Kernels], sparsities, threads: int, repeats: int
) -> dict[float, float]:
    """sparse/dense median time at each sparsity, with ``threads`` fixed."""
    ratios = {}
    with fixed_threads(threads), torch.inference_mode():
        for sparsity in sparsities:
            dense, sparse = make_kernels(sparsity)
            ratios[float(sparsity)] = median_ms(sparse, repeats) / median_ms(dense, repeats)
    return ratios


def cached_crossover(
    key: str, make_kernels, sparsities, threads: int, repeats: int, use_cache: bool
) -> float | None:
    """The cached crossover for ``key``, measured (and stored) only when missing or refused."""
    full_key = (
        f"{key}|threads={threads}|torch={torch.__version__}|{device_name()}|s={list(sparsities)}"
    )
    if use_cache and full_key in (cache := read_cache()):
        return cache[full_key]["crossover"]
    ratios = measure_ratios(make_kernels, sparsities, threads, repeats)
    crossover = crossover_from_ratios(ratios)
    write_cache_entry(
        full_key, {"crossover": crossover, "ratios": {str(s): r for s, r in ratios.items()}}
    )
    return crossover


def measure_crossover(
    out_features: int,
    in_features: int,
    rows: int,
    threads: int,
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES,
    *,
    repeats: int = 15,
    use_cache: bool = True,
) -> float | None:
    """CPU crossover sparsity of CSR vs dense for a Linear layer multiplying ``rows`` rows
    (``prod(input.shape[:-1])``, not just the batch); cached unless ``use_cache=False``."""
    # Keyed by the rows timed; the key keeps its old name, so entries written before
    # (timed at ``batch`` rows of 2-D input, the same measurement) stay valid.
    key = f"linear|{out_features}x{in_features}|batch={rows}"
    kernels = lambda s: linear_kernels(out_features, in_features, rows, s)  # noqa: E731
    return cached_crossover(key, kernels, sparsities, threads, repeats, use_cache)
