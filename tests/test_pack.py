from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoslim._pack import pack_bits, packed_nbytes, unpack_bits


@settings(max_examples=200, deadline=None)
@given(bits=st.integers(1, 8), data=st.data())
def test_pack_round_trip_is_exact_and_tight(bits, data):
    values = np.array(
        data.draw(st.lists(st.integers(0, 2**bits - 1), max_size=300)), dtype=np.uint8
    )
    packed = pack_bits(values, bits)
    assert packed.dtype == np.uint8
    assert packed.size == packed_nbytes(values.size, bits)
    np.testing.assert_array_equal(unpack_bits(packed, bits, values.size), values)


def test_three_bit_layout_is_little_endian_bitstream():
    # values 5 (101), 3 (011), 7 (111): stream bits 1,0,1, 1,1,0, 1,1,1 -> byte0 = 0b11011101
    packed = pack_bits(np.array([5, 3, 7], dtype=np.uint8), 3)
    assert packed.tolist() == [0b11011101, 0b1]


def test_out_of_range_values_are_refused():
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(np.array([4]), 2)
