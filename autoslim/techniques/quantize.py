"""Per-layer weight quantization: symmetric, per output channel, min-max calibrated.

Each layer gets a bit width from {2, 3, 4, 8} or stays fp32. For ``b`` bits the integer
grid is the narrow symmetric range ``[-qmax, qmax]`` with ``qmax = 2**(b-1) - 1`` (2 bits
is ternary), and the scale of output channel ``c`` is ``max|w_c| / qmax``. The quantized
model keeps ``weight = q * scale`` in fp32 plus a ``weight_scale`` buffer; the artifact
writer turns that into bit-packed integers, so the bytes on disk are real.
"""

from __future__ import annotations

from typing import Literal

import optuna
import torch
from pydantic import Field
from torch import nn

from autoslim.pipeline import ApplyContext, register_handler
from autoslim.recipe import StageConfig, resolve_layer_map
from autoslim.space import ComponentSpec, ModelInfo, compressible_layers

BitWidth = Literal[2, 3, 4, 8, "fp32"]
INT_BITS = (2, 3, 4, 8)
QBITS_ATTR = "autoslim_qbits"
SCALE_BUFFER = "weight_scale"


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def channel_scale(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Min-max calibrated symmetric scale per output channel (dim 0).

    An all-zero channel (fully pruned) gets scale 1 so dequantization stays exact zeros
    instead of dividing by zero.
    """
    absmax = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1)
    scale = absmax / qmax(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale)).to(torch.float32)


def _broadcast(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return scale.reshape(-1, *([1] * (weight.dim() - 1)))


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer levels ``clamp(round(w / s), -qmax, qmax)`` as int8."""
    limit = qmax(bits)
    q = torch.round(weight.detach() / _broadcast(scale, weight)).clamp_(-limit, limit)
    return q.to(torch.int8)


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.float32) * _broadcast(scale, q)


def quantized_bits(module: nn.Module) -> int | None:
    """The bit width a quantize stage gave this module, or None if it is full precision."""
    return getattr(module, QBITS_ATTR, None)


def mark_quantized(module: nn.Module, bits: int, scale: torch.Tensor) -> None:
    """Record the grid on the module so the artifact writer can pack its integers."""
    if SCALE_BUFFER in module._buffers:
        module._buffers[SCALE_BUFFER] = scale
    else:
        module.register_buffer(SCALE_BUFFER, scale)
    setattr(module, QBITS_ATTR, bits)


class QuantizeConfig(StageConfig):
    """Bit width per layer: ``layers`` maps exact names or ``re:`` regexes to a width,
    every other compressible layer gets ``default``."""

    kind: Literal["quantize"] = "quantize"
    default: BitWidth = "fp32"
    layers: dict[str, BitWidth] = Field(default_factory=dict)
    granularity: Literal["per_channel"] = "per_channel"
    symmetric: Literal[True] = True
    calibration: Literal["minmax"] = "minmax"

    def bits_by_layer(self, layer_names: list[str]) -> dict[str, int]:
        """Concrete integer widths per layer (fp32 layers omitted)."""
        resolved = resolve_layer_map(self.layers, layer_names)
        plan = {name: resolved.get(name, self.default) for name in layer_names}
        return {name: bits for name, bits in plan.items() if bits != "fp32"}


@register_handler(QuantizeConfig)
class WeightQuantHandler:
    @torch.no_grad()
    def apply(self, model: nn.Module, config: QuantizeConfig, ctx: ApplyContext) -> nn.Module:
        layers = compressible_layers(model)
        for name, bits in config.bits_by_layer(list(layers)).items():
            module = layers[name]
            scale = channel_scale(module.weight, bits)
            module.weight.copy_(dequantize_weight(quantize_weight(module.weight, scale, bits), scale))
            mark_quantized(module, bits, scale)
        return model

    def rebuild(self, model: nn.Module, config: QuantizeConfig) -> nn.Module:
        layers = compressible_layers(model)
        for name, bits in config.bits_by_layer(list(layers)).items():
            module = layers[name]
            mark_quantized(module, bits, torch.ones(module.weight.shape[0]))
        return model


class WeightQuantSpace(ComponentSpec):
    """Search dimensions: one bit width per layer (or one for all), from ``bits``.

    ``layer_bits`` narrows the choices of chosen layers (exact name or ``re:`` regex),
    e.g. to keep a sensitive first layer at 8 bits or fp32.
    """

    type: Literal["quantize.weight"] = "quantize.weight"
    name: str = "quant"
    bits: list[BitWidth] = Field(default=[2, 3, 4, 8, "fp32"], min_length=1)
    per_layer: bool = True
    layers: str = ".*"
    layer_bits: dict[str, list[BitWidth]] = Field(default_factory=dict)

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> QuantizeConfig | None:
        if not self.enabled(trial):
            return None
        if not self.per_layer:
            return QuantizeConfig(default=trial.suggest_categorical(f"{self.name}.bits", self.bits))
        choices = resolve_layer_map(self.layer_bits, info.names)
        plan = {
            layer: trial.suggest_categorical(f"{self.name}.bits.{layer}", choices.get(layer, self.bits))
            for layer in info.matching(self.layers)
        }
        return QuantizeConfig(layers=plan)
