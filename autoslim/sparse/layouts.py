"""Index structure of each sparse format, on key matrices (0 = implicit zero).

Each ``encode_<fmt>`` returns ``Layout``: the index arrays (already at their smallest
unsigned width), the keys of the stored slots in storage order, and the few integers
the decoder needs beyond the shape. Values are coded separately (:mod:`.values`), so
one structure code serves float32, float16, bfloat16 and bit-packed levels.

Formats that store padding slots (BSR, ELLPACK, DIA, N:M) give them key 0; decoders
scatter only non-zero keys, so a padding slot can never overwrite a real value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from autoslim._pack import pack_bits, unpack_bits
from autoslim.errors import AutoslimError
from autoslim.sparse.values import index_dtype


@dataclass(frozen=True)
class Layout:
    indices: dict[str, np.ndarray]
    keys: np.ndarray
    extra: dict = field(default_factory=dict)


def _ints(values: np.ndarray, max_value: int) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=index_dtype(max_value))


def _indptr(owner: np.ndarray, groups: int) -> np.ndarray:
    counts = np.bincount(owner, minlength=groups)
    return _ints(np.concatenate([[0], np.cumsum(counts)]), int(counts.sum()))


def _owner(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr.astype(np.int64)))


def _scatter(shape: tuple[int, int], rows, cols, keys: np.ndarray) -> np.ndarray:
    out = np.zeros(shape, dtype=keys.dtype)
    real = keys != 0
    out[np.asarray(rows)[real], np.asarray(cols)[real]] = keys[real]
    return out


def encode_dense(keys: np.ndarray, **_: object) -> Layout:
    return Layout({}, keys.reshape(-1))


def decode_dense(shape, indices, keys, extra) -> np.ndarray:
    return keys.reshape(shape).copy()


def encode_csr(keys: np.ndarray, **_: object) -> Layout:
    rows, cols = np.nonzero(keys)
    return Layout(
        {"indptr": _indptr(rows, keys.shape[0]), "indices": _ints(cols, keys.shape[1] - 1)},
        keys[rows, cols],
    )


def decode_csr(shape, indices, keys, extra) -> np.ndarray:
    return _scatter(shape, _owner(indices["indptr"]), indices["indices"], keys)


def encode_csc(keys: np.ndarray, **_: object) -> Layout:
    cols, rows = np.nonzero(keys.T)
    return Layout(
        {"indptr": _indptr(cols, keys.shape[1]), "indices": _ints(rows, keys.shape[0] - 1)},
        keys[rows, cols],
    )


def decode_csc(shape, indices, keys, extra) -> np.ndarray:
    return _scatter(shape, indices["indices"], _owner(indices["indptr"]), keys)


def encode_coo(keys: np.ndarray, **_: object) -> Layout:
    rows, cols = np.nonzero(keys)
    return Layout(
        {"rows": _ints(rows, keys.shape[0] - 1), "cols": _ints(cols, keys.shape[1] - 1)},
        keys[rows, cols],
    )


def decode_coo(shape, indices, keys, extra) -> np.ndarray:
    return _scatter(shape, indices["rows"], indices["cols"], keys)


def encode_bitmap(keys: np.ndarray, **_: object) -> Layout:
    """One occupancy bit per entry (row-major) plus the non-zeros: no index grows with C."""
    nonzero = keys.reshape(-1) != 0
    return Layout({"bitmap": pack_bits(nonzero.astype(np.uint8), 1)}, keys.reshape(-1)[nonzero])


def decode_bitmap(shape, indices, keys, extra) -> np.ndarray:
    nonzero = unpack_bits(indices["bitmap"], 1, shape[0] * shape[1]).astype(bool)
    out = np.zeros(shape[0] * shape[1], dtype=keys.dtype)
    out[nonzero] = keys
    return out.reshape(shape)


def _blocked(keys: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """``(row_blocks, col_blocks, r, c)`` view of the matrix zero-padded to whole blocks."""
    r, c = block
    rb, cb = -(-keys.shape[0] // r), -(-keys.shape[1] // c)
    padded = np.zeros((rb * r, cb * c), dtype=keys.dtype)
    padded[: keys.shape[0], : keys.shape[1]] = keys
    return padded.reshape(rb, r, cb, c).transpose(0, 2, 1, 3)


def encode_bsr(keys: np.ndarray, *, block: tuple[int, int], **_: object) -> Layout:
    blocks = _blocked(keys, block)
    brow, bcol = np.nonzero(blocks.any(axis=(2, 3)))
    indices = {
        "indptr": _indptr(brow, blocks.shape[0]),
        "indices": _ints(bcol, blocks.shape[1] - 1),
    }
    return Layout(indices, blocks[brow, bcol].reshape(-1))


def decode_bsr(shape, indices, keys, extra) -> np.ndarray:
    r, c = extra["block"]
    rb, cb = -(-shape[0] // r), -(-shape[1] // c)
    blocks = np.zeros((rb, cb, r, c), dtype=keys.dtype)
    blocks[_owner(indices["indptr"]), indices["indices"].astype(np.int64)] = keys.reshape(-1, r, c)
    return blocks.transpose(0, 2, 1, 3).reshape(rb * r, cb * c)[: shape[0], : shape[1]].copy()


def encode_ellpack(keys: np.ndarray, **_: object) -> Layout:
    rows, cols = np.nonzero(keys)
    counts = np.bincount(rows, minlength=keys.shape[0])
    width = int(counts.max())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(rows)) - starts[rows]
    columns = np.zeros((keys.shape[0], width), dtype=index_dtype(keys.shape[1] - 1))
    stored = np.zeros((keys.shape[0], width), dtype=keys.dtype)
    columns[rows, slot] = cols
    stored[rows, slot] = keys[rows, cols]
    return Layout({"indices": columns.reshape(-1)}, stored.reshape(-1), {"width": width})


def decode_ellpack(shape, indices, keys, extra) -> np.ndarray:
    width = extra["width"]
    rows = np.repeat(np.arange(shape[0]), width)
    return _scatter(shape, rows, indices["indices"].astype(np.int64), keys)


def encode_dia(keys: np.ndarray, **_: object) -> Layout:
    """Occupied diagonals, each a row of ``min(R, C)`` slots starting at its first element."""
    rows, cols = np.nonzero(keys)
    diagonal = cols.astype(np.int64) - rows
    offsets = np.unique(diagonal)
    stored = np.zeros((len(offsets), min(keys.shape)), dtype=keys.dtype)
    stored[np.searchsorted(offsets, diagonal), np.minimum(rows, cols)] = keys[rows, cols]
    shifted = _ints(offsets + keys.shape[0] - 1, sum(keys.shape) - 2)
    return Layout({"offsets": shifted}, stored.reshape(-1))


def decode_dia(shape, indices, keys, extra) -> np.ndarray:
    offsets = indices["offsets"].astype(np.int64) - (shape[0] - 1)
    length = min(shape)
    diag, slot = np.divmod(np.arange(len(keys)), length)
    k = offsets[diag]
    rows = slot + np.maximum(0, -k)
    cols = rows + k
    inside = (rows < shape[0]) & (cols < shape[1])
    return _scatter(shape, rows[inside], cols[inside], keys[inside])


def nm_position_bits(m: int) -> int:
    """Bits per stored position inside a group of ``m`` (at least 1, pack_bits needs it)."""
    return max(1, (m - 1).bit_length())


def _groups(keys: np.ndarray, m: int) -> np.ndarray:
    groups = -(-keys.shape[1] // m)
    padded = np.zeros((keys.shape[0], groups * m), dtype=keys.dtype)
    padded[:, : keys.shape[1]] = keys
    return padded.reshape(keys.shape[0], groups, m)


def encode_nm(keys: np.ndarray, *, nm: tuple[int, int], **_: object) -> Layout:
    """Exactly ``n`` slots per group of ``m`` along each row; raises if a group holds more."""
    n, m = nm
    groups = _groups(keys, m)
    if int((groups != 0).sum(axis=-1).max()) > n:
        raise AutoslimError(
            f"matrix is not {n}:{m} sparse (a group of {m} holds more than {n} non-zeros)"
        )
    # Stable sort puts non-zeros first in column order, then distinct zero slots as padding.
    position = np.argsort(groups == 0, axis=-1, kind="stable")[..., :n]
    stored = np.take_along_axis(groups, position, axis=-1)
    packed = pack_bits(position.reshape(-1).astype(np.uint8), nm_position_bits(m))
    return Layout({"positions": packed}, stored.reshape(-1))


def decode_nm(shape, indices, keys, extra) -> np.ndarray:
    n, m = extra["nm"]
    groups = -(-shape[1] // m)
    position = unpack_bits(indices["positions"], nm_position_bits(m), len(keys)).astype(np.int64)
    out = np.zeros((shape[0], groups, m), dtype=keys.dtype)
    np.put_along_axis(
        out, position.reshape(shape[0], groups, n), keys.reshape(shape[0], groups, n), axis=-1
    )
    return out.reshape(shape[0], groups * m)[:, : shape[1]].copy()


ENCODERS = {
    "dense": (encode_dense, decode_dense),
    "bitmap": (encode_bitmap, decode_bitmap),
    "csr": (encode_csr, decode_csr),
    "csc": (encode_csc, decode_csc),
    "coo": (encode_coo, decode_coo),
    "bsr": (encode_bsr, decode_bsr),
    "ellpack": (encode_ellpack, decode_ellpack),
    "dia": (encode_dia, decode_dia),
    "nm": (encode_nm, decode_nm),
}


def nm_holds(nonzero: np.ndarray, nm: tuple[int, int]) -> bool:
    """Whether each group of ``m`` consecutive columns per row has at most ``n`` non-zeros."""
    n, m = nm
    groups = -(-nonzero.shape[1] // m)
    padded = np.zeros((nonzero.shape[0], groups * m), dtype=bool)
    padded[:, : nonzero.shape[1]] = nonzero
    return bool(padded.reshape(nonzero.shape[0], groups, m).sum(axis=-1).max() <= n)
