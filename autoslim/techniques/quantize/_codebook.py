"""Non-uniform weight grids: a codebook of 2**b values per layer or per output channel.

Stored as the codebook (fp32) plus b-bit packed indices, so a 3-bit k-means layer costs
3 bits a weight plus 8 floats per codebook. Three ways to build the codebook:

- ``pow2``: 0 and ±s·2^-j (shift-friendly: a multiply becomes a shift), s = max|w|;
- ``log``: 0 and ±s·r^-j, geometric between s and the 5th percentile of non-zero |w|;
- ``kmeans``: Lloyd's algorithm from quantile initialisation (deterministic), which
  minimises the squared error for the given number of entries.

Index assignment is nearest-entry. Widths are limited to 2-4 bits: beyond that the
codebook stops paying for itself and nearest-entry search grows with 2**b.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CODEBOOK_KINDS = ("pow2", "log", "kmeans")
MAX_CODEBOOK_BITS = 4
KMEANS_ITERATIONS = 25


@dataclass(frozen=True)
class CodebookSpec:
    bits: int
    kind: str
    per_channel: bool = True

    @property
    def entries(self) -> int:
        return 2**self.bits


def _rows(weight: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    return weight.detach().float().reshape(weight.shape[0] if spec.per_channel else 1, -1)


def _signed(magnitudes: torch.Tensor, entries: int) -> torch.Tensor:
    """[G, m] positive magnitudes → [G, entries] codebook: 0, ±magnitudes, zero padding."""
    zeros = torch.zeros(magnitudes.shape[0], entries - 2 * magnitudes.shape[1])
    return torch.cat([-magnitudes.flip(-1), zeros, magnitudes], dim=1)


def _pow2(rows: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    top = rows.abs().amax(dim=1, keepdim=True)
    exponents = torch.arange(spec.entries // 2 - 1, dtype=torch.float32)
    return _signed(top * 2.0 ** (-exponents.flip(0)), spec.entries)


def _log(rows: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    top = rows.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    count = spec.entries // 2 - 1
    nonzero = torch.where(rows != 0, rows.abs(), torch.nan)
    low = torch.nanquantile(nonzero, 0.05, dim=1, keepdim=True).nan_to_num(1.0).clamp_min(1e-12)
    low = torch.minimum(low, top)
    steps = torch.linspace(0, 1, count) if count > 1 else torch.ones(1)
    return _signed(low * (top / low) ** steps, spec.entries)


def _kmeans(rows: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    probs = (torch.arange(spec.entries, dtype=torch.float32) + 0.5) / spec.entries
    centroids = torch.quantile(rows, probs, dim=1).T.contiguous()  # [G, K]
    for _ in range(KMEANS_ITERATIONS):
        index = (rows[:, :, None] - centroids[:, None, :]).abs().argmin(dim=2)
        sums = torch.zeros_like(centroids).scatter_add_(1, index, rows)
        counts = torch.zeros_like(centroids).scatter_add_(1, index, torch.ones_like(rows))
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
    return centroids.sort(dim=1).values


def make_codebook(weight: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    """The ``[groups, 2**bits]`` codebook of ``weight`` (groups: rows or 1)."""
    builder = {"pow2": _pow2, "log": _log, "kmeans": _kmeans}[spec.kind]
    return builder(_rows(weight, spec), spec).contiguous()


def assign(weight: torch.Tensor, codebook: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    """Nearest codebook index per weight, uint8, same shape as ``weight``."""
    rows = _rows(weight, spec)
    index = (rows[:, :, None] - codebook[:, None, :]).abs().argmin(dim=2)
    return index.to(torch.uint8).reshape(weight.shape)


def lookup(indices: torch.Tensor, codebook: torch.Tensor, spec: CodebookSpec) -> torch.Tensor:
    rows = indices.reshape(codebook.shape[0], -1).long()
    return torch.gather(codebook, 1, rows).reshape(indices.shape)
