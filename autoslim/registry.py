"""Where techniques plug in: stage configs, search-space components, stage handlers and
weight codecs, each with its registry.

This module imports nothing else from autoslim, so every other module can import it
without forming a cycle. A technique module defines its classes on these bases and is
registered by being imported; :func:`load_techniques` imports the built-in list
(:mod:`autoslim.techniques`) and every module another package declares in the
``autoslim.techniques`` entry-point group, once, the first time a registry is read.

The contract a technique must keep (round trips, replay, save and load) is tested for
every registered kind in ``tests/techniques/test_contract.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:  # annotations only: these modules import this one
    import optuna
    import torch
    from torch import nn

__all__ = [
    "ComponentSpec",
    "Encoded",
    "RegistryError",
    "RuntimeForms",
    "StageConfig",
    "StageHandler",
    "StrictModel",
    "WeightCodec",
    "codec_for",
    "component_types",
    "handler_for",
    "load_techniques",
    "parse_stage",
    "register_codec",
    "register_handler",
    "stage_kinds",
    "weight_codecs",
]

BUILTIN_TECHNIQUES = "autoslim.techniques"
ENTRY_POINT_GROUP = "autoslim.techniques"


class RegistryError(LookupError):
    """A name no registered technique answers to (callers turn it into one line)."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- recipe stages -------------------------------------------------------------------


class StageConfig(StrictModel):
    """One stage of a recipe. Subclasses set ``kind`` to a unique ``Literal`` string."""

    kind: str

    kinds: ClassVar[dict[str, type[StageConfig]]] = {}
    # False for a stage that only trains: it changes weight values, never the structure,
    # the storage or the kernels, so loading an artifact needs nothing from it and the
    # artifact's recipe leaves it out.
    shipped: ClassVar[bool] = True
    # Fields that only say how a shipped stage's weights were trained (epochs, learning
    # rates, schedules, calibration). Loading never reads them, so the artifact's recipe
    # resets them (:meth:`without_training`): one architecture is then one download size,
    # whatever the search tried for its fine-tune.
    training_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Registration happens once pydantic has built the field, so the default is readable.
        super().__pydantic_init_subclass__(**kwargs)
        kind = cls.model_fields["kind"].default
        if isinstance(kind, str):
            StageConfig.kinds[kind] = cls

    def milder(self, fraction: float) -> StageConfig | None:
        """This stage compressing ``fraction`` as much, for progressive distillation's
        intermediate student (teacher → intermediate → final); None leaves the stage out
        of the intermediate. A stage that only trains stays as it is. A shipped stage that
        does not say how to be milder (quantization, storage) is left out, so the
        intermediate is a float model: it only ever teaches."""
        return None if self.shipped else self

    def without_training(self) -> StageConfig:
        """This stage with its ``training_fields`` at their defaults (valid together,
        since every default is)."""
        kept = {k: v for k, v in self.model_dump().items() if k not in self.training_fields}
        return type(self).model_validate(kept)


def stage_kinds() -> dict[str, type[StageConfig]]:
    """Every registered stage kind, techniques loaded."""
    load_techniques()
    return dict(StageConfig.kinds)


def parse_stage(data: Any) -> StageConfig:
    """Build the registered stage config named by ``data['kind']``."""
    if isinstance(data, StageConfig):
        return data
    if not isinstance(data, Mapping) or "kind" not in data:
        raise ValueError("each stage must be a mapping with a 'kind' key")
    kinds = stage_kinds()
    kind = data["kind"]
    if kind not in kinds:
        raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(sorted(kinds))})")
    return kinds[kind].model_validate(dict(data))


# --- search-space components ---------------------------------------------------------


@dataclass(frozen=True)
class RuntimeForms:
    """What one runtime executes on its own kernels, so techniques can tell a form that
    runs faster from one that only stores smaller.

    ``weight_bits``: integer weight widths with integer kernels; ``floats``: float widths
    computed in natively (not decoded to fp32 first); ``embedding_bits``: integer widths
    of embedding tables read without decoding the whole table; ``sparse``: unstructured sparsity
    has sparse kernels; ``per_layer``: layers may differ in width. ``storage_ships``: the
    artifact's own bytes are what ships (eager torch), so a storage-only form still buys
    size; where the runtime ships its own file, such a form buys nothing.
    """

    runtime: str
    weight_bits: frozenset[int] = frozenset()
    floats: frozenset[str] = frozenset({"fp32"})
    sparse: bool = False
    per_layer: bool = True
    storage_ships: bool = True
    embedding_bits: frozenset[int] = frozenset()

    def runs_width(self, width: int | str) -> bool:
        """Whether a weight width runs natively (fp32 always does)."""
        return width in self.floats or width == "fp32" or width in self.weight_bits

    def runs_embedding(self, width: int | str) -> bool:
        """Whether an embedding table of this width is gathered from directly."""
        return width in self.floats or width == "fp32" or width in self.embedding_bits


class ComponentSpec(StrictModel):
    """Base of every search-space component: ``type`` picks the class, ``name``
    namespaces its parameters.

    ``suggest`` only calls ``trial.suggest_*`` and returns a stage config (or None to
    skip its stage), so ``optuna.trial.FixedTrial(params)`` replays a trial exactly.
    ``optional`` lets the search switch the whole stage off, so "no pruning" competes with
    every pruning setting instead of being unreachable.
    """

    type: str
    name: str = ""
    optional: bool = True

    registry: ClassVar[dict[str, type[ComponentSpec]]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        type_name = cls.model_fields["type"].default
        if isinstance(type_name, str):
            ComponentSpec.registry[type_name] = cls

    @model_validator(mode="after")
    def _default_name(self) -> ComponentSpec:
        if not self.name:
            object.__setattr__(self, "name", self.type.split(".")[0])
        return self

    def enabled(self, trial: optuna.Trial) -> bool:
        return not self.optional or trial.suggest_categorical(f"{self.name}.enabled", [True, False])

    def suggest(self, trial: optuna.Trial, info: Any) -> StageConfig | None:
        raise NotImplementedError

    def for_runtime(self, forms: RuntimeForms) -> tuple[ComponentSpec | None, list[str]]:
        """This component narrowed to what ``forms`` runs or ships smaller (None: nothing
        left to search), with one line per choice dropped. By default it is kept whole."""
        return self, []

    def model_notes(self, model: nn.Module) -> list[str]:
        """One line per searched dimension that does nothing on ``model`` (a part of the
        model this technique cannot act on), shown before the search starts."""
        return []


def component_types() -> dict[str, type[ComponentSpec]]:
    """Every registered component type, techniques loaded."""
    load_techniques()
    return dict(ComponentSpec.registry)


# --- stage handlers ------------------------------------------------------------------

C = TypeVar("C", bound=StageConfig)


class StageHandler(Generic[C]):
    """Applies one stage kind to a model. Only :meth:`apply` is required; every other
    hook defaults to doing nothing, so a handler states only what its technique needs."""

    def apply(self, model: nn.Module, config: C, ctx: Any) -> nn.Module:
        """Run the technique (with its fine-tune, through ``ctx.fine_tune``)."""
        raise NotImplementedError

    def rebuild(self, model: nn.Module, config: C) -> nn.Module:
        """Reshape a freshly built model so the artifact's stored weights fit it."""
        return model

    def runtime(self, model: nn.Module, config: C, target: Any) -> nn.Module:
        """After the weights are loaded: move layers onto the kernels ``target`` has."""
        return model

    def storage_only(self, config: C, forms: RuntimeForms) -> list[str]:
        """The parts of ``config`` that ``forms`` stores but does not run faster, e.g.
        "4-bit weights" on a runtime with only 8-bit kernels (shown beside a front point)."""
        return []

    def shortest_form(self, config: C, same_structure: Callable[[StageConfig], bool]) -> C:
        """The config with whatever loading does not need dropped, kept only where
        ``same_structure`` says the model still rebuilds at the same shapes."""
        return config


_HANDLERS: dict[type[StageConfig], StageHandler[Any]] = {}


def register_handler(config_type: type[C]) -> Callable[[type], type]:
    """Class decorator: instances of the class handle stages of ``config_type``."""

    def decorate(handler_cls: type) -> type:
        if not issubclass(handler_cls, StageHandler):
            raise TypeError(f"{handler_cls.__name__} must subclass StageHandler")
        _HANDLERS[config_type] = handler_cls()
        return handler_cls

    return decorate


def handler_for(stage: StageConfig) -> StageHandler[Any]:
    load_techniques()
    try:
        return _HANDLERS[type(stage)]
    except KeyError:
        raise RegistryError(f"no handler registered for stage kind {stage.kind!r}") from None


# --- weight codecs -------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """One weight's stored form: tensors to write plus the layout entry that decodes it.
    ``layout`` None means the weight is stored as the plain tensor under its own name."""

    tensors: dict[str, torch.Tensor]
    layout: dict | None


class WeightCodec:
    """Turns one layer's weight into stored tensors plus a JSON layout entry, and back.

    The artifact writer asks each codec in :attr:`priority` order and takes the first
    encoding that is not None; on loading, the codec whose :meth:`decodes` accepts a
    layout entry checks it (:meth:`check`, before anything is allocated) and decodes
    it. A layout entry no codec accepts is refused: the codecs are the allowlist.
    ``plan`` is one object per save, for what a codec works out once per model (the
    kernels a storage policy stores for); its contents are the codec's business.
    """

    name: ClassVar[str] = ""
    # Codecs are asked in descending priority: one that takes every weight (plain floats)
    # goes last with a negative priority, so a codec for marked layers sees them first.
    priority: ClassVar[int] = 0

    def plan(self, model: nn.Module, recipe: Any) -> dict[str, Any]:
        """What this codec works out once per saved model; merged into one ``plan``."""
        return {}

    def encode(self, name: str, module: nn.Module, plan: dict[str, Any]) -> Encoded | None:
        raise NotImplementedError

    def decodes(self, entry: Mapping[str, Any]) -> bool:
        raise NotImplementedError

    def check(
        self,
        name: str,
        entry: Mapping[str, Any],
        shape: tuple[int, ...],
        tensors: Mapping[str, torch.Tensor],
    ) -> None:
        """Raise ValueError naming the problem if ``entry`` and its tensors do not fit
        ``shape``; bound every count that sizes an allocation."""
        raise NotImplementedError

    def decode(
        self,
        name: str,
        entry: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
    ) -> torch.Tensor:
        raise NotImplementedError


_CODECS: list[WeightCodec] = []


def register_codec(codec_cls: type[WeightCodec]) -> type[WeightCodec]:
    """Class decorator: register the codec (one per name; a later one replaces it)."""
    if not codec_cls.name:
        raise TypeError(f"{codec_cls.__name__} needs a name")
    kept = [c for c in _CODECS if c.name != codec_cls.name] + [codec_cls()]
    _CODECS[:] = sorted(kept, key=lambda c: -c.priority)
    return codec_cls


def weight_codecs() -> list[WeightCodec]:
    load_techniques()
    return list(_CODECS)


def codec_for(entry: Mapping[str, Any]) -> WeightCodec:
    for codec in weight_codecs():
        if codec.decodes(entry):
            return codec
    raise RegistryError(f"no codec reads the layout entry {dict(entry)!r:.120}")


# --- loading techniques --------------------------------------------------------------

_loaded = False


def load_techniques() -> None:
    """Import the built-in technique list and every declared plug-in, once.

    Reading a registry calls this, so the core modules never import a technique (which
    would tie them into one import cycle) and a plug-in needs no edit here."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first, so a technique that reads a registry while importing does not recurse
    try:
        for module in [BUILTIN_TECHNIQUES, *_declared_plugins()]:
            importlib.import_module(module)
    except BaseException:
        _loaded = False
        raise


def _declared_plugins() -> Iterable[str]:
    found = metadata.entry_points(group=ENTRY_POINT_GROUP)
    return sorted({ep.value.split(":")[0] for ep in found} - {BUILTIN_TECHNIQUES})
