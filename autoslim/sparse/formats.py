"""Sparse weight formats: encode a 2-D weight (rows = output features), decode it exactly.

``encode`` returns the arrays one would write to a safetensors file plus JSON metadata;
``nbytes`` is the array payload, i.e. the file size minus the safetensors header. The
payload follows a formula per format, so a size can be predicted from a few pattern
counts without encoding (and tests hold the encoders to it).

Notation: the matrix is ``R x C`` with ``N`` stored non-zeros. ``w(x)`` is the byte width
of the smallest unsigned integer holding ``0..x`` (1, 2, 4 or 8). ``V(n)`` is the bytes of
``n`` values: ``n * itemsize`` (bfloat16 as 2), or ``ceil(n * b / 8)`` with ``value_bits=b``.

========  ===========================================================  ======================
format    payload bytes                                                counts it needs
========  ===========================================================  ======================
dense     ``V(R*C)``                                                   --
bitmap    ``ceil(R*C / 8) + V(N)``                                     ``nnz``
csr       ``(R+1)*w(N) + N*w(C-1) + V(N)``                             ``nnz``
csc       ``(C+1)*w(N) + N*w(R-1) + V(N)``                             ``nnz``
coo       ``N*(w(R-1) + w(C-1)) + V(N)``                               ``nnz``
bsr       ``(Rb+1)*w(B) + B*w(Cb-1) + V(B*r*c)``                       ``blocks`` = B
ellpack   ``R*K*w(C-1) + V(R*K)``                                      ``max_row_nnz`` = K
dia       ``D*w(R+C-2) + V(D*min(R, C))``                              ``diagonals`` = D
nm        ``ceil(R*G*n*p / 8) + V(R*G*n)``                             --
========  ===========================================================  ======================

``bitmap`` is not in the seed article but is the spine's artifact encoding: one occupancy
bit per entry. Its index cost does not grow with ``C``, so it beats CSR's ``w(C-1)``-byte
column indices down to ~94 % sparsity for wide fp32 layers, and further with packed values.
BSR with block ``(r, c)`` pads the matrix logically with zeros to ``Rb = ceil(R/r)`` by
``Cb = ceil(C/c)`` whole blocks; ``B`` counts blocks holding any non-zero, each stored
in full (padding included) and cropped away on decode. ELLPACK stores ``K`` slots per
row; DIA one row of ``min(R, C)`` slots per occupied diagonal (offset stored as
``offset + R - 1``). N:M keeps exactly ``n`` slots in each of the ``G = ceil(C/m)``
column groups of every row, with the position inside the group packed in
``p = max(1, ceil(log2 m))`` bits; a matrix where some group holds more than ``n``
non-zeros is not N:M and :func:`encode` raises :class:`AutoslimError` for it.
Padding slots store value 0. A "zero" is a zero key: ``+0.0`` and ``-0.0`` alike (``-0.0``
is keyed as ``+0.0``, see :mod:`.values`); NaN payloads and every other value are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from autoslim.errors import AutoslimError
from autoslim.sparse import layouts
from autoslim.sparse.layouts import nm_position_bits
from autoslim.sparse.values import ValueCodec, index_nbytes, key_matrix

FORMATS = tuple(layouts.ENCODERS)


@dataclass(frozen=True)
class Encoded:
    """One encoded matrix: arrays to write, JSON metadata that decodes them, payload bytes."""

    arrays: dict[str, np.ndarray]
    meta: dict

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    @property
    def format(self) -> str:
        return self.meta["format"]


def _check_options(fmt: str, block: tuple[int, int], nm: tuple[int, int]) -> None:
    if fmt not in layouts.ENCODERS:
        raise AutoslimError(f"unknown sparse format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if len(block) != 2 or min(block) < 1:
        raise AutoslimError(f"block must be two positive sizes, got {block}")
    n, m = nm
    if not 1 <= n <= m <= 256:
        raise AutoslimError(f"nm must satisfy 1 <= n <= m <= 256, got {nm}")


def encode(
    matrix: np.ndarray | torch.Tensor,
    fmt: str,
    *,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
    value_bits: int | None = None,
) -> Encoded:
    """Encode ``matrix`` in ``fmt``; ``value_bits`` bit-packs integer levels (see :mod:`.values`)."""
    block, nm = tuple(int(b) for b in block), tuple(int(v) for v in nm)
    _check_options(fmt, block, nm)
    keys, codec = key_matrix(matrix, value_bits)
    layout = layouts.ENCODERS[fmt][0](keys, block=block, nm=nm)
    arrays = dict(layout.indices)
    arrays["values"] = codec.store(layout.keys)
    meta = {
        "format": fmt,
        "shape": list(keys.shape),
        "dtype": codec.dtype,
        "value_bits": value_bits,
        "value_offset": codec.offset,
        "nnz": int(np.count_nonzero(keys)),
        "stored": int(layout.keys.size),
        "dtypes": {name: array.dtype.name for name, array in arrays.items()},
        **layout.extra,
    }
    if fmt == "bsr":
        meta["block"] = list(block)
    if fmt == "nm":
        meta["nm"] = list(nm)
    return Encoded(arrays, meta)


def _parts(encoded: Encoded | tuple[Mapping[str, np.ndarray], Mapping]) -> tuple[Mapping, Mapping]:
    if isinstance(encoded, Encoded):
        return encoded.arrays, encoded.meta
    arrays, meta = encoded
    if meta.get("format") not in layouts.ENCODERS:
        raise AutoslimError(f"unknown sparse format {meta.get('format')!r} in metadata")
    return arrays, meta


def _decode_keys(encoded) -> tuple[np.ndarray, ValueCodec]:
    arrays, meta = _parts(encoded)
    codec = ValueCodec(meta["dtype"], meta["value_bits"])
    keys = codec.load(np.asarray(arrays["values"]), meta["stored"])
    indices = {k: np.asarray(v) for k, v in arrays.items() if k != "values"}
    shape = tuple(meta["shape"])
    return layouts.ENCODERS[meta["format"]][1](shape, indices, keys, meta), codec


def decode(encoded: Encoded | tuple[Mapping[str, np.ndarray], Mapping]) -> np.ndarray:
    """The exact matrix back as numpy; bfloat16 comes back widened (exactly) to float32."""
    keys, codec = _decode_keys(encoded)
    return codec.to_numpy(keys)


def decode_tensor(encoded: Encoded | tuple[Mapping[str, np.ndarray], Mapping]) -> torch.Tensor:
    """The exact matrix back as a tensor of its original dtype, bfloat16 included."""
    keys, codec = _decode_keys(encoded)
    return codec.to_tensor(keys)


def formula_nbytes(
    fmt: str,
    shape: tuple[int, int],
    *,
    nnz: int = 0,
    blocks: int = 0,
    max_row_nnz: int = 0,
    diagonals: int = 0,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
    value_bits: int | None = None,
    dtype: str = "float32",
) -> int:
    """Payload bytes of ``fmt`` by the table in this module's docstring."""
    _check_options(fmt, block, nm)
    rows, cols = shape
    value = ValueCodec(dtype, value_bits).nbytes
    if fmt == "dense":
        return value(rows * cols)
    if fmt == "bitmap":
        return (rows * cols + 7) // 8 + value(nnz)
    if fmt in ("csr", "csc"):
        major, minor = (rows, cols) if fmt == "csr" else (cols, rows)
        return index_nbytes(major + 1, nnz) + index_nbytes(nnz, minor - 1) + value(nnz)
    if fmt == "coo":
        return index_nbytes(nnz, rows - 1) + index_nbytes(nnz, cols - 1) + value(nnz)
    if fmt == "bsr":
        row_blocks, col_blocks = -(-rows // block[0]), -(-cols // block[1])
        index = index_nbytes(row_blocks + 1, blocks) + index_nbytes(blocks, col_blocks - 1)
        return index + value(blocks * block[0] * block[1])
    if fmt == "ellpack":
        return index_nbytes(rows * max_row_nnz, cols - 1) + value(rows * max_row_nnz)
    if fmt == "dia":
        return index_nbytes(diagonals, rows + cols - 2) + value(diagonals * min(rows, cols))
    slots = rows * -(-cols // nm[1]) * nm[0]
    return (slots * nm_position_bits(nm[1]) + 7) // 8 + value(slots)
