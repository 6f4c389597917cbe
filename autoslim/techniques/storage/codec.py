"""How a float weight is stored: at its width (fp32, fp16, bf16), in a sparse format.

Every weight that no other codec claims ends here. Its format is the layer's storage
mark (a storage stage pins one per layer) or, unpinned, the recipe's storage policy:
the smallest of every format (dense included, measured by encoding it) or, with
``fastest``, the layout of the kernel the loaded model will run it on. Quantized
weights borrow :func:`encode_matrix` for their signed levels, so every sparse layout
goes through one chooser.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.pipeline import prepare_runtime
from autoslim.recipe import Recipe
from autoslim.registry import Encoded, WeightCodec, register_codec
from autoslim.space import compressible_layers
from autoslim.sparse.checks import check_sparse_matrix
from autoslim.sparse.choose import choose_format, feasible_formats
from autoslim.sparse.formats import FORMATS, decode_tensor
from autoslim.sparse.policy import FASTEST, SMALLEST, policy_of
from autoslim.sparse.runtime import planned_kernels

FORMAT_ATTR = "autoslim_storage_format"
FLOAT_ATTR = "autoslim_float"
STORED_FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# The dtype names a sparse layout records for float values, and the tensor dtype that
# holds them (bf16 values are stored as their raw 16 bits).
FLOAT_STORAGE = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.uint16}
POLICY = "storage_policy"
KERNELS = "kernels"


def storage_format(module: nn.Module) -> str:
    """The format a storage stage pinned for this layer, or ``auto`` (follow the policy)."""
    return getattr(module, FORMAT_ATTR, "auto")


def float_width_of(module: nn.Module) -> str | None:
    """``"fp16"``/``"bf16"`` if the module's weight is stored at half width, else None."""
    return getattr(module, FLOAT_ATTR, None)


def layer_choice(module: nn.Module, plan: Mapping[str, Any]) -> str:
    """A storage stage's value for this layer, where ``auto`` (no stage) means the policy."""
    pinned = storage_format(module)
    return plan.get(POLICY, SMALLEST) if pinned == "auto" else pinned


def layer_kernel(weight_name: str, plan: Mapping[str, Any]) -> str:
    """The kernel the loaded model runs this weight's layer on (dense unless planned)."""
    layer_name = weight_name[: -len("weight")].removesuffix(".")
    return (plan.get(KERNELS) or {}).get(layer_name, "dense")


def storage_plan(model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """The recipe's policy and, only if some layer is stored ``fastest``, the kernels
    (planning times crossovers, so a ``smallest`` artifact never waits for a timer)."""
    policy = policy_of(recipe.target)
    layers = compressible_layers(model).values()
    fastest = any(layer_choice(m, {POLICY: policy}) == FASTEST for m in layers)
    return {POLICY: policy, KERNELS: runtime_kernels(model, recipe) if fastest else None}


def runtime_kernels(model: nn.Module, recipe: Recipe) -> dict[str, str]:
    """Per layer, the kernel this model will run once saved and loaded for ``recipe.target``.

    It asks the same function the loader uses (:func:`planned_kernels`), on a copy moved
    onto the runtime's kernels as loading moves it (8-bit layers onto int8, which leaves
    them out of the CSR plan), so the stored format and the kernel agree.
    """
    return planned_kernels(prepare_runtime(copy.deepcopy(model), recipe), recipe.target)


def encode_matrix(
    name: str,
    matrix: torch.Tensor,
    shape: list[int],
    *,
    value_bits: int | None,
    choice: str = SMALLEST,
    kernel: str = "dense",
) -> Encoded:
    """This weight in the format ``choice`` resolves to: the smallest of every format,
    the layout ``kernel`` reads (``fastest``), or a format a storage stage pinned, if
    that format can hold it."""
    matrix2d = matrix.reshape(shape[0], -1)
    if choice in FORMATS and not feasible_formats(matrix2d, [choice], (2, 4)):
        choice = SMALLEST
    fmt, encoded = choose_format(matrix2d, choice, kernel=kernel, value_bits=value_bits)
    tensors = {
        f"{name}::{key}": torch.from_numpy(np.ascontiguousarray(array))
        for key, array in encoded.arrays.items()
    }
    return Encoded(tensors, {"enc": "sparse", "format": fmt, "meta": encoded.meta, "shape": shape})


def decode_matrix(
    name: str, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The stored values of a sparse-encoded weight, at the weight's shape."""
    prefix = f"{name}::"
    arrays = {k[len(prefix) :]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
    return decode_tensor((arrays, entry["meta"])).reshape(entry["shape"])


def check_float_values(
    name: str, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    dtype = meta.get("dtype")
    if dtype not in FLOAT_STORAGE or meta.get("value_bits") is not None:
        raise AutoslimError(
            f"{name}: float weights are stored as {', '.join(FLOAT_STORAGE)}, found {dtype!r}"
        )
    values = tensors.get(f"{name}::values")
    if values is None or values.dtype != FLOAT_STORAGE[dtype] or values.numel() != meta["stored"]:
        raise AutoslimError(f"{name}: stored values do not match {meta['stored']} {dtype} slots")
    if values.is_floating_point() and not bool(torch.isfinite(values).all()):
        raise AutoslimError(f"{name}: holds NaN or infinity")


@register_codec
class FloatWeightCodec(WeightCodec):
    """fp32, fp16 or bf16 values in the layer's chosen format; an fp32 weight that stays
    dense is written as the plain tensor (no layout entry)."""

    name = "float"
    priority = -100  # takes every weight, so it is asked last

    def plan(self, model: nn.Module, recipe: Recipe) -> dict[str, Any]:
        return storage_plan(model, recipe)

    def encode(self, name: str, module: nn.Module, plan: dict[str, Any]) -> Encoded:
        width = float_width_of(module) or "fp32"
        stored = module.weight.detach().to(STORED_FLOATS[width]).contiguous()
        enc = encode_matrix(
            name,
            stored,
            list(module.weight.shape),
            value_bits=None,
            choice=layer_choice(module, plan),
            kernel=layer_kernel(name, plan),
        )
        if width == "fp32" and enc.layout["format"] == "dense":
            return Encoded({name: module.weight.detach().contiguous()}, None)
        return enc

    def decodes(self, entry: Mapping[str, Any]) -> bool:
        return entry.get("enc") == "sparse" and "grid" not in entry

    def check(
        self,
        name: str,
        entry: Mapping[str, Any],
        shape: tuple[int, ...],
        tensors: Mapping[str, torch.Tensor],
    ) -> None:
        meta = check_sparse_matrix(name, entry.get("meta"), shape, tensors)
        check_float_values(name, meta, tensors)

    def decode(
        self,
        name: str,
        entry: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        return decode_matrix(name, entry, tensors).float()
