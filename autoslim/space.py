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
import torch
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
# Recurrent layers: their weight matrices (weight_ih_l*, weight_hh_l*) are quantized per
# layer, one width for all of a layer's matrices, but never pruned (no technique reshapes
# a recurrence), so they are not compressible layers.
RECURRENT_TYPES: tuple[type[nn.Module], ...] = (nn.GRU, nn.LSTM)


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers with a weight the techniques act on, by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, COMPRESSIBLE_TYPES)}


def recurrent_layers(model: nn.Module) -> dict[str, nn.RNNBase]:
    """GRU and LSTM layers, by qualified name, in model order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RECURRENT_TYPES)}


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers a per-layer width plan covers: compressible layers, then recurrent ones."""
    return {**compressible_layers(model), **recurrent_layers(model)}


def recurrent_weights(layer: nn.RNNBase) -> list[str]:
    """A recurrent layer's weight matrices (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...);
    its biases (and an LSTM's projections, ``weight_hr``) stay fp32."""
    return [
        name
        for name in layer._flat_weights_names
        if name.startswith(("weight_ih_l", "weight_hh_l"))
    ]


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
    """Every layer whose ``weight`` goes through a weight codec: compressible layers, then
    embedding tables. Recurrent layers hold several weights: see :func:`stored_weights`."""
    return {**compressible_layers(model), **embedding_tables(model)}


class WeightSlot:
    """One weight of a layer that holds several (a GRU's ``weight_hh_l0``), seen as a layer
    whose ``weight`` it is, so a weight codec reads it as it reads a Linear layer.

    The layer keeps the marks of each such weight under the weight's name: buffers
    ``<weight>_scale`` where a Linear layer has ``weight_scale``, and attributes
    ``<mark>__<weight>`` where it has ``<mark>``; reading one of them through the slot
    reads the layer's.
    """

    def __init__(self, layer: nn.Module, attr: str) -> None:
        self.layer, self.attr = layer, attr

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.layer, self.attr)

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__") or key in ("layer", "attr"):
            raise AttributeError(key)
        if key.startswith("weight_"):  # a buffer of this weight: weight_scale, ...
            return getattr(self.layer, self.attr + key[len("weight") :])
        return getattr(self.layer, f"{key}__{self.attr}")

    def __repr__(self) -> str:
        return f"WeightSlot({type(self.layer).__name__}.{self.attr})"


def stored_weights(model: nn.Module) -> dict[str, nn.Module | WeightSlot]:
    """Every weight that goes through a weight codec, by its ``state_dict`` key, each
    tensor once: compressible layers' ``weight``, recurrent layers' weight matrices (as
    :class:`WeightSlot`), then embedding tables. A weight tied to one listed before it
    (``head.weight is embed.weight``) is left out: the artifact stores it once, under
    the key listed here (:func:`autoslim.artifact.encode_state`)."""
    weights: dict[str, nn.Module | WeightSlot] = {}
    seen: set[int] = set()

    def add(key: str, holder: nn.Module | WeightSlot) -> None:
        if id(holder.weight) not in seen:
            seen.add(id(holder.weight))
            weights[key] = holder

    for name, layer in compressible_layers(model).items():
        add(_key(name, "weight"), layer)
    for name, layer in recurrent_layers(model).items():
        for attr in recurrent_weights(layer):
            add(_key(name, attr), WeightSlot(layer, attr))
    for name, table in embedding_tables(model).items():
        add(_key(name, "weight"), table)
    return weights


def _key(layer_name: str, attr: str) -> str:
    return f"{layer_name}.{attr}" if layer_name else attr


@dataclass(frozen=True)
class LayerInfo:
    name: str
    type: str
    params: int
    shape: tuple[int, ...]


def shared_weight_layers(model: nn.Module) -> list[str]:
    """Compressible layers whose weight parameter another module also holds."""
    holders: dict[int, int] = {}
    for module in model.modules():
        for param in module._parameters.values():
            if param is not None:
                holders[id(param)] = holders.get(id(param), 0) + 1
    return [
        name
        for name, m in compressible_layers(model).items()
        if holders.get(id(m._parameters.get("weight", m._parameters.get("weight_orig"))), 0) > 1
    ]


@dataclass(frozen=True)
class ModelInfo:
    """What a component may know about the model without running it.

    ``layers`` are the compressible layers (every technique's); ``recurrent`` the GRU and
    LSTM layers, which only per-layer widths cover (:attr:`width_names`)."""

    layers: tuple[LayerInfo, ...]
    total_params: int
    module_types: frozenset[str] = frozenset()  # class names of every module in the model
    recurrent: tuple[LayerInfo, ...] = ()
    # Compressible layers whose weight another module shares (a head tied to its
    # embedding): per-layer sparsity is not offered for them.
    tied: frozenset[str] = frozenset()

    @classmethod
    def from_model(cls, model: nn.Module) -> ModelInfo:
        layers = tuple(
            LayerInfo(name, type(m).__name__, m.weight.numel(), tuple(m.weight.shape))
            for name, m in compressible_layers(model).items()
        )
        recurrent = tuple(
            LayerInfo(
                name,
                type(m).__name__,
                sum(getattr(m, w).numel() for w in recurrent_weights(m)),
                tuple(getattr(m, recurrent_weights(m)[0]).shape),
            )
            for name, m in recurrent_layers(model).items()
        )
        return cls(
            layers=layers,
            total_params=sum(p.numel() for p in model.parameters()),
            module_types=frozenset(type(m).__name__ for m in model.modules()),
            recurrent=recurrent,
            tied=frozenset(shared_weight_layers(model)),
        )

    def has_module(self, fragment: str) -> bool:
        """Whether some module's class name contains ``fragment`` (e.g. "BatchNorm")."""
        return any(fragment in name for name in self.module_types)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def width_names(self) -> list[str]:
        """Layers a per-layer bit-width plan covers: compressible, then recurrent."""
        return [*self.names, *(layer.name for layer in self.recurrent)]

    def matching(self, pattern: str, *, recurrent: bool = False) -> list[str]:
        """Layer names fully matching a regex (with ``recurrent``, among :attr:`width_names`);
        matching nothing is a configuration error."""
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise AutoslimError(f"bad layer regex {pattern!r}: {exc}") from None
        known = self.width_names if recurrent else self.names
        names = [n for n in known if regex.fullmatch(n)]
        if not names:
            raise AutoslimError(
                f"layer regex {pattern!r} matches no layer (known: {', '.join(known)})"
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
        """Hash of the normalised spec: a resumed study must search the same space.

        A field a component added later, named in its ``fingerprint_new_fields``, is left
        out while it holds its default (which searches what the space searched before it
        existed), so adding it does not stop every existing study from resuming."""
        spec = []
        for component in self.components:
            data = component.model_dump(mode="json")
            defaults = type(component).model_fields
            for field in getattr(component, "fingerprint_new_fields", ()):
                if field in data and data[field] == defaults[field].get_default(
                    call_default_factory=True
                ):
                    del data[field]
            spec.append(data)
        text = json.dumps(spec, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
