"""GPU section of the sparse benchmark: 2:4 semi-structured and CSR against dense, measured.

For each weight shape and batch it times ``F.linear`` with a dense fp16 weight, the same
weight in 2:4 semi-structured form (``torch.sparse.to_sparse_semi_structured``), and a
90 %-sparse CSR fp16/fp32 weight (``torch.sparse.mm``), all on the card, with CUDA events.
Torch only, so it runs on a bare GPU machine.

    python benchmarks/gpu_sparse.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from _cuda_timing import cuda_ms  # benchmarks/ is on sys.path when run as a script

SHAPES = [(4096, 4096), (3072, 768), (768, 3072)]
BATCHES = [1, 64, 8192]


def two_four(rows: int, cols: int) -> torch.Tensor:
    weight = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
    keep = torch.rand(rows, cols // 4, 4, device="cuda").argsort(dim=-1)[..., :2]
    mask = (
        torch.zeros(rows, cols // 4, 4, device="cuda").scatter_(-1, keep, 1.0).reshape(rows, cols)
    )
    return weight * mask.half()


def measure(rows: int, cols: int, batch: int) -> dict:
    row = {"shape": f"{rows}x{cols}", "batch": batch}
    weight = two_four(rows, cols)
    x = torch.randn(batch, cols, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        row["dense_fp16_ms"] = cuda_ms(lambda: F.linear(x, weight))
        try:
            packed = torch.sparse.to_sparse_semi_structured(weight)
            row["semi_2to4_ms"] = cuda_ms(lambda: F.linear(x, packed))
            row["semi_vs_dense"] = row["semi_2to4_ms"] / row["dense_fp16_ms"]
        except Exception as exc:  # noqa: BLE001 — report kernels that do not exist here
            row["semi_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
        sparse = torch.where(torch.rand(rows, cols, device="cuda") < 0.9, 0, weight.float())
        for dtype, key in ((torch.float32, "csr90_fp32"), (torch.float16, "csr90_fp16")):
            try:
                csr = sparse.to(dtype).to_sparse_csr()
                xt = x.to(dtype).t().contiguous()
                dense_same = sparse.to(dtype)
                row[f"{key}_ms"] = cuda_ms(lambda c=csr, xt=xt: torch.sparse.mm(c, xt))
                row[f"{key}_vs_dense_same_dtype"] = row[f"{key}_ms"] / cuda_ms(
                    lambda d=dense_same, xt=xt: d @ xt
                )
            except Exception as exc:  # noqa: BLE001
                row[f"{key}_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: no CUDA device", file=sys.stderr)
        return 2
    rows = [measure(r, c, b) for r, c in SHAPES for b in BATCHES]
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}))
        return 0
    print(f"{meta['device']}, torch {meta['torch']}")
    print(
        f"{'shape':<12}{'batch':>7}{'dense fp16 ms':>15}{'2:4 ms':>10}{'2:4×':>7}{'CSR90 fp32×':>13}{'CSR90 fp16×':>13}"
    )
    for r in rows:
        semi = f"{r['semi_2to4_ms']:.4f}" if "semi_2to4_ms" in r else "n/a"
        ratio = f"{r['semi_vs_dense']:.2f}" if "semi_vs_dense" in r else "n/a"
        c32 = (
            f"{r['csr90_fp32_vs_dense_same_dtype']:.2f}"
            if "csr90_fp32_vs_dense_same_dtype" in r
            else "n/a"
        )
        c16 = (
            f"{r['csr90_fp16_vs_dense_same_dtype']:.2f}"
            if "csr90_fp16_vs_dense_same_dtype" in r
            else "n/a"
        )
        print(
            f"{r['shape']:<12}{r['batch']:>7}{r['dense_fp16_ms']:>15.4f}{semi:>10}{ratio:>7}{c32:>13}{c16:>13}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
