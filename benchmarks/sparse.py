"""The seed article's Table 3 (sparse formats) with measured numbers, on this machine.

For a 768x3072 weight (rows = outputs) at 50/80/90/95 % sparsity in three patterns
(unstructured, 4x4 blocks, 2:4 plus extra unstructured zeros), every format reports:
bytes relative to dense fp32 (fp32 values and 4-bit levels), encode time, and the time
of what really runs for ``x @ W.T`` at batch 1 (matvec) and 64 (matmul) relative to
dense ``F.linear``, with fixed threads. Kernels: torch CSR/CSC/COO/BSR where torch has
them; ELLPACK, DIA, N:M and bitmap have no CPU kernel, so they time decode-then-dense
per call (decoding once at load instead would simply run dense). 4-bit levels have no
sparse CPU kernel either; they dequantize to fp32 and run the same kernels, so only
their bytes differ. ``auto`` is :class:`SparseLinear`'s choice from the measured CSR
crossover, and ``auto_right`` says whether it picked the faster of dense and CSR here;
``stored`` is the format the artifact writes under the ``smallest`` policy, then under
``fastest`` (the layout of that kernel, see :mod:`autoslim.sparse.policy`) for b1/b64.

``--patterns unstructured`` times only that pattern (the crossover grid always runs), so a
repeat fits in a quiet moment of a shared machine. The 1-minute load average is recorded at
the start and the end.

    python benchmarks/sparse.py [--quick] [--json] [--threads 2] [--patterns unstructured,block4x4,2:4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from autoslim.sparse import crossover as xo
from autoslim.sparse.choose import fastest_format, smallest_format
from autoslim.sparse.execute import SparseLinear, choose_kernel
from autoslim.sparse.formats import FORMATS, decode, encode

PATTERNS = ("unstructured", "block4x4", "2:4")
TORCH_KERNELS = {
    "dense": "torch dense",
    "csr": "torch CSR",
    "csc": "torch CSC",
    "coo": "torch COO",
    "bsr": "torch BSR 4x4",
}
CROSSOVER_GRID = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98)


def timed_ms(fn, repeats: int, budget_s: float = 1.0) -> float:
    """Median ms after a few warm-ups; slow kernels get fewer repeats (at least 3).

    Sub-millisecond kernels need many samples: with 15, ratios at batch 64 moved by 0.2
    between runs on a quiet machine.
    """
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(min(5, int(budget_s / 4 / max(first, 1e-6)))):
        fn()
    count = max(3, min(repeats, int(budget_s / max(first, 1e-6))))
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def make_mask(
    pattern: str, shape: tuple[int, int], sparsity: float, rng: np.random.Generator
) -> np.ndarray:
    rows, cols = shape
    if pattern == "unstructured":
        mask = np.zeros(rows * cols, dtype=bool)
        mask[rng.choice(mask.size, round((1 - sparsity) * mask.size), replace=False)] = True
        return mask.reshape(shape)
    if pattern == "block4x4":
        blocks = make_mask("unstructured", (rows // 4, cols // 4), sparsity, rng)
        return np.kron(blocks, np.ones((4, 4), dtype=bool))
    keep_two = np.argsort(rng.random((rows, cols // 4, 4)), axis=-1)[..., :2]
    mask = np.zeros((rows, cols // 4, 4), dtype=bool)
    np.put_along_axis(mask, keep_two, True, axis=-1)
    return mask.reshape(shape) & make_mask("unstructured", shape, 1 - (1 - sparsity) / 0.5, rng)


def torch_weight(fmt: str, weight: torch.Tensor) -> torch.Tensor:
    if fmt == "csr":
        return xo.to_csr(weight)
    if fmt == "csc":
        return weight.to_sparse_csc()
    if fmt == "coo":
        return weight.to_sparse_coo()
    return weight.to_sparse_bsr((4, 4))


def kernel_fn(fmt: str, weight: torch.Tensor, encoded, x: torch.Tensor):
    """What runs for ``x @ W.T`` when the weight is held in ``fmt``."""
    if fmt == "dense":
        return lambda: F.linear(x, weight)
    if fmt == "csr":
        csr = xo.to_csr(weight)
        return lambda: xo.csr_linear(x, csr)
    if fmt in TORCH_KERNELS:
        sparse, columns = torch_weight(fmt, weight), x.t().contiguous()
        return lambda: torch.sparse.mm(sparse, columns)
    return lambda: F.linear(x, torch.from_numpy(decode(encoded)))


def format_row(fmt, weight, levels, inputs, dense_ms, repeats) -> dict | None:
    matrix = weight.numpy()
    try:
        encoded = encode(matrix, fmt)
    except Exception:  # N:M on a matrix that is not N:M
        return None
    dense_bytes = matrix.size * 4
    row = {"format": fmt, "kernel": TORCH_KERNELS.get(fmt, "decode+dense")}
    row["bytes_fp32"] = encoded.nbytes / dense_bytes
    row["bytes_4bit"] = encode(levels, fmt, value_bits=4).nbytes / dense_bytes
    row["encode_ms"] = timed_ms(lambda: encode(matrix, fmt), max(1, repeats // 4))
    for batch, x in inputs.items():
        row[f"b{batch}_ratio"] = (
            timed_ms(kernel_fn(fmt, weight, encoded, x), repeats) / dense_ms[batch]
        )
    return row


def auto_row(weight, sparsity, inputs, dense_ms, crossovers, csr_row, repeats) -> dict:
    row = {
        "format": "auto",
        "kernel": {},
        "stored": {"smallest": smallest_format(weight.numpy())[0]},
    }
    for batch, x in inputs.items():
        kernel = choose_kernel(sparsity, crossovers[batch])
        layer = SparseLinear(weight, None, kernel)
        row["kernel"][batch] = kernel
        row["stored"][f"fastest_b{batch}"] = fastest_format(weight.numpy(), kernel)[0]
        ratio = timed_ms(lambda layer=layer, x=x: layer(x), repeats) / dense_ms[batch]
        row[f"b{batch}_ratio"] = ratio
        row[f"b{batch}_right"] = (kernel == "csr") == (csr_row[f"b{batch}_ratio"] < 1.0)
    return row


def case_rows(pattern, sparsity, shape, inputs, crossovers, repeats, rng) -> list[dict]:
    mask = make_mask(pattern, shape, sparsity, rng)
    weight = torch.from_numpy(np.where(mask, rng.standard_normal(shape), 0).astype(np.float32))
    levels = np.where(mask, rng.choice([-7, -3, -1, 1, 4, 7], size=shape), 0).astype(np.int8)
    dense_ms = {b: timed_ms(lambda x=x: F.linear(x, weight), repeats) for b, x in inputs.items()}
    rows = [
        r for fmt in FORMATS if (r := format_row(fmt, weight, levels, inputs, dense_ms, repeats))
    ]
    csr = next(r for r in rows if r["format"] == "csr")
    rows.append(auto_row(weight, sparsity, inputs, dense_ms, crossovers, csr, repeats))
    actual = 1 - mask.sum() / mask.size
    for row in rows:
        row.update(
            pattern=pattern,
            sparsity=round(float(actual), 4),
            dense_ms={b: round(v, 4) for b, v in dense_ms.items()},
        )
    return rows


def run(quick: bool, threads: int, patterns: tuple[str, ...] = PATTERNS) -> dict:
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(threads)
    shape = (256, 512) if quick else (768, 3072)
    sparsities = (0.5, 0.9) if quick else (0.5, 0.8, 0.9, 0.95)
    repeats = 3 if quick else 200
    grid = (0.5, 0.9) if quick else CROSSOVER_GRID
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, shape[1], generator=generator) for b in (1, 64)}
    ratios = {
        b: xo.measure_ratios(lambda s, b=b: xo.linear_kernels(*shape, b, s), grid, threads, repeats)
        for b in inputs
    }
    crossovers = {b: xo.crossover_from_ratios(r) for b, r in ratios.items()}
    rng = np.random.default_rng(0)
    rows = []
    with torch.inference_mode():
        for pattern in patterns:
            for sparsity in sparsities:
                rows += case_rows(pattern, sparsity, shape, inputs, crossovers, repeats, rng)
    return {
        "shape": list(shape),
        "threads": threads,
        "torch": torch.__version__,
        "device": xo.device_name(),
        "python": platform.python_version(),
        "quick": quick,
        "patterns": list(patterns),
        "loadavg_1min_at_start": round(load_at_start, 2),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "csr_crossover": {str(b): crossovers[b] for b in inputs},
        "csr_crossover_ratios": {str(b): {str(k): v for k, v in ratios[b].items()} for b in inputs},
        "rows": rows,
    }


def _cell(value) -> str:
    if isinstance(value, dict):
        return "/".join(str(v) for v in value.values())
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(result: dict) -> None:
    columns = (
        "pattern",
        "sparsity",
        "format",
        "kernel",
        "bytes_fp32",
        "bytes_4bit",
        "encode_ms",
        "b1_ratio",
        "b64_ratio",
        "b1_right",
        "b64_right",
        "stored",
    )
    print(
        f"shape {result['shape']}, {result['threads']} threads, torch {result['torch']}, {result['device']}, "
        f"1-min load average at start {result.get('loadavg_1min_at_start')} and at end "
        f"{result['loadavg_1min_at_end']}"
    )
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in result["rows"]:
        print("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    for batch, cross in result["csr_crossover"].items():
        ratios = ", ".join(
            f"{s}: {r:.2f}" for s, r in result["csr_crossover_ratios"][batch].items()
        )
        print(f"CSR crossover at batch {batch}: {cross} (CSR/dense time by sparsity: {ratios})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small matrix, few repeats (CI smoke)")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the table"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--patterns",
        default=",".join(PATTERNS),
        help="comma-separated subset of " + ", ".join(PATTERNS),
    )
    args = parser.parse_args()
    patterns = tuple(args.patterns.split(","))
    if unknown := set(patterns) - set(PATTERNS):
        parser.error(f"unknown pattern(s): {', '.join(sorted(unknown))}")
    result = run(args.quick, args.threads, patterns)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
