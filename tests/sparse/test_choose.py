"""The hybrid chooser: never larger than the smallest candidate; latency by crossover."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autoslim.errors import AutoslimError
from autoslim.sparse import choose
from autoslim.sparse.formats import FORMATS, encode


def _levels(seed: int, shape: tuple[int, int], density: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(rng.random(shape) < density, rng.integers(-7, 8, shape), 0).astype(np.int8)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 24), st.integers(1, 24)),
    st.floats(0.0, 1.0),
    st.lists(st.sampled_from(FORMATS), min_size=1, unique=True),
    st.sampled_from([None, 4]),
)
def test_chooser_is_never_larger_than_the_smallest_candidate(
    seed, shape, density, candidates, bits
):
    matrix = _levels(seed, shape, density)
    if bits is None:
        matrix = matrix.astype(np.float32)
    feasible = choose.feasible_formats(matrix, candidates, (2, 4))
    if not feasible:
        with pytest.raises(AutoslimError):
            choose.smallest_format(matrix, candidates, value_bits=bits)
        return
    fmt, encoded = choose.smallest_format(matrix, candidates, value_bits=bits)
    sizes = [encode(matrix, f, value_bits=bits).nbytes for f in feasible]
    assert fmt in feasible
    assert encoded.nbytes == min(sizes)


def test_ninety_percent_sparse_layer_meets_the_byte_targets():
    rng = np.random.default_rng(0)
    levels = np.zeros(768 * 3072, dtype=np.int8)
    keep = rng.choice(levels.size, size=levels.size // 10, replace=False)
    levels[keep] = rng.choice([-7, -3, -1, 1, 2, 7], size=keep.size)
    levels = levels.reshape(768, 3072)
    dense_fp32 = 768 * 3072 * 4
    candidates = ("dense", "bitmap", "csr", "coo")
    _, fp32 = choose.smallest_format(levels.astype(np.float32), candidates)
    fmt, packed = choose.smallest_format(levels, candidates, value_bits=4)
    # 235,929 non-zeros: bitmap 294,912 B + values (4 B or 4 bits each).
    assert fp32.nbytes == 294_912 + 235_929 * 4
    assert (fmt, packed.nbytes) == ("bitmap", 294_912 + (235_929 * 4 + 7) // 8)
    assert fp32.nbytes / dense_fp32 <= 0.2 and packed.nbytes / dense_fp32 <= 0.06


def test_format_choices_offer_auto_the_policies_and_every_format():
    assert choose.FORMAT_CHOICES == (
        "auto",
        "smallest",
        "fastest",
        "dense",
        "bitmap",
        "csr",
        "csc",
        "coo",
        "bsr",
        "ellpack",
        "dia",
        "nm",
    )
    matrix = np.eye(16, dtype=np.float32)
    assert choose.choose_format(matrix, "auto")[0] == "dia"
    assert choose.choose_format(matrix, "smallest")[0] == "dia"
    assert choose.choose_format(matrix, "fastest", kernel="csr")[0] == "csr"
    assert choose.choose_format(matrix, "csr")[1].meta["format"] == "csr"
    with pytest.raises(AutoslimError, match="unknown format choice"):
        choose.choose_format(matrix, "hybrid")


@pytest.mark.parametrize(
    ("kernel", "expected"), [("csr", "csr"), ("dense", "bitmap"), ("semi_structured", "bitmap")]
)
def test_fastest_format_is_the_layout_the_kernel_reads_else_the_smallest(kernel, expected):
    # ~90 % zeros in 512x512 (2-byte CSR and CSC indices): the bitmap is smallest. A dense
    # kernel decodes any format at load, so storing dense would add bytes for no speed.
    # Random zeros are not 2:4, so N:M is out.
    matrix = _levels(1, (512, 512), 0.1).astype(np.float32)
    assert choose.smallest_format(matrix)[0] == "bitmap"
    fmt, encoded = choose.fastest_format(matrix, kernel)
    assert (fmt, encoded.meta["format"]) == (expected, expected)


def test_fastest_format_keeps_to_the_candidates():
    matrix = _levels(1, (512, 512), 0.1).astype(np.float32)
    assert choose.fastest_format(matrix, "csr", ("dense", "coo"))[0] == "coo"


def test_fastest_format_stores_two_four_weights_for_the_semi_structured_kernel():
    matrix = np.tile(np.array([1.0, 0.0, 2.0, 0.0], dtype=np.float32), (8, 4))
    assert choose.fastest_format(matrix, "semi_structured")[0] == "nm"
