"""Per-layer format choice: the smallest measured encoding, or the fastest kernel.

Size is decided by encoding every candidate and keeping the smallest payload: encoding
a 768x3072 matrix takes milliseconds, so there is no reason to trust a model of the
bytes when the bytes themselves are at hand. The pattern features
(:mod:`.features`) explain the choice; they never overrule it.

Latency is decided by what can actually run. On CPU the only sparse kernel worth having
is torch's CSR matmul (ELLPACK, DIA and N:M have none; COO, CSC and BSR are slower than
CSR, see ``benchmarks/SPARSE_RESULTS.md``), so the fastest layer is CSR at or above the
measured crossover and dense below it. On CUDA it is 2:4 semi-structured when that is
measured faster than dense fp16.

:data:`FORMAT_CHOICES` is the format as a searchable dimension: ``"auto"`` (the smallest
measured) or one fixed format.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from autoslim.errors import AutoslimError
from autoslim.sparse import semi_structured
from autoslim.sparse.crossover import measure_crossover
from autoslim.sparse.execute import choose_kernel
from autoslim.sparse.features import nm_holds
from autoslim.sparse.formats import FORMATS, Encoded, encode
from autoslim.sparse.values import key_matrix

AUTO = "auto"
FORMAT_CHOICES = (AUTO, *FORMATS)


def feasible_formats(matrix: np.ndarray | torch.Tensor, candidates: Sequence[str], nm: tuple[int, int]) -> list[str]:
    """The candidates that can encode ``matrix`` (N:M only where the pattern holds)."""
    keys, _ = key_matrix(matrix)
    return [f for f in candidates if f != "nm" or nm_holds(keys != 0, nm)]


def smallest_format(
    matrix: np.ndarray | torch.Tensor,
    candidates: Sequence[str] = FORMATS,
    *,
    value_bits: int | None = None,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
) -> tuple[str, Encoded]:
    """The candidate whose actual encoding is smallest; ties keep the earlier candidate."""
    best: tuple[str, Encoded] | None = None
    for fmt in feasible_formats(matrix, candidates, nm):
        encoded = encode(matrix, fmt, block=block, nm=nm, value_bits=value_bits)
        if best is None or encoded.nbytes < best[1].nbytes:
            best = (fmt, encoded)
    if best is None:
        raise AutoslimError(f"no candidate format can encode this matrix: {', '.join(candidates)}")
    return best


def fastest_format(
    matrix: np.ndarray | torch.Tensor,
    *,
    batch: int,
    threads: int,
    candidates: Sequence[str] = FORMATS,
    value_bits: int | None = None,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
    device: str = "cpu",
) -> tuple[str, Encoded]:
    """The format whose kernel runs fastest here, by measured crossover; dense otherwise.

    If neither the winning kernel's format nor dense is a candidate, the smallest is taken:
    all other formats run as decode-then-dense, so they tie on speed.
    """
    keys, _ = key_matrix(matrix)
    if device.startswith("cuda"):
        weight = torch.from_numpy((keys != 0).astype(np.float32))
        kernel = semi_structured.choose_kernel(weight, batch)
        fastest = "nm" if kernel == "semi_structured" else "dense"
    else:
        cross = measure_crossover(keys.shape[0], keys.shape[1], batch, threads)
        fastest = choose_kernel(1.0 - np.count_nonzero(keys) / keys.size, cross)
    for fmt in (fastest, "dense"):
        if fmt in candidates:
            return fmt, encode(matrix, fmt, block=block, nm=nm, value_bits=value_bits)
    return smallest_format(matrix, candidates, value_bits=value_bits, block=block, nm=nm)


def choose_format(
    matrix: np.ndarray | torch.Tensor,
    choice: str = AUTO,
    *,
    value_bits: int | None = None,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
) -> tuple[str, Encoded]:
    """Resolve one value of :data:`FORMAT_CHOICES`: ``auto`` is the smallest, else that format."""
    if choice == AUTO:
        return smallest_format(matrix, value_bits=value_bits, block=block, nm=nm)
    if choice not in FORMATS:
        raise AutoslimError(f"unknown format choice {choice!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    return choice, encode(matrix, choice, block=block, nm=nm, value_bits=value_bits)
