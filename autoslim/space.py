"""Search spaces: ordered components, each declaring its parameters define-by-run.

A component is a pydantic model (its YAML options) with a ``suggest`` method that only
calls ``trial.suggest_*`` and returns a stage config (or ``None`` to skip its stage). No
compute happens in ``suggest``, so ``optuna.trial.FixedTrial(params)`` replays a trial's
choices exactly, under Optuna locally or Ray Tune's ``OptunaSearch`` alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from pydantic import Field, model_validator
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.recipe import read_yaml, validate_model
from autoslim.registry import (
    ComponentSpec,
    RuntimeForms,
    StageConfig,
    StrictModel,
    component_types,
)

# Layers that carry a weight matrix the techniques can prune or quantize.
COMPRESSIBLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers with a weight the techniques act on, by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}


def embedding_tables(model: nn.Module) -> dict[str, nn.Embedding]:
    """Lookup tables (``nn.Embedding``), by qualified name: quantized, never pruned, and
    not tied to a compressible layer (a tied table takes that layer's width)."""
    tied = {id(m.weight) for m in compressible_layers(model).values()}
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) and id(m.weight) not in tied
    }


def stored_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every layer whose weight goes through a weight codec: compressible layers, then
    embedding tables."""
    return {**compressible_layers(model), **embedding_tables(model)}


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    params: int
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelInfo:
    """What a component may know about the model without running it."""

    layers: tuple[LayerInfo, ...]
    total_params: int
    module_types: frozenset[str] = frozenset()  # class names of every module in the model

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelInfo:
        layers = tuple(
            LayerInfo(name, type(m).__name__, m.weight.numel(), tuple(m.weight.shape))
            for name, m in compressible_layers(model).items()
        )
        return cls(
            layers=layers,
            total_params=sum(p.numel() for p in model.parameters()),
            module_types=frozenset(type(m).__name__ for m in model.modules()),
        )

    def has_module(self, fragment: str) -> bool:
        """Whether some module's class name contains ``fragment`` (e.g. "BatchNorm")."""
        return any(fragment in name for name in self.module_types)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def matching(self, pattern: str) -> list[str]:
        """Layer names fully matching a regex; matching nothing is a configuration error."""
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise AutoslimError(f"bad layer regex {pattern!r}: {exc}") from None
        names = [n for n in self.names if regex.fullmatch(n)]
        if not names:
            raise AutoslimError(
                f"layer regex {pattern!r} matches no layer (known: {', '.join(self.names)})"
            )
        return names


class FloatRange(StrictModel):
    """A float search dimension; ``log`` samples uniformly in log space (learning rates)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> float:
        """The sampled value, to 4 significant digits unless ``step`` sets the grid.

        The value goes into the recipe that every artifact ships, where
        ``lr: 0.00956178662298805`` costs 13 bytes more than ``lr: 0.009562`` for a difference
        no fine-tune can tell, and made two recipes of one architecture differ in length by
        a byte or two (enough to decide a Pareto comparison of 3 kB artifacts). The study
        keeps the sampled value; the recipe, and so the replay, uses the rounded one.
        """
        if self.low == self.high:
            return self.low
        value = trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)
        if self.step is not None:
            return value
        return min(self.high, max(self.low, searched_float(value)))


def searched_float(value: float) -> float:
    """``value`` to the 4 significant digits a searched float has in a recipe (a baseline
    meant to be enqueued into a search must use them too, or the search cannot express it)."""
    return float(f"{value:.4g}")


class IntRange(StrictModel):
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low {self.low} > high {self.high}")
        return self

    def suggest(self, trial: optuna.Trial, name: str) -> int:
        if self.low == self.high:
            return self.low
        return trial.suggest_int(name, self.low, self.high)


def parse_component(data: Any) -> ComponentSpec:
    if not isinstance(data, dict) or "type" not in data:
        raise AutoslimError("each search-space component must be a mapping with a 'type' key")
    type_name = data["type"]
    types = component_types()
    cls = types.get(type_name)
    if cls is None:
        known = ", ".join(sorted(types))
        raise AutoslimError(f"unknown component {type_name!r} (known: {known})")
    return validate_model(cls, data, what=f"component {type_name!r}")


class SpaceFile(StrictModel):
    components: list[dict[str, Any]] = Field(min_length=1)


class SearchSpace:
    """An ordered list of components; the order is the order of stages in each recipe."""

    def __init__(self, components: Sequence[ComponentSpec]) -> None:
        names = [c.name for c in components]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise AutoslimError(
                f"duplicate component names in search space: {', '.join(duplicates)}"
            )
        self.components = list(components)
        # One line per choice a runtime made the space drop (for_runtime).
        self.notes: list[str] = []

    def for_runtime(self, forms: RuntimeForms) -> SearchSpace:
        """The space narrowed to forms that run, or ship smaller, on ``forms``'s runtime;
        ``notes`` says what was dropped and why."""
        kept, notes = [], []
        for component in self.components:
            narrowed, dropped = component.for_runtime(forms)
            notes += dropped
            if narrowed is not None:
                kept.append(narrowed)
        if not kept:
            raise AutoslimError(
                f"nothing in the search space runs or ships smaller on {forms.runtime}: "
                + "; ".join(notes)
            )
        space = SearchSpace(kept)
        space.notes = notes
        return space

    @classmethod
    def from_spec(cls, spec: Sequence[dict[str, Any]]) -> SearchSpace:
        return cls([parse_component(item) for item in spec])

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        data = validate_model(
            SpaceFile, read_yaml(path, what="search space"), what=f"search space {path}"
        )
        return cls.from_spec(data.components)

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> list[StageConfig]:
        stages = []
        for component in self.components:
            stage = component.suggest(trial, info)
            if stage is not None:
                stages.append(stage)
        return stages

    def spec(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in self.components]

    def fingerprint(self) -> str:
        """Hash of the normalised spec: a resumed study must search the same space."""
        text = json.dumps(self.spec(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
