"""Bit packing: ``n`` unsigned integers of ``b`` bits stored in ``ceil(n*b/8)`` bytes.

Values are laid out little-endian bit by bit (value ``i`` occupies bits ``i*b`` to
``i*b+b-1`` of the stream), which works for every width 1..8 including 3 and 5, so
3-bit weights cost 3 bits and not a padded nibble.
"""

from __future__ import annotations

import numpy as np


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned integers ``0 <= v < 2**bits`` into a uint8 array."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    flat = np.asarray(values).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 2**bits):
        raise ValueError(f"values out of range for {bits} bits")
    if bits == 8:
        return flat.astype(np.uint8)
    # One row of bits per value, least significant first, then one flat bit stream.
    bit_matrix = (flat.astype(np.uint8)[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``count`` values as uint8."""
    if bits == 8:
        return np.asarray(packed, dtype=np.uint8)[:count].copy()
    stream = np.unpackbits(np.asarray(packed, dtype=np.uint8), bitorder="little")
    bit_matrix = stream[: count * bits].reshape(count, bits)
    weights = (1 << np.arange(bits, dtype=np.uint16)).astype(np.uint16)
    return (bit_matrix.astype(np.uint16) @ weights).astype(np.uint8)
