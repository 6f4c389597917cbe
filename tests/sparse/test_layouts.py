"""N:M pattern detection on hand-made matrices."""

from __future__ import annotations

import numpy as np

from autoslim.sparse.layouts import nm_holds


def test_two_four_holds_on_rows_with_at_most_two_per_group():
    nonzero = np.array([[1, 1, 0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1, 0]], dtype=bool)
    assert nm_holds(nonzero, (2, 4))
    assert not nm_holds(nonzero, (1, 4))


def test_a_full_group_breaks_the_pattern_and_padding_counts_as_zero():
    block = np.zeros((8, 8), dtype=bool)
    block[:4, :4] = True
    assert not nm_holds(block, (2, 4))
    assert nm_holds(np.array([[1, 1, 0, 0, 1]], dtype=bool), (2, 4))  # 5 columns: last group padded
    assert nm_holds(np.eye(6, dtype=bool), (2, 4))
