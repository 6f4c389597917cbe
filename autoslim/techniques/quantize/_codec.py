"""How a quantized weight is stored: its integer levels, bit-packed, never the fp32 values.

A symmetric uniform grid stores signed levels, which make 0.0 the integer 0, so they go
through the same sparse-format chooser as float weights (:func:`encode_matrix`).
Asymmetric and codebook levels keep their own dense-or-bitmap form: no sparse kernel
reads them, so there is no layout to be fastest in. The grid's scales, zero points and
codebooks are ordinary buffers of the layer and are stored as plain tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from autoslim._pack import pack_bits, packed_nbytes, unpack_bits
from autoslim.errors import AutoslimError
from autoslim.registry import Encoded, WeightCodec, register_codec
from autoslim.sparse.checks import check_packed, check_sparse_matrix, is_int
from autoslim.techniques.quantize._codebook import CodebookSpec, assign, lookup
from autoslim.techniques.quantize._grid import GridSpec, dequantize_levels, quantize_levels
from autoslim.techniques.quantize._marks import (
    CODEBOOK_BUFFER,
    SCALE_BUFFER,
    ZERO_BUFFER,
    buffer_name,
    grid_of,
    grid_params,
)
from autoslim.techniques.storage.codec import (
    decode_matrix,
    encode_matrix,
    layer_choice,
    layer_kernel,
)

LEVEL_ENCODINGS = ("int_dense", "int_bitmap")
GRANULARITIES = ("per_tensor", "per_channel", "group")
Spec = GridSpec | CodebookSpec


def grid_layout(spec: Spec) -> dict:
    if isinstance(spec, CodebookSpec):
        return {
            "kind": "codebook",
            "bits": spec.bits,
            "codebook": spec.kind,
            "per_channel": spec.per_channel,
        }
    return {
        "kind": "uniform",
        "bits": spec.bits,
        "symmetric": spec.symmetric,
        "granularity": spec.granularity,
        "group_size": spec.group_size,
    }


def spec_from_layout(grid: Mapping[str, Any]) -> Spec:
    if grid.get("kind") == "codebook":
        return CodebookSpec(
            bits=grid["bits"], kind=grid["codebook"], per_channel=grid["per_channel"]
        )
    return GridSpec(
        bits=grid["bits"],
        symmetric=grid["symmetric"],
        granularity=grid["granularity"],
        group_size=grid["group_size"],
    )


def _codebook_zero_levels(codebook: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """Per weight, the index of the codebook's exact 0.0 entry (255 where there is none)."""
    is_zero = codebook == 0
    index = torch.where(is_zero.any(dim=1), is_zero.float().argmax(dim=1), torch.tensor(255))
    return index.to(torch.uint8)[:, None].expand(
        codebook.shape[0], int(np.prod(shape)) // codebook.shape[0]
    )


def levels_and_zero(
    weight: torch.Tensor, spec: Spec, params: dict
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored levels of a weight and, per element, the level that decodes to 0.0."""
    if isinstance(spec, CodebookSpec):
        codebook = params["codebook"]
        return assign(weight, codebook, spec), _codebook_zero_levels(codebook, list(weight.shape))
    scale, zero = params["scale"], params["zero"]
    return (
        quantize_levels(weight, scale, zero, spec),
        quantize_levels(torch.zeros_like(weight), scale, zero, spec),
    )


def _dequantize(levels: torch.Tensor, spec: Spec, params: dict) -> torch.Tensor:
    if isinstance(spec, CodebookSpec):
        return lookup(levels, params["codebook"], spec)
    return dequantize_levels(levels, params["scale"], params["zero"], spec)


def _module_params(module: nn.Module, spec: Spec) -> dict:
    if isinstance(spec, CodebookSpec):
        return {"codebook": getattr(module, CODEBOOK_BUFFER).detach()}
    scale, zero = grid_params(module)
    return {"scale": scale, "zero": zero}


def _state_params(state: Mapping[str, torch.Tensor], name: str, spec: Spec) -> dict:
    """The grid of weight ``name`` from the loaded buffers: ``fc.weight_scale`` for
    ``fc.weight``, ``gru.weight_ih_l0_scale`` for ``gru.weight_ih_l0``."""
    if isinstance(spec, CodebookSpec):
        return {"codebook": state[buffer_name(CODEBOOK_BUFFER, name)]}
    scale = state[buffer_name(SCALE_BUFFER, name)]
    zero = state.get(buffer_name(ZERO_BUFFER, name), torch.zeros_like(scale))
    return {"scale": scale, "zero": zero}


def encode_levels(
    name: str, levels: torch.Tensor, zero_levels: torch.Tensor, spec: Spec
) -> Encoded:
    """Unsigned levels, dense-packed or as bitmap + packed non-zeros, whichever is smaller.

    "Zero" is the level that decodes to 0.0 (the zero point), so pruned weights cost one
    bit each in the bitmap form whatever the grid.
    """
    flat, zero_flat = levels.reshape(-1).numpy(), zero_levels.reshape(-1).numpy()
    nonzero = flat != zero_flat
    nnz, n, bits = int(nonzero.sum()), flat.size, spec.bits
    layout = {"shape": list(levels.shape), "grid": grid_layout(spec)}
    if packed_nbytes(n, 1) + packed_nbytes(nnz, bits) < packed_nbytes(n, bits):
        data = {
            f"{name}::mask": pack_bits(nonzero.astype(np.uint8), 1),
            f"{name}::q": pack_bits(flat[nonzero], bits),
        }
        layout |= {"enc": "int_bitmap", "nnz": nnz}
    else:
        data = {f"{name}::q": pack_bits(flat, bits)}
        layout |= {"enc": "int_dense"}
    return Encoded({k: torch.from_numpy(v) for k, v in data.items()}, layout)


def _fail(name: str, problem: str) -> None:
    raise AutoslimError(f"{name}: {problem}")


def check_grid(name: str, grid: object) -> None:
    if not isinstance(grid, dict) or grid.get("kind") not in ("uniform", "codebook"):
        _fail(name, "the grid record is not a uniform grid or a codebook")
    if not is_int(grid.get("bits"), 1, 8):
        _fail(name, f"bit width {grid.get('bits')!r} is not in 1..8")
    if grid["kind"] == "codebook":
        if not isinstance(grid.get("per_channel"), bool) or not isinstance(
            grid.get("codebook"), str
        ):
            _fail(name, "the codebook record is incomplete")
        return
    if not isinstance(grid.get("symmetric"), bool) or grid.get("granularity") not in GRANULARITIES:
        _fail(name, "the grid record is incomplete")
    size = grid.get("group_size")
    if (grid["granularity"] == "group") != is_int(size, 1):
        _fail(name, f"group size {size!r} does not fit granularity {grid['granularity']!r}")


def _check_levels(
    name: str, entry: Mapping[str, Any], numel: int, bits: int, tensors: Mapping[str, torch.Tensor]
) -> None:
    if entry["enc"] == "int_dense":
        check_packed(tensors, f"{name}::q", numel, bits)
        return
    nnz = entry.get("nnz")
    if not is_int(nnz, 0, numel):
        _fail(name, f"non-zero count {nnz!r} is not in 0..{numel}")
    check_packed(tensors, f"{name}::mask", numel, 1)
    check_packed(tensors, f"{name}::q", nnz, bits)


def _check_signed_values(
    name: str, meta: Mapping[str, Any], grid: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    if (
        meta.get("dtype") != "int8"
        or meta.get("value_bits") != grid["bits"]
        or grid["kind"] != "uniform"
        or not grid["symmetric"]
    ):
        _fail(
            name,
            f"quantized values must be int8 levels of {grid['bits']} bits, "
            f"found {meta.get('dtype')!r}/{meta.get('value_bits')!r}",
        )
    check_packed(tensors, f"{name}::values", meta["stored"], grid["bits"])


@register_codec
class QuantizedWeightCodec(WeightCodec):
    """The levels of a weight a quantize stage marked with a grid or a codebook: a layer's
    ``weight``, or one of a recurrent layer's matrices through its
    :class:`autoslim.space.WeightSlot` (which reads that matrix's marks)."""

    name = "quantized"

    def encode(self, name: str, module: nn.Module, plan: dict[str, Any]) -> Encoded | None:
        spec = grid_of(module)
        if spec is None:
            return None
        levels, zero_levels = levels_and_zero(module.weight, spec, _module_params(module, spec))
        if isinstance(spec, GridSpec) and spec.symmetric:
            signed = (levels.to(torch.int16) - spec.qmax).to(torch.int8)
            enc = encode_matrix(
                name,
                signed,
                list(levels.shape),
                value_bits=spec.bits,
                choice=layer_choice(module, plan),
                kernel=layer_kernel(name, plan),
            )
            enc.layout["grid"] = grid_layout(spec)
            return enc
        return encode_levels(name, levels, zero_levels, spec)

    def decodes(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("enc") in LEVEL_ENCODINGS or (
            entry.get("enc") == "sparse" and "grid" in entry
        )

    def check(
        self,
        name: str,
        entry: Mapping[str, Any],
        shape: tuple[int, ...],
        tensors: Mapping[str, torch.Tensor],
    ) -> None:
        grid = entry.get("grid")
        check_grid(name, grid)
        if entry["enc"] in LEVEL_ENCODINGS:
            _check_levels(name, entry, math.prod(shape), grid["bits"], tensors)
            return
        meta = check_sparse_matrix(name, entry.get("meta"), shape, tensors)
        _check_signed_values(name, meta, grid, tensors)

    def decode(
        self,
        name: str,
        entry: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        spec = spec_from_layout(entry["grid"])
        params = _state_params(state, name, spec)
        if entry["enc"] == "sparse":
            levels = (decode_matrix(name, entry, tensors).to(torch.int16) + spec.qmax).to(
                torch.uint8
            )
            return _dequantize(levels, spec, params)
        return _dequantize(self._unpack_levels(name, entry, tensors, spec, params), spec, params)

    @staticmethod
    def _unpack_levels(
        name: str,
        entry: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        spec: Spec,
        params: dict,
    ) -> torch.Tensor:
        shape = entry["shape"]
        _, zero_levels = levels_and_zero(torch.zeros(shape), spec, params)
        levels = zero_levels.reshape(-1).numpy().copy()
        packed = tensors[f"{name}::q"].numpy()
        if entry["enc"] == "int_dense":
            levels[:] = unpack_bits(packed, spec.bits, levels.size)
        else:
            mask = unpack_bits(tensors[f"{name}::mask"].numpy(), 1, levels.size).astype(bool)
            levels[mask] = unpack_bits(packed, spec.bits, entry["nnz"])
        return torch.from_numpy(levels).reshape(shape)
