"""Checks on an artifact's files before anything is decoded: it may come from anyone.

The model rebuilt from the recipe is the authority. Every stored weight must have the
shape and dtype of the tensor it fills, every layout record must describe that shape,
and every count that sizes an allocation (non-zeros, stored slots, block and group
sizes, index pointers) is bounded by it before a byte is allocated. So a 37 kB file
cannot ask for 40 GB, a relabelled dtype or a NaN cannot slip into a model, and what is
not one of these checks fails inside the decoder as one :class:`AutoslimError` line
(:func:`autoslim.artifact.load_artifact` turns any other exception into one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from autoslim.errors import AutoslimError

LEVEL_ENCODINGS = ("int_dense", "int_bitmap")
SPARSE_FORMATS = ("dense", "bitmap", "csr", "csc", "coo", "bsr", "ellpack", "dia", "nm")
FLOAT_STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.uint16}
INDEX_DTYPES = (torch.uint8, torch.uint16, torch.uint32, torch.uint64)
GRANULARITIES = ("per_tensor", "per_channel", "group")
MAX_BLOCK_SIDE = 1024


def refuse_links(folder: Path) -> None:
    """An artifact is plain files: a link could point at any file on the machine (and
    would be counted in ``size_bytes``), so none is followed or accepted."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        for name in dirs + files:
            if (Path(root) / name).is_symlink():
                raise AutoslimError(f"artifact {folder} holds a symbolic link ({Path(root, name).relative_to(folder)}); "
                                    "artifacts are plain files")


def _fail(name: str, problem: str) -> None:
    raise AutoslimError(f"{name}: {problem}")


def _is_int(value: object, low: int, high: int | None = None) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def check_tensors(tensors: Mapping[str, torch.Tensor], layout: object, expected: Mapping[str, torch.Tensor]) -> None:
    """Everything :func:`autoslim.artifact.decode_state` will read, against ``expected``
    (the rebuilt model's ``state_dict``)."""
    if not isinstance(layout, dict) or not all(isinstance(v, dict) for v in layout.values()):
        _fail("layout", "not a mapping of weight names to records")
    for name, entry in layout.items():
        if name not in expected or not name.endswith("weight"):
            _fail(name, "the layout names a tensor the recipe's model does not have")
        _check_entry(name, entry, tuple(expected[name].shape), tensors)
    for key, tensor in tensors.items():
        owner = key.split("::", 1)[0]
        if "::" in key:
            if owner not in layout:
                _fail(key, "an encoded part of a weight the layout does not list")
            continue
        if key not in expected:
            _fail(key, "a tensor the recipe's model does not have")
        _check_plain(key, tensor, expected[key])


def _check_plain(name: str, tensor: torch.Tensor, reference: torch.Tensor) -> None:
    if tensor.dtype != reference.dtype:
        _fail(name, f"stored as {tensor.dtype}, the model holds {reference.dtype}")
    if tuple(tensor.shape) != tuple(reference.shape):
        _fail(name, f"stored with shape {tuple(tensor.shape)}, the model needs {tuple(reference.shape)}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        _fail(name, "holds NaN or infinity")


def _check_entry(name: str, entry: dict, shape: tuple[int, ...], tensors: Mapping[str, torch.Tensor]) -> None:
    if list(entry.get("shape", [])) != list(shape):
        _fail(name, f"the layout's shape {entry.get('shape')} is not the model's {list(shape)}")
    grid = entry.get("grid")
    if grid is not None:
        _check_grid(name, grid)
    enc = entry.get("enc")
    if enc in LEVEL_ENCODINGS:
        if grid is None:
            _fail(name, f"{enc} needs a grid")
        _check_levels(name, entry, math.prod(shape), grid["bits"], tensors)
    elif enc == "sparse":
        _check_sparse(name, entry, shape, grid, tensors)
    else:
        _fail(name, f"unknown encoding {enc!r}")


def _check_grid(name: str, grid: object) -> None:
    if not isinstance(grid, dict) or grid.get("kind") not in ("uniform", "codebook"):
        _fail(name, "the grid record is not a uniform grid or a codebook")
    if not _is_int(grid.get("bits"), 1, 8):
        _fail(name, f"bit width {grid.get('bits')!r} is not in 1..8")
    if grid["kind"] == "codebook":
        if not isinstance(grid.get("per_channel"), bool) or not isinstance(grid.get("codebook"), str):
            _fail(name, "the codebook record is incomplete")
        return
    if not isinstance(grid.get("symmetric"), bool) or grid.get("granularity") not in GRANULARITIES:
        _fail(name, "the grid record is incomplete")
    size = grid.get("group_size")
    if (grid["granularity"] == "group") != _is_int(size, 1):
        _fail(name, f"group size {size!r} does not fit granularity {grid['granularity']!r}")


def _packed(tensors: Mapping[str, torch.Tensor], key: str, count: int, bits: int) -> None:
    """A bit-packed uint8 tensor holding exactly ``count`` values of ``bits`` bits."""
    tensor = tensors.get(key)
    if tensor is None:
        _fail(key, "missing")
    if tensor.dtype != torch.uint8 or tensor.dim() != 1:
        _fail(key, f"packed values must be a flat uint8 tensor, found {tensor.dtype} {tuple(tensor.shape)}")
    if tensor.numel() != (count * bits + 7) // 8:
        _fail(key, f"{tensor.numel()} bytes cannot hold {count} values of {bits} bits")


def _check_levels(name: str, entry: dict, numel: int, bits: int, tensors: Mapping[str, torch.Tensor]) -> None:
    if entry["enc"] == "int_dense":
        _packed(tensors, f"{name}::q", numel, bits)
        return
    nnz = entry.get("nnz")
    if not _is_int(nnz, 0, numel):
        _fail(name, f"non-zero count {nnz!r} is not in 0..{numel}")
    _packed(tensors, f"{name}::mask", numel, 1)
    _packed(tensors, f"{name}::q", nnz, bits)


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
        if not (isinstance(block, list) and len(block) == 2 and all(_is_int(b, 1, MAX_BLOCK_SIDE) for b in block)):
            _fail(name, f"block {block!r} is not two sizes in 1..{MAX_BLOCK_SIDE}")
    if fmt == "nm":
        nm = meta.get("nm")
        if not (isinstance(nm, list) and len(nm) == 2 and all(_is_int(v, 1, 256) for v in nm) and nm[0] <= nm[1]):
            _fail(name, f"n:m {nm!r} is not 1 <= n <= m <= 256")
    if fmt == "ellpack" and not _is_int(meta.get("width"), 0, cols):
        _fail(name, f"row width {meta.get('width')!r} is not in 0..{cols}")


def _check_sparse(name: str, entry: dict, shape: tuple[int, ...], grid, tensors) -> None:
    meta = entry.get("meta")
    if not isinstance(meta, dict) or meta.get("format") not in SPARSE_FORMATS:
        _fail(name, f"unknown sparse format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    fmt, rows = meta["format"], shape[0]
    cols = math.prod(shape) // max(rows, 1)
    if meta.get("shape") != [rows, cols]:
        _fail(name, f"matrix shape {meta.get('shape')!r} is not [{rows}, {cols}]")
    _check_format_options(name, fmt, rows, cols, meta)
    bound = _slot_bound(fmt, rows, cols, meta)
    if not _is_int(meta.get("stored"), 0, bound) or not _is_int(meta.get("nnz"), 0, rows * cols):
        _fail(name, f"stored {meta.get('stored')!r} / non-zero {meta.get('nnz')!r} counts out of range")
    _check_values(name, meta, grid, tensors)
    _check_indices(name, fmt, rows, cols, meta, tensors)


def _check_values(name: str, meta: dict, grid, tensors) -> None:
    dtype, bits = meta.get("dtype"), meta.get("value_bits")
    if grid is not None:
        if dtype != "int8" or bits != grid["bits"] or grid["kind"] != "uniform" or not grid["symmetric"]:
            _fail(name, f"quantized values must be int8 levels of {grid['bits']} bits, found {dtype!r}/{bits!r}")
        _packed(tensors, f"{name}::values", meta["stored"], bits)
        return
    if dtype not in FLOAT_STORAGE or bits is not None:
        _fail(name, f"float weights are stored as {', '.join(FLOAT_STORAGE)}, found {dtype!r}")
    values = tensors.get(f"{name}::values")
    if values is None or values.dtype != FLOAT_STORAGE[dtype] or values.numel() != meta["stored"]:
        _fail(name, f"stored values do not match {meta['stored']} {dtype} slots")
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        _fail(name, "holds NaN or infinity")


def _index(tensors, name: str, part: str, length: int, limit: int) -> np.ndarray:
    """A flat unsigned index tensor of ``length`` entries, each at most ``limit``."""
    tensor = tensors.get(f"{name}::{part}")
    if tensor is None or tensor.dtype not in INDEX_DTYPES or tensor.dim() != 1 or tensor.numel() != length:
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
        _packed(tensors, f"{name}::bitmap", rows * cols, 1)
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
        _packed(tensors, f"{name}::positions", stored, max(1, (m - 1).bit_length()))
    elif stored != rows * cols:
        _fail(name, "dense stored count is not rows × columns")
