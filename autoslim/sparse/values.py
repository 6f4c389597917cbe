"""Value coding shared by every sparse format: what counts as zero, how values are stored.

Every format works on a *key matrix*: an integer view of the weight in which ``0`` means
"implicit zero, not stored" and anything else must be stored. Floats are viewed as their
raw bit patterns, so NaN payloads and every other value come back bit-exactly, with one
exception: ``-0.0`` is keyed as ``+0.0`` (an implicit zero, decoded as ``+0.0``). A pruned
weight is ``-0.0`` whenever it was negative (``w * 0``, as ``torch.nn.utils.prune``
folds its mask), about half of all pruned weights; kept as a stored non-zero, a 90 %
pruned model was 0.58x its fp32 bytes instead of 0.12x. The two zeros compare equal
and give equal values in every product and sum a layer computes, so the model's
outputs keep their values (only an output that is exactly zero may change its sign).
Integer levels are their own key (level 0 is the pruned weight).

Stored values are written in their own dtype (``float32``, ``float16``, ``int8``...), except

* ``bfloat16``, which numpy lacks: stored as its raw ``uint16`` bit pattern;
* quantized levels with ``value_bits``: bit-packed with :func:`autoslim._pack.pack_bits`
  as ``level + offset``. The offset is ``2**(bits-1) - 1`` for signed input (the symmetric
  levels ``[-qmax, qmax]`` of :mod:`autoslim.techniques.quantize`) and 0 for unsigned input,
  chosen from the dtype so the same tensor always codes the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from autoslim._pack import pack_bits, packed_nbytes, unpack_bits
from autoslim.errors import AutoslimError

FLOAT_BITS_VIEW = {
    "float64": np.uint64,
    "float32": np.uint32,
    "float16": np.uint16,
    "bfloat16": np.uint16,
}
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
UINT_WIDTHS = (np.uint8, np.uint16, np.uint32, np.uint64)


def index_dtype(max_value: int) -> np.dtype:
    """The smallest unsigned integer dtype holding ``0..max_value`` (uint8 for an empty range)."""
    for dtype in UINT_WIDTHS:
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise AutoslimError(f"index range {max_value} does not fit 64 bits")


def index_nbytes(count: int, max_value: int) -> int:
    return count * index_dtype(max_value).itemsize


@dataclass(frozen=True)
class ValueCodec:
    """How one matrix's values are keyed and stored: its dtype name and optional bit width."""

    dtype: str
    value_bits: int | None = None

    @property
    def offset(self) -> int:
        """Added to signed levels before packing so they become unsigned."""
        if self.value_bits is None or self.dtype.startswith("uint"):
            return 0
        return 2 ** (self.value_bits - 1) - 1

    def nbytes(self, count: int) -> int:
        """Bytes of ``count`` stored values (the ``V(n)`` of the byte formulas)."""
        if self.value_bits is not None:
            return packed_nbytes(count, self.value_bits)
        return count * _storage_dtype(self.dtype).itemsize

    def store(self, keys: np.ndarray) -> np.ndarray:
        """Stored array for a flat vector of keys (padding slots have key 0)."""
        if self.value_bits is not None:
            levels = keys.astype(np.int64) + self.offset
            if levels.size and (levels.min() < 0 or levels.max() >= 2**self.value_bits):
                raise AutoslimError(f"integer levels do not fit value_bits={self.value_bits}")
            return pack_bits(levels.astype(np.uint8), self.value_bits)
        return np.ascontiguousarray(keys).view(_storage_dtype(self.dtype))

    def load(self, stored: np.ndarray, count: int) -> np.ndarray:
        """Inverse of :meth:`store`: ``count`` keys as a flat vector."""
        key_dtype = _key_dtype(self.dtype)
        if self.value_bits is not None:
            levels = unpack_bits(stored, self.value_bits, count).astype(np.int64) - self.offset
            return levels.astype(key_dtype)
        return np.ascontiguousarray(stored).reshape(-1)[:count].view(key_dtype)

    def to_numpy(self, keys: np.ndarray) -> np.ndarray:
        """A decoded key matrix as values; bfloat16 widens exactly to float32 (numpy has none)."""
        if self.dtype == "bfloat16":
            return (keys.astype(np.uint32) << 16).view(np.float32)
        return keys.view(np.dtype(self.dtype))

    def to_tensor(self, keys: np.ndarray) -> torch.Tensor:
        """A decoded key matrix as a tensor of the original dtype, bfloat16 included."""
        if self.dtype == "bfloat16":
            return torch.from_numpy(keys.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(self.to_numpy(keys)).copy())


def _storage_dtype(dtype: str) -> np.dtype:
    return np.dtype(np.uint16) if dtype == "bfloat16" else np.dtype(dtype)


def _key_dtype(dtype: str) -> np.dtype:
    return np.dtype(FLOAT_BITS_VIEW.get(dtype, dtype))


def _unsigned_zeros(keys: np.ndarray) -> np.ndarray:
    """Float bit patterns with ``-0.0`` (the sign bit alone) turned into ``+0.0`` (all zero).

    Returns ``keys`` itself when it holds no ``-0.0``, else a copy: the caller's weight is
    never written to.
    """
    negative_zero = keys.dtype.type(1 << (8 * keys.dtype.itemsize - 1))
    signed = keys == negative_zero
    return np.where(signed, keys.dtype.type(0), keys) if signed.any() else keys


def key_matrix(
    matrix: np.ndarray | torch.Tensor, value_bits: int | None = None
) -> tuple[np.ndarray, ValueCodec]:
    """The key matrix (0 = implicit zero) and the codec that stores this matrix's values."""
    if isinstance(matrix, torch.Tensor):
        matrix = matrix.detach().cpu()
        if matrix.dtype == torch.bfloat16:
            keys = matrix.contiguous().view(torch.int16).numpy().view(np.uint16)
            return _checked(_unsigned_zeros(keys), ValueCodec("bfloat16", value_bits))
        matrix = matrix.numpy()
    array = np.ascontiguousarray(matrix)
    name = array.dtype.name
    if name not in FLOAT_BITS_VIEW and name not in INT_DTYPES:
        raise AutoslimError(f"unsupported weight dtype {name}")
    keys = array.view(_key_dtype(name))
    if name in FLOAT_BITS_VIEW:
        keys = _unsigned_zeros(keys)
    return _checked(keys, ValueCodec(name, value_bits))


def _checked(keys: np.ndarray, codec: ValueCodec) -> tuple[np.ndarray, ValueCodec]:
    if keys.ndim != 2 or 0 in keys.shape:
        raise AutoslimError(
            f"expected a non-empty 2-D weight matrix, got shape {tuple(keys.shape)}"
        )
    if codec.value_bits is not None:
        if codec.dtype not in INT_DTYPES:
            raise AutoslimError(f"value_bits needs integer levels, got {codec.dtype} values")
        if not 1 <= codec.value_bits <= 8:
            raise AutoslimError(f"value_bits must be in 1..8, got {codec.value_bits}")
    return keys, codec
