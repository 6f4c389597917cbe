"""CSR index width and operand layout for ``x @ W.T`` on CPU: which torch call is fastest.

A 768x3072 weight at 90/95/80 % unstructured sparsity, batch 64, against dense
``F.linear``. Variants: CSR with int64 indices (torch's default) or int32 indices, each with
the transposed input as a view or made contiguous; dense @ CSR of W.T; ``addmm``. Each
result is checked against the dense product before it is timed (median of REPEATS calls
after 20 warm-up calls). Prints one JSON object: per case, each variant's (ms, ratio to
dense). This A/B is why :func:`autoslim.sparse.crossover.to_csr` builds int32 indices.

    THREADS=2 REPEATS=300 taskset -c 2,3 python benchmarks/csr_indices.py
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

OUT_FEATURES, IN_FEATURES, BATCH = 768, 3072, 64


def variants(w: torch.Tensor, x: torch.Tensor) -> dict:
    csr = w.to_sparse_csr()
    csr32 = torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)
    csr_t = w.t().contiguous().to_sparse_csr()
    return {
        "dense": lambda: F.linear(x, w),
        "csr64_view": lambda: torch.sparse.mm(csr, x.t()).t(),
        "csr64_contig": lambda: torch.sparse.mm(csr, x.t().contiguous()).t(),
        "csr32_view": lambda: torch.sparse.mm(csr32, x.t()).t(),
        "csr32_contig": lambda: torch.sparse.mm(csr32, x.t().contiguous()).t(),
        "dense_at_csrT": lambda: torch.mm(x, csr_t),
        "addmm_csr64": lambda: torch.addmm(torch.zeros(w.shape[0], x.shape[0]), csr, x.t()).t(),
    }


def median_ms(fn, repeats: int) -> float:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e3


def main() -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("THREADS", 2)))
    repeats = int(os.environ.get("REPEATS", 200))
    generator = torch.Generator().manual_seed(0)
    result = {}
    for sparsity in (0.9, 0.95, 0.8):
        w = torch.randn(OUT_FEATURES, IN_FEATURES, generator=generator)
        w[torch.rand(OUT_FEATURES, IN_FEATURES, generator=generator) < sparsity] = 0
        x = torch.randn(BATCH, IN_FEATURES, generator=generator)
        reference = F.linear(x, w)
        times = {}
        with torch.inference_mode():
            for name, fn in variants(w, x).items():
                try:
                    if not torch.allclose(fn(), reference, atol=1e-3, rtol=1e-3):
                        raise AssertionError("wrong result")
                except Exception as exc:  # noqa: BLE001 — a variant torch lacks is reported, not fatal
                    times[name] = f"error {type(exc).__name__}: {str(exc)[:80]}"
                    continue
                times[name] = median_ms(fn, repeats)
        dense = times["dense"]
        result[f"{sparsity}@b{BATCH}"] = {k: (round(v, 3), round(v / dense, 3)) if isinstance(v, float) else v
                                          for k, v in times.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
