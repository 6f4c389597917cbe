"""What a quantize stage leaves on a layer: its grid (or codebook) and the buffers that
decode its levels. The artifact's quantized codec and the int8 kernels read these marks."""

from __future__ import annotations

import torch
from torch import nn

from autoslim.techniques.quantize._codebook import CodebookSpec
from autoslim.techniques.quantize._grid import GridSpec

SPEC_ATTR = "autoslim_grid"
SCALE_BUFFER = "weight_scale"
CODEBOOK_BUFFER = "weight_codebook"
ZERO_BUFFER = "weight_zero_point"


def grid_of(module: nn.Module) -> GridSpec | CodebookSpec | None:
    """The integer grid a quantize stage gave this module, or None."""
    return getattr(module, SPEC_ATTR, None)


def set_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def mark_grid(module: nn.Module, spec: GridSpec, scale: torch.Tensor, zero: torch.Tensor) -> None:
    """Record the grid on the module so the artifact writer can pack its levels.

    Symmetric grids have no zero-point buffer: their zero point is 0 by definition, and
    storing it would cost 4 bytes per group for nothing.
    """
    set_buffer(module, SCALE_BUFFER, scale)
    if not spec.symmetric:
        set_buffer(module, ZERO_BUFFER, zero)
    setattr(module, SPEC_ATTR, spec)


def mark_codebook(module: nn.Module, spec: CodebookSpec, codebook: torch.Tensor) -> None:
    set_buffer(module, CODEBOOK_BUFFER, codebook)
    setattr(module, SPEC_ATTR, spec)


def grid_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` of a quantized module (zeros for symmetric grids)."""
    scale = getattr(module, SCALE_BUFFER).detach()
    zero = module._buffers.get(ZERO_BUFFER)
    return scale, (torch.zeros_like(scale) if zero is None else zero.detach())
