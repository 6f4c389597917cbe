"""Bounds on a stored sparse matrix before it is decoded: it may come from anyone.

Every count that sizes an allocation (stored slots, non-zeros, block and group sizes,
index pointers and indices) is checked against the matrix the model needs, so a small
file cannot ask for a huge allocation or index past an array.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from autoslim.errors import AutoslimError

SPARSE_FORMATS = ("dense", "bitmap", "csr", "csc", "coo", "bsr", "ellpack", "dia", "nm")
INDEX_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
MAX_BLOCK_SIDE = 1024


def _fail(name: str, problem: str) -> None:
    raise AutoslimError(f"{name}: {problem}")


def is_int(value: object, low: int, high: int | None = None) -> bool:
    """An int (not a bool) in ``low..high``."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def check_sparse_matrix(
    name: str, meta: Any, shape: tuple[int, ...], tensors: Mapping[str, torch.Tensor]
) -> dict:
    """The format record of a weight of ``shape`` stored as a 2-D sparse matrix, and its
    index tensors; the caller checks the values, whose type its codec decides."""
    if not isinstance(meta, dict) or meta.get("format") not in SPARSE_FORMATS:
        _fail(
            name,
            f"unknown sparse format {meta.get('format') if isinstance(meta, dict) else meta!r}",
        )
    fmt, rows = meta["format"], shape[0]
    cols = math.prod(shape) // max(rows, 1)
    if meta.get("shape") != [rows, cols]:
        _fail(name, f"matrix shape {meta.get('shape')!r} is not [{rows}, {cols}]")
    _check_format_options(name, fmt, rows, cols, meta)
    bound = _slot_bound(fmt, rows, cols, meta)
    if not is_int(meta.get("stored"), 0, bound) or not is_int(meta.get("nnz"), 0, rows * cols):
        _fail(
            name,
            f"stored {meta.get('stored')!r} / non-zero {meta.get('nnz')!r} counts out of range",
        )
    _check_indices(name, fmt, rows, cols, meta, tensors)
    return meta


def check_packed(tensors: Mapping[str, torch.Tensor], key: str, count: int, bits: int) -> None:
    """A bit-packed uint8 tensor holding exactly ``count`` values of ``bits`` bits."""
    tensor = tensors.get(key)
    if tensor is None:
        _fail(key, "missing")
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        _fail(
            key,
            f"packed values must be a flat uint8 tensor, found {tensor.dtype} {tuple(tensor.shape)}",
        )
    if tensor.numel() != (count * bits + 7) // 8:
        _fail(key, f"{tensor.numel()} bytes cannot hold {count} values of {bits} bits")


def _slot_bound(fmt: str, rows: int, cols: int, meta: dict) -> int:
    """The most value slots ``fmt`` can store for an ``rows × cols`` matrix."""
    if fmt == "bsr":
        r, c = meta["block"]
        return -(-rows // r) * r * -(-cols // c) * c
    if fmt == "dia":
        return (rows + cols - 1) * min(rows, cols)
    if fmt == "nm":
        n, m = meta["nm"]
        return rows * -(-cols // m) * n
    return rows * cols


def _check_format_options(name: str, fmt: str, rows: int, cols: int, meta: dict) -> None:
    if fmt == "bsr":
        block = meta.get("block")
        if not (
            isinstance(block, list)
            and len(block) == 2
            and all(is_int(b, 1, MAX_BLOCK_SIDE) for b in block)
        ):
            _fail(name, f"block {block!r} is not two sizes in 1..{MAX_BLOCK_SIDE}")
    if fmt == "nm":
        nm = meta.get("nm")
        if not (
            isinstance(nm, list)
            and len(nm) == 2
            and all(is_int(v, 1, 256) for v in nm)
            and nm[0] <= nm[1]
        ):
            _fail(name, f"n:m {nm!r} is not 1 <= n <= m <= 256")
    if fmt == "ellpack" and not is_int(meta.get("width"), 0, cols):
        _fail(name, f"row width {meta.get('width')!r} is not in 0..{cols}")


def _index(tensors, name: str, part: str, length: int, limit: int) -> np.ndarray:
    """A flat unsigned index tensor of ``length`` entries, each at most ``limit``."""
    tensor = tensors.get(f"{name}::{part}")
    if (
        tensor is None
        or tensor.dtype not in INDEX_DTYPES
        or tensor.dim() != 1
        or tensor.numel() != length
    ):
        _fail(name, f"index {part!r} is not {length} unsigned integers")
    array = tensor.numpy()
    if array.size and int(array.max()) > limit:
        _fail(name, f"index {part!r} points past {limit}")
    return array


def _pointer(tensors, name: str, groups: int, stored: int) -> None:
    """A CSR-style pointer: ``groups + 1`` non-decreasing offsets from 0 to ``stored``."""
    pointer = _index(tensors, name, "indptr", groups + 1, stored).astype(np.int64)
    if pointer[0] != 0 or pointer[-1] != stored or np.any(np.diff(pointer) < 0):
        _fail(name, "index pointer is not non-decreasing from 0 to the stored count")


def _check_indices(name: str, fmt: str, rows: int, cols: int, meta: dict, tensors) -> None:
    stored = meta["stored"]
    if fmt == "bitmap":
        check_packed(tensors, f"{name}::bitmap", rows * cols, 1)
    elif fmt in ("csr", "csc"):
        major, minor = (rows, cols) if fmt == "csr" else (cols, rows)
        _pointer(tensors, name, major, stored)
        _index(tensors, name, "indices", stored, minor - 1)
    elif fmt == "coo":
        _index(tensors, name, "rows", stored, rows - 1)
        _index(tensors, name, "cols", stored, cols - 1)
    elif fmt == "bsr":
        r, c = meta["block"]
        blocks = stored // (r * c)
        if blocks * r * c != stored:
            _fail(name, "stored count is not whole blocks")
        _pointer(tensors, name, -(-rows // r), blocks)
        _index(tensors, name, "indices", blocks, -(-cols // c) - 1)
    elif fmt == "ellpack":
        if stored != rows * meta["width"]:
            _fail(name, "stored count is not rows × width")
        _index(tensors, name, "indices", stored, cols - 1)
    elif fmt == "dia":
        diagonals, length = divmod(stored, min(rows, cols))
        if length:
            _fail(name, "stored count is not whole diagonals")
        _index(tensors, name, "offsets", diagonals, rows + cols - 2)
    elif fmt == "nm":
        n, m = meta["nm"]
        if stored != rows * -(-cols // m) * n:
            _fail(name, "stored count does not fill every n:m group")
        check_packed(tensors, f"{name}::positions", stored, max(1, (m - 1).bit_length()))
    elif stored != rows * cols:
        _fail(name, "dense stored count is not rows × columns")
