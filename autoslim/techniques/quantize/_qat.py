"""Quantization-aware training: fake quantization in the forward pass, learned through.

Two estimators, attached as ``torch.nn.utils.parametrize`` parametrizations of the
layer's weight so the training loop stays the shared one:

- ``ste``: min-max scale recomputed every step, rounding passed straight through (the
  gradient is 1 inside the clipping range and 0 outside, the "clipped" STE);
- ``lsq``: a learned step size per group (Esser et al., LSQ 2020), initialised from the
  PTQ scale, with the paper's gradient scale ``1 / sqrt(numel · Qp)``.

BatchNorm folding (``torch.nn.utils.fusion.fuse_conv_bn_eval``) merges a BatchNorm into
the convolution before it, so the weights that are quantized are the weights that run.
Divergence (a NaN or exploding loss) is caught by the training loop, which fails the
trial with its reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_eval

from autoslim.techniques.quantize._grid import GridSpec, grouped, qparams


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return (x.round() - x).detach() + x


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in the forward pass, gradient multiplied by ``factor`` in the backward."""
    return (x - x * factor).detach() + x * factor


def _bounds(spec: GridSpec) -> tuple[int, int]:
    return (-spec.qmax, spec.qmax) if spec.symmetric else (0, 2**spec.bits - 1)


class STEFakeQuant(nn.Module):
    """Min-max fake quantization with the clipped straight-through estimator."""

    def __init__(self, spec: GridSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale, zero = qparams(weight, self.spec)
        lo, hi = _bounds(self.spec)
        groups = grouped(weight, self.spec)
        q = torch.clamp(round_ste(groups / scale[..., None]) + zero[..., None], lo, hi)
        return ((q - zero[..., None]) * scale[..., None]).reshape(weight.shape)


class LSQFakeQuant(nn.Module):
    """Learned step size quantization (symmetric grids), one step size per group."""

    def __init__(self, spec: GridSpec, weight: torch.Tensor) -> None:
        super().__init__()
        if not spec.symmetric:
            raise ValueError("LSQ here learns symmetric grids only")
        self.spec = spec
        self.step = nn.Parameter(qparams(weight, spec)[0].clone())
        group_numel = grouped(weight, spec).shape[-1]
        self.grad_factor = 1.0 / math.sqrt(group_numel * spec.qmax)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        step = scale_grad(self.step.abs().clamp_min(1e-8), self.grad_factor)[..., None]
        groups = grouped(weight, self.spec)
        q = round_ste(torch.clamp(groups / step, -self.spec.qmax, self.spec.qmax))
        return (q * step).reshape(weight.shape)


def attach(module: nn.Module, spec: GridSpec, method: str) -> nn.Module:
    quantizer = (
        LSQFakeQuant(spec, module.weight.detach()) if method == "lsq" else STEFakeQuant(spec)
    )
    parametrize.register_parametrization(module, "weight", quantizer)
    return quantizer


def detach_quantizer(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bake the fake-quantized weight in; return LSQ's learned (scale, zero) if any."""
    quantizer = module.parametrizations.weight[0]
    learned = None
    if isinstance(quantizer, LSQFakeQuant):
        step = quantizer.step.detach().abs().clamp_min(1e-8)
        learned = (step, torch.zeros_like(step))
    parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return learned


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """(container, index of the conv) for every Conv directly followed by a BatchNorm in
    an ``nn.Sequential``: the pairs whose folding cannot change what the model computes."""
    pairs = []
    for container in model.modules():
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container)
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, (nn.Conv1d, nn.Conv2d)) and isinstance(
                bn, (nn.BatchNorm1d, nn.BatchNorm2d)
            ):
                pairs.append((container, i))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every foldable BatchNorm into its conv (eval statistics); returns the count."""
    pairs = conv_bn_pairs(model)
    for container, i in pairs:
        conv, bn = container[i].eval(), container[i + 1].eval()
        container[i] = fuse_conv_bn_eval(conv, bn)
        container[i + 1] = nn.Identity()
    return len(pairs)
