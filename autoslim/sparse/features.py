"""Pattern features of a weight matrix: the signals that say which sparse format can pay.

Each feature predicts one format's overhead, which is why it is defined as it is:

* ``sparsity`` = 1 - nnz / (R*C): the index-vs-value trade of CSR/CSC/COO.
* ``block_fill`` = nnz / (B * r * c), B = ``r x c`` blocks (on the zero-padded grid) holding
  any non-zero: the fraction of BSR's stored slots that are real. 1.0 means the non-zeros
  tile whole blocks; ``1/(r*c)`` means each sits alone in its block. 1.0 for an all-zero
  matrix (nothing is stored, nothing wasted). This is the "blockiness".
* ``diagonal_dominance`` = fraction of nnz on the ``top_k`` most populated diagonals
  (0.0 for an all-zero matrix); ``diagonals`` = number of occupied diagonals, DIA's D.
* ``row_nnz_cv`` = population std / mean of per-row nnz (0.0 when all rows are equal or
  the matrix is empty), and ``ellpack_fill`` = mean / max row nnz, the fraction of
  ELLPACK's ``R*K`` slots that are real (1.0 for an all-zero matrix).
* ``nm_holds``: every group of ``m`` columns in every row has at most ``n`` non-zeros.

The raw counts (``nnz``, ``blocks``, ``max_row_nnz``, ``diagonals``) are exactly what
:func:`autoslim.sparse.formats.formula_nbytes` needs to predict bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from autoslim.sparse.values import key_matrix


@dataclass(frozen=True)
class PatternFeatures:
    shape: tuple[int, int]
    nnz: int
    sparsity: float
    blocks: int
    block_fill: float
    diagonals: int
    diagonal_dominance: float
    max_row_nnz: int
    row_nnz_cv: float
    ellpack_fill: float
    nm_holds: bool

    def as_dict(self) -> dict:
        return asdict(self)


def _occupied_blocks(nonzero: np.ndarray, block: tuple[int, int]) -> int:
    rows, cols = np.nonzero(nonzero)
    return len(np.unique(rows // block[0] * (-(-nonzero.shape[1] // block[1])) + cols // block[1]))


def _diagonal_counts(nonzero: np.ndarray) -> np.ndarray:
    """nnz per occupied diagonal, most populated first."""
    rows, cols = np.nonzero(nonzero)
    _, counts = np.unique(cols.astype(np.int64) - rows, return_counts=True)
    return np.sort(counts)[::-1]


def nm_holds(nonzero: np.ndarray, nm: tuple[int, int]) -> bool:
    """Whether each group of ``m`` consecutive columns per row has at most ``n`` non-zeros."""
    n, m = nm
    groups = -(-nonzero.shape[1] // m)
    padded = np.zeros((nonzero.shape[0], groups * m), dtype=bool)
    padded[:, : nonzero.shape[1]] = nonzero
    return bool(padded.reshape(nonzero.shape[0], groups, m).sum(axis=-1).max() <= n)


def _row_stats(nonzero: np.ndarray) -> tuple[int, float, float]:
    per_row = nonzero.sum(axis=1)
    mean, peak = float(per_row.mean()), int(per_row.max())
    cv = float(per_row.std() / mean) if mean else 0.0
    return peak, cv, (mean / peak if peak else 1.0)


def pattern_features(
    matrix: np.ndarray | torch.Tensor,
    *,
    block: tuple[int, int] = (4, 4),
    nm: tuple[int, int] = (2, 4),
    top_k: int = 1,
) -> PatternFeatures:
    """All pattern features of ``matrix`` (zero = zero bit pattern, as in the encoders)."""
    keys, _ = key_matrix(matrix)
    nonzero = keys != 0
    nnz = int(nonzero.sum())
    blocks = _occupied_blocks(nonzero, block)
    diagonal_counts = _diagonal_counts(nonzero)
    peak, cv, ell_fill = _row_stats(nonzero)
    return PatternFeatures(
        shape=(int(keys.shape[0]), int(keys.shape[1])),
        nnz=nnz,
        sparsity=1.0 - nnz / keys.size,
        blocks=blocks,
        block_fill=nnz / (blocks * block[0] * block[1]) if blocks else 1.0,
        diagonals=len(diagonal_counts),
        diagonal_dominance=float(diagonal_counts[:top_k].sum() / nnz) if nnz else 0.0,
        max_row_nnz=peak,
        row_nnz_cv=cv,
        ellpack_fill=ell_fill,
        nm_holds=nm_holds(nonzero, nm),
    )
