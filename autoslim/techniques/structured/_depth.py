"""Layer dropping: remove whole blocks of a deep stack (a transformer's layers), then
fine-tune, which for a task with a teacher (MiniLM's fp32 embeddings) is distillation.

Which blocks go is a rule on the block count alone: the kept ones are evenly spaced and
always include the first and the last, the initialisation DistilBERT used (every other
layer of its teacher). A rule, not a score, so a recipe rebuilds the same shapes from
the block count without storing indices, and a fresh model loads the artifact.

The stack is the longest ``nn.ModuleList`` whose children are all of one class (BERT's
``encoder.layer``, ``nn.TransformerEncoder.layers``, a timm ViT's ``blocks`` held as a
list). A model without one (a CNN) keeps every layer: the stage is a no-op there, the
way ``heads`` is on a model without attention.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import optuna
from pydantic import Field
from torch import nn

from autoslim.pipeline import ApplyContext
from autoslim.registry import ComponentSpec, StageConfig, StageHandler, register_handler
from autoslim.space import FloatRange, IntRange, ModelInfo

MIN_BLOCKS = 2  # a stack shorter than this has nothing to drop


class DropLayersConfig(StageConfig):
    """Drop ``fraction`` of the blocks of the model's deepest stack (rounded down, at
    least one block kept), then fine-tune."""

    kind: Literal["drop_layers"] = "drop_layers"
    fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    fine_tune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-4, gt=0.0)

    training_fields: ClassVar[frozenset[str]] = frozenset({"fine_tune_epochs", "lr"})


def block_stack(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The longest ModuleList of same-class children (first found on a tie), by name."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < MIN_BLOCKS:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        if best is None or len(module) > len(best[1]):
            best = (name, module)
    return best


def kept_indices(count: int, fraction: float) -> list[int]:
    """Evenly spaced block indices to keep, first and last included."""
    keep = max(1, count - int(count * fraction))
    if keep >= count:
        return list(range(count))
    if keep == 1:
        return [0]
    step = (count - 1) / (keep - 1)
    return sorted({round(i * step) for i in range(keep)})


def drop_blocks(model: nn.Module, fraction: float) -> nn.Module:
    """``model`` with its deepest stack cut to the kept blocks (in place)."""
    found = block_stack(model)
    if found is None or fraction == 0.0:
        return model
    name, stack = found
    kept = nn.ModuleList(stack[i] for i in kept_indices(len(stack), fraction))
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, kept)
    _sync_layer_count(model, len(kept))
    return model


def _sync_layer_count(model: nn.Module, count: int) -> None:
    """Hugging Face models read ``config.num_hidden_layers`` (head masks, caches): keep it
    true to the stack, on the model and every sub-model sharing the config."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "num_hidden_layers"):
            config.num_hidden_layers = count


@register_handler(DropLayersConfig)
class DropLayersHandler(StageHandler[DropLayersConfig]):
    def apply(self, model: nn.Module, config: DropLayersConfig, ctx: ApplyContext) -> nn.Module:
        before = block_stack(model)
        drop_blocks(model, config.fraction)
        if before is not None:
            ctx.records["drop_layers.kept"] = kept_indices(len(before[1]), config.fraction)
        ctx.fine_tune(model, epochs=config.fine_tune_epochs, lr=config.lr)
        return model

    def rebuild(self, model: nn.Module, config: DropLayersConfig) -> nn.Module:
        return drop_blocks(model, config.fraction)


class DropLayersSpace(ComponentSpec):
    """Search dimensions: the fraction of blocks dropped, fine-tune epochs and lr."""

    type: Literal["prune.depth"] = "prune.depth"
    name: str = "depth"
    fraction: FloatRange = FloatRange(low=0.0, high=0.5)
    fine_tune_epochs: IntRange = IntRange(low=0, high=2)
    lr: FloatRange = FloatRange(low=1e-5, high=1e-4, log=True)

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> DropLayersConfig | None:
        if not self.enabled(trial):
            return None
        n = self.name
        return DropLayersConfig(
            fraction=self.fraction.suggest(trial, f"{n}.fraction"),
            fine_tune_epochs=self.fine_tune_epochs.suggest(trial, f"{n}.fine_tune_epochs"),
            lr=self.lr.suggest(trial, f"{n}.lr"),
        )
