"""What a quantize stage leaves on a layer: its grid (or codebook) and the buffers that
decode its levels. The artifact's quantized codec and the int8 kernels read these marks.

A layer's ``weight`` has its marks under their plain names (``weight_scale``,
``autoslim_grid``). A layer holding several weights (a GRU's ``weight_ih_l0``, ...) has
them per weight: buffers ``<weight>_scale`` and attributes ``autoslim_grid__<weight>``,
which :class:`autoslim.space.WeightSlot` reads back as the plain names; every function
here takes ``weight`` for that.
"""

from __future__ import annotations

import torch
from torch import nn

from autoslim.techniques.quantize._codebook import CodebookSpec
from autoslim.techniques.quantize._grid import GridSpec

SPEC_ATTR = "autoslim_grid"
SCALE_BUFFER = "weight_scale"
CODEBOOK_BUFFER = "weight_codebook"
ZERO_BUFFER = "weight_zero_point"


def buffer_name(buffer: str, weight: str = "weight") -> str:
    """``weight_scale`` of ``weight``: ``weight_ih_l0_scale`` for a GRU's ``weight_ih_l0``."""
    return weight + buffer[len("weight") :]


def mark_name(mark: str, weight: str = "weight") -> str:
    """The attribute holding ``mark`` for ``weight`` (the plain name for ``weight``)."""
    return mark if weight == "weight" else f"{mark}__{weight}"


def grid_of(module: nn.Module, weight: str = "weight") -> GridSpec | CodebookSpec | None:
    """The integer grid a quantize stage gave this module's ``weight``, or None."""
    return getattr(module, mark_name(SPEC_ATTR, weight), None)


def set_buffer(module: nn.Module, name: str, value: torch.Tensor) -> None:
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def mark_grid(
    module: nn.Module,
    spec: GridSpec,
    scale: torch.Tensor,
    zero: torch.Tensor,
    weight: str = "weight",
) -> None:
    """Record the grid on the module so the artifact writer can pack its levels.

    Symmetric grids have no zero-point buffer: their zero point is 0 by definition, and
    storing it would cost 4 bytes per group for nothing.
    """
    set_buffer(module, buffer_name(SCALE_BUFFER, weight), scale)
    if not spec.symmetric:
        set_buffer(module, buffer_name(ZERO_BUFFER, weight), zero)
    setattr(module, mark_name(SPEC_ATTR, weight), spec)


def mark_codebook(
    module: nn.Module, spec: CodebookSpec, codebook: torch.Tensor, weight: str = "weight"
) -> None:
    set_buffer(module, buffer_name(CODEBOOK_BUFFER, weight), codebook)
    setattr(module, mark_name(SPEC_ATTR, weight), spec)


def grid_params(module: nn.Module, weight: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, zero_point)`` of a quantized module's ``weight`` (zeros for symmetric
    grids). ``module`` may be a :class:`autoslim.space.WeightSlot`."""
    scale = getattr(module, buffer_name(SCALE_BUFFER, weight)).detach()
    zero = getattr(module, buffer_name(ZERO_BUFFER, weight), None)
    return scale, (torch.zeros_like(scale) if zero is None else zero.detach())
