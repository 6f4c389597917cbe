"""Unstructured magnitude pruning, layer-wise or global, with a masked fine-tune.

Masking and exact top-k selection come from ``torch.nn.utils.prune`` (it keeps the mask
applied during fine-tuning through a forward pre-hook); this module decides *how much*
to prune where, and makes the zeros permanent afterwards. Zeros only become bytes and
time through the artifact's sparse encoding, never by assumption.
"""

from __future__ import annotations

from typing import Literal

import optuna
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoslim.pipeline import ApplyContext, register_handler
from autoslim.recipe import StageConfig, resolve_layer_map
from autoslim.space import ComponentSpec, FloatRange, IntRange, ModelInfo, compressible_layers

Sparsity = float


class PruneConfig(StageConfig):
    """Zero the smallest-magnitude weights: ``global`` ranks all targeted layers together,
    ``layer`` prunes each layer to its own sparsity (``layers`` overrides ``sparsity``)."""

    kind: Literal["prune"] = "prune"
    scope: Literal["global", "layer"] = "global"
    sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    layers: dict[str, float] = Field(default_factory=dict)
    fine_tune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0.0)

    @model_validator(mode="after")
    def _check_layers(self) -> PruneConfig:
        if self.scope == "global" and self.layers:
            raise ValueError("per-layer 'layers' needs scope: layer (global ranks all layers together)")
        for name, value in self.layers.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"sparsity for {name!r} must be in [0, 1), got {value}")
        return self


def prune_count(numel: int, sparsity: float) -> int:
    """The exact number of weights a sparsity removes (round half to even, like Python)."""
    return round(numel * sparsity)


def apply_masks(model: nn.Module, config: PruneConfig) -> list[nn.Module]:
    """Attach ``torch.nn.utils.prune`` masks per the config; returns the masked modules."""
    layers = compressible_layers(model)
    if config.scope == "global":
        params = [(module, "weight") for module in layers.values()]
        total = sum(module.weight.numel() for module in layers.values())
        amount = prune_count(total, config.sparsity)
        torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=amount)
        return list(layers.values())
    per_layer = resolve_layer_map(config.layers, layers)
    masked = []
    for name, module in layers.items():
        sparsity = per_layer.get(name, config.sparsity)
        torch_prune.l1_unstructured(module, "weight", amount=prune_count(module.weight.numel(), sparsity))
        masked.append(module)
    return masked


@register_handler(PruneConfig)
class MagnitudePruneHandler:
    def apply(self, model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> nn.Module:
        masked = apply_masks(model, config)
        ctx.fine_tune(model, epochs=config.fine_tune_epochs, lr=config.lr)
        for module in masked:
            # Folds weight_orig * weight_mask into a plain weight with exact zeros.
            torch_prune.remove(module, "weight")
        return model

    def rebuild(self, model: nn.Module, config: PruneConfig) -> nn.Module:
        return model  # unstructured zeros keep every shape


class MagnitudePruneSpace(ComponentSpec):
    """Search dimensions: scope, sparsity (global or per layer), fine-tune epochs and lr."""

    type: Literal["prune.magnitude"] = "prune.magnitude"
    scopes: list[Literal["global", "layer"]] = Field(default=["global", "layer"], min_length=1)
    sparsity: FloatRange = FloatRange(low=0.0, high=0.95)
    layers: str = ".*"
    fine_tune_epochs: IntRange = IntRange(low=0, high=3)
    lr: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> PruneConfig | None:
        if not self.enabled(trial):
            return None
        n = self.name
        scope = self.scopes[0] if len(self.scopes) == 1 else trial.suggest_categorical(f"{n}.scope", self.scopes)
        if scope == "global":
            kwargs = {"sparsity": self.sparsity.suggest(trial, f"{n}.sparsity")}
        else:
            targets = info.matching(self.layers)
            kwargs = {"layers": {name: self.sparsity.suggest(trial, f"{n}.sparsity.{name}") for name in targets}}
        epochs = self.fine_tune_epochs.suggest(trial, f"{n}.fine_tune_epochs")
        lr = self.lr.suggest(trial, f"{n}.lr") if epochs > 0 else PruneConfig().lr
        return PruneConfig(scope=scope, fine_tune_epochs=epochs, lr=lr, **kwargs)
