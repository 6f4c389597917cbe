"""Pattern features on hand-made matrices, against values counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoslim.sparse.features import pattern_features


def test_pure_diagonal():
    features = pattern_features(np.eye(6, dtype=np.float32), block=(2, 2))
    assert features.nnz == 6
    assert features.sparsity == pytest.approx(30 / 36)
    assert features.diagonals == 1
    assert features.diagonal_dominance == 1.0
    assert features.blocks == 3  # (0,0), (1,1), (2,2) of the 2x2 grid
    assert features.block_fill == pytest.approx(6 / 12)
    assert features.max_row_nnz == 1 and features.row_nnz_cv == 0.0 and features.ellpack_fill == 1.0
    assert features.nm_holds


def test_diagonal_on_a_padded_block_grid():
    # 6x6 padded to 8x8 with 4x4 blocks: rows 0-3 in block (0,0), rows 4-5 in block (1,1).
    features = pattern_features(np.eye(6, dtype=np.float32), block=(4, 4))
    assert features.blocks == 2
    assert features.block_fill == pytest.approx(6 / 32)


def test_block_diagonal():
    matrix = np.zeros((8, 8), dtype=np.float32)
    matrix[:4, :4] = 1.0
    matrix[4:, 4:] = 2.0
    features = pattern_features(matrix, block=(4, 4), top_k=3)
    assert features.blocks == 2 and features.block_fill == 1.0
    assert features.diagonals == 7  # offsets -3..3
    assert features.diagonal_dominance == pytest.approx((8 + 6 + 6) / 32)  # main, +1 and -1
    assert not features.nm_holds  # each row has 4 non-zeros in one group of 4


def test_two_four_pattern_with_irregular_rows():
    matrix = torch.tensor([[1.0, 1, 0, 0, 0, 1, 0, 1], [0, 0, 0, 0, 0, 0, 1, 0]])
    features = pattern_features(matrix, nm=(2, 4))
    assert features.nm_holds
    assert features.sparsity == pytest.approx(11 / 16)
    assert features.max_row_nnz == 4
    assert features.row_nnz_cv == pytest.approx(1.5 / 2.5)  # rows 4 and 1: mean 2.5, std 1.5
    assert features.ellpack_fill == pytest.approx(2.5 / 4)
    assert not pattern_features(matrix, nm=(1, 4)).nm_holds


def test_negative_zero_counts_as_stored_and_empty_matrix_is_defined():
    assert pattern_features(np.array([[-0.0, 0.0]], dtype=np.float32)).nnz == 1
    empty = pattern_features(np.zeros((3, 5), dtype=np.float16))
    assert (empty.sparsity, empty.block_fill, empty.diagonal_dominance, empty.row_nnz_cv) == (1.0, 1.0, 0.0, 0.0)
