"""Integer grids for weights: scales, zero points, calibration, (de)quantization.

Pure tensor maths, no modules. A weight of shape ``[out, ...]`` is viewed as
``[out, groups, group_size]``: per-tensor is one group spanning everything, per-channel
one group per output row, group-wise ``group_size`` consecutive inputs of a row. Every
group gets its own scale (and zero point when asymmetric).

Symmetric grids use the narrow range ``[-qmax, qmax]`` (``qmax = 2**(b-1) - 1``) so zero
is exact and the grid is sign-symmetric; asymmetric grids use ``[0, 2**b - 1]`` with an
integer zero point. Stored levels are always unsigned: ``q + qmax`` or ``q``.

Calibration picks the clipping range per group:

- ``minmax``: the full range of the weights (no clipping);
- ``percentile``: the ``percentile``-th percentile of ``|w|`` (sym) or both tails (asym);
- ``mse``: the clip in a fixed grid of ratios of the min-max range that minimises the
  group's squared quantization error;
- ``kl``: the entropy calibration of TensorRT (Migacz 2017) on a histogram of ``|w|``:
  the threshold whose quantized distribution is closest in KL divergence to the clipped
  original one. Asymmetric grids apply the symmetric threshold to both tails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MSE_RATIOS = torch.linspace(0.3, 1.0, 36)
KL_BINS = 256


@dataclass(frozen=True)
class GridSpec:
    bits: int
    symmetric: bool = True
    granularity: str = "per_channel"  # per_tensor | per_channel | group
    group_size: int | None = None
    calibration: str = "minmax"  # minmax | percentile | mse | kl
    percentile: float = 99.9

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def levels(self) -> int:
        """Number of distinct stored levels (what the bit width must hold)."""
        return 2 * self.qmax + 1 if self.symmetric else 2**self.bits


def grouped(weight: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """View ``weight`` as ``[rows, groups, group_size]`` for the spec's granularity."""
    if spec.granularity == "per_tensor":
        return weight.reshape(1, 1, -1)
    rows = weight.reshape(weight.shape[0], -1)
    if spec.granularity == "per_channel":
        return rows.unsqueeze(1)
    size = spec.group_size or rows.shape[1]
    if rows.shape[1] % size:
        raise ValueError(f"group_size {size} does not divide the {rows.shape[1]} inputs per row")
    return rows.reshape(rows.shape[0], rows.shape[1] // size, size)


def _clip_range(groups: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group (low, high) before any search; symmetric ranges are (-a, a)."""
    if spec.calibration == "percentile":
        q = spec.percentile / 100.0
        if spec.symmetric:
            high = torch.quantile(groups.abs(), q, dim=-1)
            return -high, high
        return torch.quantile(groups, 1 - q, dim=-1), torch.quantile(groups, q, dim=-1)
    if spec.calibration == "kl":
        high = kl_threshold(groups.abs(), spec.qmax + 1)
        return (
            (-high, high)
            if spec.symmetric
            else (
                torch.maximum(groups.amin(dim=-1), -high),
                torch.minimum(groups.amax(dim=-1), high),
            )
        )
    if spec.symmetric:
        high = groups.abs().amax(dim=-1)
        return -high, high
    return groups.amin(dim=-1), groups.amax(dim=-1)


def _kl_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    p = p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    q = q / q.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    mask = p > 0
    return torch.where(
        mask, p * (torch.log(p.clamp_min(1e-12)) - torch.log(q.clamp_min(1e-12))), 0
    ).sum(-1)


def _quantized_histogram(p: torch.Tensor, levels: int) -> torch.Tensor:
    """Merge ``p``'s bins into ``levels`` equal chunks, spreading each chunk's mass over its
    non-empty bins (empty bins stay empty, as in TensorRT's calibration)."""
    width = p.shape[-1]
    chunk = torch.div(torch.arange(width) * levels, width, rounding_mode="floor")
    one_hot = torch.nn.functional.one_hot(chunk, levels).to(p.dtype)  # [width, levels]
    mass = p @ one_hot
    support = (p > 0).to(p.dtype) @ one_hot
    spread = mass / support.clamp_min(1)
    return (spread @ one_hot.T) * (p > 0)


def kl_threshold(magnitudes: torch.Tensor, levels: int) -> torch.Tensor:
    """Per-group clip of ``|w|`` minimising KL(clipped || quantized), over KL_BINS bins."""
    top = magnitudes.amax(dim=-1).clamp_min(1e-12)
    index = torch.clamp((magnitudes / top[..., None] * KL_BINS).long(), max=KL_BINS - 1)
    hist = torch.zeros(*index.shape[:-1], KL_BINS, dtype=torch.float64)
    hist.scatter_add_(-1, index, torch.ones_like(index, dtype=torch.float64))
    best = torch.full(top.shape, float("inf"), dtype=torch.float64)
    threshold = top.clone()
    for cut in range(levels, KL_BINS + 1):
        p = hist[..., :cut].clone()
        p[..., -1] += hist[..., cut:].sum(dim=-1)
        divergence = _kl_rows(p, _quantized_histogram(hist[..., :cut], levels))
        better = divergence < best
        best = torch.where(better, divergence, best)
        threshold = torch.where(better, top * cut / KL_BINS, threshold)
    return threshold.to(magnitudes.dtype)


def _params_for(
    low: torch.Tensor, high: torch.Tensor, spec: GridSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and integer zero point that map [low, high] onto the integer grid."""
    if spec.symmetric:
        scale = torch.maximum(high.abs(), low.abs()) / spec.qmax
        zero = torch.zeros_like(scale)
    else:
        low, high = (
            torch.minimum(low, torch.zeros_like(low)),
            torch.maximum(high, torch.zeros_like(high)),
        )
        scale = (high - low) / (2**spec.bits - 1)
        zero = torch.round(-low / torch.where(scale > 0, scale, torch.ones_like(scale)))
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero groups stay exact
    return scale.to(torch.float32), zero.to(torch.float32)


def qparams(weight: torch.Tensor, spec: GridSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Calibrated per-group ``(scale, zero_point)``, each of shape ``[rows, groups]``."""
    groups = grouped(weight.detach().float(), spec)
    low, high = _clip_range(groups, spec)
    if spec.calibration != "mse":
        return _params_for(low, high, spec)
    best_err = torch.full(low.shape, float("inf"))
    best = _params_for(low, high, spec)
    for ratio in MSE_RATIOS:
        scale, zero = _params_for(low * ratio, high * ratio, spec)
        err = ((_fake(groups, scale, zero, spec) - groups) ** 2).sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, scale, best[0]), torch.where(better, zero, best[1]))
    return best


def _limits(spec: GridSpec) -> tuple[int, int]:
    return (-spec.qmax, spec.qmax) if spec.symmetric else (0, 2**spec.bits - 1)


def _fake(
    groups: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec
) -> torch.Tensor:
    lo, hi = _limits(spec)
    q = torch.clamp(torch.round(groups / scale[..., None]) + zero[..., None], lo, hi)
    return (q - zero[..., None]) * scale[..., None]


def quantize_levels(
    weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec
) -> torch.Tensor:
    """Unsigned stored levels (uint8), same shape as ``weight``."""
    lo, hi = _limits(spec)
    groups = grouped(weight.detach().float(), spec)
    q = torch.clamp(torch.round(groups / scale[..., None]) + zero[..., None], lo, hi)
    return (q - lo).to(torch.uint8).reshape(weight.shape)


def dequantize_levels(
    levels: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, spec: GridSpec
) -> torch.Tensor:
    """Inverse of :func:`quantize_levels` (up to rounding): fp32 weights."""
    lo, _ = _limits(spec)
    groups = grouped(levels.to(torch.float32) + lo, spec)
    return ((groups - zero[..., None]) * scale[..., None]).reshape(levels.shape)


def fake_quantize(
    weight: torch.Tensor, spec: GridSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize-dequantize ``weight``; returns ``(dequantized, scale, zero_point)``."""
    scale, zero = qparams(weight, spec)
    levels = quantize_levels(weight, scale, zero, spec)
    return dequantize_levels(levels, scale, zero, spec), scale, zero
