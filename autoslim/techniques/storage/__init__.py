"""Sparse storage format as a recipe stage and a search dimension.

By default every weight is stored as the recipe's ``target.storage_policy`` says:
its smallest encoding, measured by encoding it, or ``fastest``, the layout of the kernel
the runtime will run for it (:mod:`autoslim.sparse.policy`). This stage overrides
that per layer (exact name or ``re:`` regex) or for all layers. A value is ``auto``
(follow the policy), ``smallest``, ``fastest`` or a fixed format. A search can
then trade bytes for a layout that a deployment runtime reads directly (e.g. CSR). A
pinned format that cannot hold a weight (N:M on a non-N:M pattern) falls back to the
smallest one, and the layout records what was used.
"""

from __future__ import annotations

from typing import Literal

import optuna
from pydantic import Field
from torch import nn

from autoslim.pipeline import ApplyContext
from autoslim.recipe import resolve_layer_map
from autoslim.registry import (
    ComponentSpec,
    RuntimeForms,
    StageConfig,
    StageHandler,
    register_handler,
)
from autoslim.space import ModelInfo, compressible_layers
from autoslim.techniques.storage.codec import FORMAT_ATTR, storage_format

__all__ = ["Format", "StorageConfig", "StorageHandler", "StorageSpace", "storage_format"]

Format = Literal[
    "auto",
    "smallest",
    "fastest",
    "dense",
    "bitmap",
    "csr",
    "csc",
    "coo",
    "bsr",
    "ellpack",
    "dia",
    "nm",
]


class StorageConfig(StageConfig):
    kind: Literal["storage"] = "storage"
    default: Format = "auto"
    layers: dict[str, Format] = Field(default_factory=dict)


def _mark(model: nn.Module, config: StorageConfig) -> nn.Module:
    layers = compressible_layers(model)
    resolved = resolve_layer_map(config.layers, list(layers))
    for name, module in layers.items():
        setattr(module, FORMAT_ATTR, resolved.get(name, config.default))
    return model


@register_handler(StorageConfig)
class StorageHandler(StageHandler[StorageConfig]):
    """Only marks layers: the artifact writer reads the mark (no training, no shape change)."""

    def apply(self, model: nn.Module, config: StorageConfig, ctx: ApplyContext) -> nn.Module:
        return _mark(model, config)

    def storage_only(self, config: StorageConfig, forms: RuntimeForms) -> list[str]:
        return [] if forms.storage_ships else [f"storage format {config.default}"]

    # No rebuild: the layout names each weight's format, so decoding needs no mark.


class StorageSpace(ComponentSpec):
    """Search dimension: one storage format for all layers, from ``formats``."""

    type: Literal["storage.format"] = "storage.format"
    name: str = "storage"
    formats: list[Format] = Field(default=["auto", "csr", "bitmap"], min_length=1)

    def for_runtime(self, forms: RuntimeForms) -> tuple[ComponentSpec | None, list[str]]:
        if forms.storage_ships:
            return self, []
        return None, [f"{self.name}: dropped; {forms.runtime} ships its own file format"]

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> StorageConfig | None:
        if not self.enabled(trial):
            return None
        return StorageConfig(default=trial.suggest_categorical(f"{self.name}.format", self.formats))
