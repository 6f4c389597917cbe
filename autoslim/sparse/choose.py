"""Per-layer format choice: the smallest measured encoding, or the format its kernel reads.

Size is decided by encoding every candidate and keeping the smallest payload: encoding
a 768x3072 matrix takes milliseconds, so there is no reason to trust a model of the
bytes when the bytes themselves are at hand.

Speed is decided by the kernel that will actually run, which the runtime picks by
measurement (:func:`autoslim.sparse.runtime.planned_kernels`). On CPU the only sparse kernel
worth having is torch's CSR matmul (ELLPACK, DIA and N:M have none; COO, CSC and BSR are
slower than CSR, see BENCHMARKS.md). On CUDA the candidate is 2:4
semi-structured. :func:`fastest_format` stores a weight in the layout its kernel reads.
Every other weight is decoded to dense once at load, so for those the formats tie on
speed and the smallest wins (see :mod:`.policy`).

:data:`FORMAT_CHOICES` is the format as a searchable dimension: ``"auto"`` (the recipe's
storage policy), ``"smallest"``, ``"fastest"`` or one fixed format.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from autoslim.errors import AutoslimError
from autoslim.sparse.formats import FORMATS, Encoded, encode
from autoslim.sparse.layouts import nm_holds
from autoslim.sparse.policy import FASTEST, POLICIES, SMALLEST
from autoslim.sparse.values import key_matrix

AUTO = "auto"
FORMAT_CHOICES = (AUTO, *POLICIES, *FORMATS)
# The stored layout each sparse kernel reads directly; every other kernel runs dense.
KERNEL_FORMATS = {"csr": "csr", "semi_structured": "nm"}


def feasible_formats(
    matrix: np.ndarray | torch.Tensor, candidates: Sequence[str], nm: tuple[int, int]
) -> list[str]:
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
    kernel: str,
    candidates: Sequence[str] = FORMATS,
    *,
    value_bits: int | None = None,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
) -> tuple[str, Encoded]:
    """The layout that ``kernel`` (the one the runtime will run) reads, else the smallest.

    A dense kernel gets the smallest format, not ``dense``: weights are decoded once at
    load, so every format runs equally fast there and the extra bytes would buy nothing.
    """
    fmt = KERNEL_FORMATS.get(kernel)
    if fmt in feasible_formats(matrix, [f for f in candidates if f == fmt], nm):
        return fmt, encode(matrix, fmt, block=block, nm=nm, value_bits=value_bits)
    return smallest_format(matrix, candidates, value_bits=value_bits, block=block, nm=nm)


def choose_format(
    matrix: np.ndarray | torch.Tensor,
    choice: str = AUTO,
    *,
    kernel: str = "dense",
    value_bits: int | None = None,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
) -> tuple[str, Encoded]:
    """Resolve one value of :data:`FORMAT_CHOICES`.

    ``auto`` and ``smallest`` are the smallest, ``fastest`` is :func:`fastest_format` for
    ``kernel``, anything else is that format. The artifact writer replaces ``auto`` with
    the recipe's policy before it gets here.
    """
    if choice in (AUTO, SMALLEST):
        return smallest_format(matrix, value_bits=value_bits, block=block, nm=nm)
    if choice == FASTEST:
        return fastest_format(matrix, kernel, value_bits=value_bits, block=block, nm=nm)
    if choice not in FORMATS:
        raise AutoslimError(
            f"unknown format choice {choice!r}; choose one of {', '.join(FORMAT_CHOICES)}"
        )
    return choice, encode(matrix, choice, block=block, nm=nm, value_bits=value_bits)
