"""Exact round trip and byte accounting of every sparse format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from autoslim.errors import AutoslimError
from autoslim.sparse.formats import FORMATS, decode, decode_tensor, encode, formula_nbytes

VALUE_KINDS = ("float32", "float16", "bfloat16", "levels")


def _mask(rng: np.random.Generator, shape: tuple[int, int], density: float) -> np.ndarray:
    """Random occupancy with, when there is room, one empty row and one fully dense row."""
    mask = rng.random(shape) < density
    if shape[0] > 1:
        mask[0] = False
        mask[-1] = True
    return mask


def _matrix(rng, shape, density, kind, bits):
    mask = _mask(rng, shape, density)
    if kind == "levels":
        qmax = 2 ** (bits - 1) - 1
        levels = (
            rng.integers(-qmax, qmax + 1, size=shape) if qmax else np.ones(shape, dtype=np.int64)
        )
        return np.where(mask, levels, 0).astype(np.int8)
    values = rng.standard_normal(shape).astype(np.float32)
    values[rng.random(shape) < 0.05] = -0.0  # a pruned weight's signed zero: an implicit zero
    values = np.where(mask, values, np.float32(0.0))
    if kind == "bfloat16":
        return torch.from_numpy(values).to(torch.bfloat16)
    return values.astype(kind)


def _bits(array) -> np.ndarray:
    """Raw bit pattern, so -0.0 vs 0.0 and every payload bit is compared."""
    if isinstance(array, torch.Tensor):
        return array.view(torch.int16).numpy() if array.dtype == torch.bfloat16 else array.numpy()
    if array.dtype.kind == "f":
        return array.view(f"u{array.dtype.itemsize}")
    return array


def _unsigned(array):
    """The matrix with ``-0.0`` as ``+0.0``: what every format decodes (values.py)."""
    if isinstance(array, torch.Tensor):
        return torch.where(array == 0, torch.zeros_like(array), array)
    if array.dtype.kind == "f":
        return np.where(array == 0, array.dtype.type(0), array)
    return array


def _counts(matrix, block, nm) -> dict:
    """Pattern counts computed by plain loops, independent of the encoders."""
    nonzero = _bits(_unsigned(matrix)) != 0
    rows, cols = nonzero.shape
    points = list(zip(*np.nonzero(nonzero), strict=True))
    return {
        "nnz": len(points),
        "blocks": len({(r // block[0], c // block[1]) for r, c in points}),
        "max_row_nnz": int(nonzero.sum(axis=1).max()),
        "diagonals": len({int(c) - int(r) for r, c in points}),
    }


def _nm_holds(matrix, nm) -> bool:
    nonzero = _bits(_unsigned(matrix)) != 0
    return all(
        nonzero[r, c : c + nm[1]].sum() <= nm[0]
        for r in range(nonzero.shape[0])
        for c in range(0, nonzero.shape[1], nm[1])
    )


matrices = st.builds(
    lambda seed, rows, cols, density, kind, bits: (
        _matrix(np.random.default_rng(seed), (rows, cols), density, kind, bits),
        kind,
        bits,
    ),
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.9, 1.0]),
    st.sampled_from(VALUE_KINDS),
    st.integers(2, 8),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    matrices,
    st.tuples(st.integers(1, 5), st.integers(1, 5)),
    st.sampled_from([(2, 4), (1, 2), (3, 8), (1, 1)]),
)
def test_every_format_round_trips_exactly_and_matches_its_byte_formula(case, block, nm):
    matrix, kind, bits = case
    value_bits = bits if kind == "levels" else None
    dtype = "int8" if kind == "levels" else kind
    counts = _counts(matrix, block, nm)
    for fmt in FORMATS:
        if fmt == "nm" and not _nm_holds(matrix, nm):
            with pytest.raises(AutoslimError, match="not"):
                encode(matrix, fmt, block=block, nm=nm, value_bits=value_bits)
            continue
        encoded = encode(matrix, fmt, block=block, nm=nm, value_bits=value_bits)
        back = decode_tensor(encoded) if kind == "bfloat16" else decode(encoded)
        assert back.dtype == matrix.dtype and tuple(back.shape) == tuple(matrix.shape), fmt
        assert np.array_equal(_bits(back), _bits(_unsigned(matrix))), fmt
        expected = formula_nbytes(
            fmt, matrix.shape, block=block, nm=nm, value_bits=value_bits, dtype=dtype, **counts
        )
        assert encoded.nbytes == expected, fmt


def test_bfloat16_decodes_to_numpy_as_exactly_widened_float32():
    matrix = torch.tensor([[0.0, -1.5, 3.140625], [-0.0, 0.0, 65280.0]], dtype=torch.bfloat16)
    back = decode(encode(matrix, "csr"))
    assert back.dtype == np.float32
    expected = matrix.float().numpy().copy()
    expected[1, 0] = 0.0  # -0.0 is an implicit zero, decoded as +0.0
    assert np.array_equal(back.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("fmt", FORMATS)
def test_negative_zero_is_an_implicit_zero_in_every_format(dtype, fmt):
    """A pruned negative weight is ``-0.0`` (``w * 0``); it must cost what ``+0.0`` costs."""
    signed = torch.tensor([[-0.0, 1.5, -0.0, 0.0], [-2.0, -0.0, 0.0, -0.0]], dtype=dtype)
    unsigned = torch.where(signed == 0, torch.zeros_like(signed), signed)
    nm = (2, 4)
    encoded, reference = encode(signed, fmt, nm=nm), encode(unsigned, fmt, nm=nm)
    assert encoded.meta["nnz"] == reference.meta["nnz"] == 2
    assert encoded.meta == reference.meta
    assert encoded.arrays.keys() == reference.arrays.keys()
    for name, array in encoded.arrays.items():
        assert np.array_equal(array, reference.arrays[name]), name
    back = decode_tensor(encoded)
    assert torch.equal(back, unsigned)
    assert not bool((torch.signbit(back) & (back == 0)).any())
    assert bool((torch.signbit(signed) & (signed == 0)).any())  # the input is left as it was


def test_csr_bytes_of_a_hand_counted_matrix():
    matrix = np.array([[0, 2, 0, 0, 1], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0]], dtype=np.float32)
    encoded = encode(matrix, "csr")
    assert encoded.arrays["indptr"].tolist() == [0, 2, 2, 3]
    assert encoded.arrays["indices"].tolist() == [1, 4, 0]
    assert encoded.arrays["values"].tolist() == [2.0, 1.0, 3.0]
    assert encoded.nbytes == 4 * 1 + 3 * 1 + 3 * 4  # uint8 indptr, uint8 indices, fp32 values


@pytest.mark.parametrize(
    ("cols", "expected"), [(256, np.uint8), (257, np.uint16), (65537, np.uint32)]
)
def test_column_indices_use_the_smallest_sufficient_width(cols, expected):
    matrix = np.zeros((1, cols), dtype=np.float16)
    matrix[0, -1] = 1.0
    assert encode(matrix, "csr").arrays["indices"].dtype == expected


def test_four_bit_levels_are_packed_two_per_byte():
    levels = np.array([[1, -7, 0, 7], [0, 0, 3, -1]], dtype=np.int8)
    encoded = encode(levels, "coo", value_bits=4)
    assert encoded.arrays["values"].nbytes == 3  # 5 non-zeros x 4 bits = 20 bits
    assert encoded.meta["value_offset"] == 7
    assert np.array_equal(decode(encoded), levels)


def test_two_four_stores_two_slots_and_two_bit_positions_per_group():
    matrix = np.array([[0, 5, 0, 6, 7, 0, 0, 0]], dtype=np.float32)
    encoded = encode(matrix, "nm")
    assert encoded.arrays["values"].tolist() == [5.0, 6.0, 7.0, 0.0]
    assert encoded.arrays["positions"].nbytes == 1  # 4 positions x 2 bits
    assert np.array_equal(decode(encoded), matrix)


@pytest.mark.parametrize("fmt", FORMATS)
def test_safetensors_payload_equals_nbytes_and_loads_back(fmt, tmp_path):
    rng = np.random.default_rng(3)
    levels = np.where(rng.random((37, 53)) < 0.25, rng.integers(-7, 8, (37, 53)), 0).astype(np.int8)
    levels[:, ::2] = 0  # keep it 2:4
    levels[:, 1::4] = 0
    for matrix, bits in ((levels.astype(np.float32), None), (levels, 4)):
        encoded = encode(matrix, fmt, block=(4, 8), value_bits=bits)
        path = tmp_path / f"{fmt}.safetensors"
        save_file(encoded.arrays, str(path))
        raw = path.read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        assert len(raw) - 8 - header_len == encoded.nbytes
        meta = json.loads(json.dumps(encoded.meta))
        assert np.array_equal(decode((load_file(str(path)), meta)), matrix)


@pytest.mark.parametrize(
    ("matrix", "kwargs", "message"),
    [
        (np.zeros((0, 3), dtype=np.float32), {"fmt": "csr"}, "non-empty 2-D"),
        (np.zeros(4, dtype=np.float32), {"fmt": "csr"}, "non-empty 2-D"),
        (np.zeros((2, 2), dtype=np.float32), {"fmt": "ell"}, "unknown sparse format"),
        (np.zeros((2, 2), dtype=np.float32), {"fmt": "csr", "value_bits": 4}, "integer levels"),
        (np.full((2, 2), 9, dtype=np.int8), {"fmt": "csr", "value_bits": 4}, "do not fit"),
        (np.zeros((2, 2), dtype=np.float32), {"fmt": "bsr", "block": (0, 2)}, "block"),
        (np.zeros((2, 2), dtype=np.float32), {"fmt": "nm", "nm": (3, 2)}, "nm must"),
        (np.zeros((2, 2), dtype=np.complex64), {"fmt": "csr"}, "unsupported weight dtype"),
    ],
)
def test_bad_input_raises_a_one_line_autoslim_error(matrix, kwargs, message):
    kwargs = dict(kwargs)
    fmt = kwargs.pop("fmt")
    with pytest.raises(AutoslimError, match=message):
        encode(matrix, fmt, **kwargs)
