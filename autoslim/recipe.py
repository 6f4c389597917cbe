"""Recipes: the ordered, replayable list of compression stages that defines an artifact.

A recipe is data only. Each stage kind is a pydantic model registered by its ``kind``
string, so technique modules add kinds without this module knowing them; behaviour lives
in the handlers registered in :mod:`autoslim.registry`. Recipes round-trip through YAML
(``yaml.safe_load``; never pickle) and reject unknown keys, so a typo in a hand-edited
recipe is an error instead of a silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from autoslim.errors import AutoslimError
from autoslim.registry import StageConfig, StrictModel, parse_stage

SCHEMA_VERSION = 1
REGEX_PREFIX = "re:"
RuntimeName = Literal["torch", "torch-compile", "onnxruntime", "openvino"]

V = TypeVar("V")


class Training(StrictModel):
    """Where and how fine-tunes run, over the task's own settings (unset: the task's).

    ``threads`` changes a CPU run's bits, so a recipe carries it to replay identically.
    """

    device: str | None = Field(default=None, pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    threads: int | None = Field(default=None, ge=1)
    amp: bool | None = None

    def overrides(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class TaskRef(StrictModel):
    """Where the task comes from: an importable ``package.module:function`` and its kwargs,
    plus the training settings an experiment chose for it."""

    entry: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)
    train: Training = Field(default_factory=Training)

    @model_serializer(mode="wrap")
    def _omit_default_training(self, handler):
        # Recipes written before training settings existed stay byte-identical.
        data = handler(self)
        if not self.train.overrides():
            data.pop("train", None)
        return data


class Target(StrictModel):
    """The hardware and settings that latency, memory and energy are measured under."""

    device: Literal["cpu", "cuda"] = "cpu"
    threads: int = Field(default=2, ge=1)
    batch_size: int = Field(default=64, ge=1)
    warmup: int = Field(default=10, ge=0)
    repeats: int = Field(default=30, ge=3)
    # Run pruned Linear layers on the CSR kernel where the measured crossover says it wins.
    sparse_kernels: bool = True
    # Store sparse weights in their smallest encoding or in the layout of their kernel
    # (autoslim.sparse.policy). Unset: smallest; an experiment settles it per trial.
    storage_policy: Literal["smallest", "fastest"] | None = None
    # Where the compressed model runs, is measured and ships (autoslim.deploy.runtimes).
    # An experiment may list several: the search then picks one per trial.
    runtime: RuntimeName | list[RuntimeName] = "torch"

    @field_validator("runtime")
    @classmethod
    def _one_or_distinct(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, str):
            return value
        if not value or len(set(value)) != len(value):
            raise ValueError("runtime lists must name distinct runtimes, at least one")
        return value[0] if len(value) == 1 else value

    @model_validator(mode="after")
    def _runtime_runs_on_device(self) -> Target:
        cpu_only = {"onnxruntime", "openvino"} & set(self.runtimes)
        if self.device == "cuda" and cpu_only:
            raise ValueError(f"runtime {sorted(cpu_only)[0]} runs on device cpu only")
        return self

    @property
    def runtimes(self) -> list[str]:
        """The runtimes named, as a list."""
        return [self.runtime] if isinstance(self.runtime, str) else list(self.runtime)

    @model_serializer(mode="wrap")
    def _omit_unset_policy(self, handler):
        # Unset stays out of every dump, so targets and fingerprints from before are unchanged.
        data = handler(self)
        if data.get("storage_policy") is None:
            data.pop("storage_policy", None)
        if data.get("runtime") == "torch":
            data.pop("runtime", None)
        return data


class Provenance(StrictModel):
    """Where a recipe came from, so a shipped model can be traced to its search."""

    experiment: str
    trial: int | None = None
    values: dict[str, int | float] = Field(default_factory=dict)
    seed: int
    versions: dict[str, str] = Field(default_factory=dict)
    # sha256 prefix of the fp32 baseline weights the search started from
    baseline_sha: str | None = None


class Recipe(StrictModel):
    """An ordered list of stages applied to the task's trained fp32 model."""

    schema_version: int = SCHEMA_VERSION
    task: TaskRef
    seed: int = 0
    target: Target = Field(default_factory=Target)
    stages: list[SerializeAsAny[StageConfig]] = Field(default_factory=list)
    provenance: Provenance | None = None

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {value} is not supported (this autoslim reads {SCHEMA_VERSION})"
            )
        return value

    @field_validator("target")
    @classmethod
    def _one_runtime(cls, value: Target) -> Target:
        if not isinstance(value.runtime, str):
            raise ValueError("a recipe runs on one runtime; target.runtime names several")
        return value

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, value: Any) -> list[StageConfig]:
        if not isinstance(value, list):
            raise ValueError("stages must be a list")
        stages = []
        for index, item in enumerate(value):
            try:
                stages.append(parse_stage(item))
            except ValidationError as exc:
                raise ValueError(f"stage {index} ({item.get('kind')}): {one_line(exc)}") from None
        return stages

    def core(self) -> Recipe:
        """The recipe without provenance: what decides the artifact's bytes."""
        return self.model_copy(update={"provenance": None})

    def to_dict(self, *, compact: bool = False) -> dict[str, Any]:
        """Every field, or with ``compact`` only those that differ from their defaults.

        Compact is what an artifact ships: the defaults are implied by
        ``schema_version``, which is always written, as is every ``kind`` (the key that
        says which config a mapping is). Loading it gives back an equal recipe.
        """
        if not compact:
            return self.model_dump(mode="json", exclude_none=True)
        data = self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
        return {"schema_version": self.schema_version, **_with_kinds(self, data)}

    def to_yaml(self, *, compact: bool = False) -> str:
        return yaml.safe_dump(
            self.to_dict(compact=compact), sort_keys=False, default_flow_style=False
        )

    @classmethod
    def from_dict(cls, data: Any) -> Recipe:
        return validate_model(cls, data, what="recipe")

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(read_yaml(path, what="recipe"))

    def save(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), self.to_yaml())


M = TypeVar("M", bound=BaseModel)


def _with_kinds(value: Any, dumped: Any) -> Any:
    """``dumped`` (a dump of ``value`` without defaults) with every ``kind`` put back.

    ``exclude_defaults`` drops ``kind`` because each config's kind is its default, yet
    the kind is what tells a loader which config a mapping is.
    """
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        inner = {key: _with_kinds(getattr(value, key, None), item) for key, item in dumped.items()}
        kind = getattr(value, "kind", None)
        return {"kind": kind, **inner} if isinstance(kind, str) else inner
    if isinstance(value, list | tuple) and isinstance(dumped, list) and len(value) == len(dumped):
        return [_with_kinds(v, d) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, Mapping) and isinstance(dumped, dict):
        return {key: _with_kinds(value.get(key), item) for key, item in dumped.items()}
    return dumped


def one_line(exc: ValidationError) -> str:
    """Pydantic's multi-line report as ``field.path: problem; ...``."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(problems)


def validate_model(model: type[M], data: Any, *, what: str) -> M:
    """Validate ``data``, turning pydantic's report into one line naming each bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise AutoslimError(f"invalid {what}: {one_line(exc)}") from None


# Recipes and experiments are a few kB; per-layer maps of a thousand-layer model stay far
# below this. The cap keeps a hostile file from costing gigabytes before validation.
MAX_YAML_BYTES = 1 << 20


class _NoAliasLoader(yaml.SafeLoader):
    """``safe_load`` without aliases: ``*name`` lets a few bytes stand for an exponential
    tree (the "billion laughs"), which hangs whatever walks it later."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(
                f"YAML aliases are not accepted (line {mark.line + 1}); write the value out"
            )
        return super().compose_node(parent, index)


def read_yaml(path: str | Path, *, what: str) -> Any:
    """Read a YAML file safely: at most ``MAX_YAML_BYTES``, UTF-8, no aliases, no Python
    tags; missing or malformed files are user errors with one line."""
    path = Path(path)
    if not path.is_file():
        raise AutoslimError(f"{what} file not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise AutoslimError(
            f"{what} file {path} is {path.stat().st_size} bytes; the limit is {MAX_YAML_BYTES}"
        )
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise AutoslimError(f"{what} file {path} is not UTF-8 text (byte {exc.start})") from None
    return parse_yaml(text, where=str(path))


def parse_yaml(text: str, *, where: str) -> Any:
    """:func:`read_yaml`'s parsing, for text already in hand."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 — a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise AutoslimError(f"malformed YAML in {where}{line}: {problem}") from None
    except RecursionError:
        raise AutoslimError(f"malformed YAML in {where}: nested too deeply") from None


def write_text_atomic(path: Path, text: str) -> Path:
    """Write via a uniquely named temporary file and rename, so readers never see half a
    file and two writers never share a temporary; nothing is left behind on failure."""
    import os
    import tempfile

    if path.is_dir():
        raise AutoslimError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_layer_map(
    mapping: Mapping[str, V], layer_names: Iterable[str], *, what: str = "layer"
) -> dict[str, V]:
    """Expand a name/regex → value map onto concrete layer names.

    Exact names win over regexes; among regexes the first listed match wins (so a
    specific pattern can precede a catch-all). A name that does not exist, or a regex
    that matches nothing, is an error: a recipe that silently targets nothing would
    report an uncompressed model as compressed.
    """
    names = list(layer_names)
    known = set(names)
    resolved: dict[str, V] = {}
    patterns: list[tuple[re.Pattern[str], V, str]] = []
    for key, value in mapping.items():
        if key.startswith(REGEX_PREFIX):
            try:
                patterns.append((re.compile(key[len(REGEX_PREFIX) :]), value, key))
            except re.error as exc:
                raise AutoslimError(f"bad {what} regex {key!r}: {exc}") from None
        elif key not in known:
            raise AutoslimError(f"unknown {what} {key!r} (known: {', '.join(names)})")
        else:
            resolved[key] = value
    for pattern, value, key in patterns:
        matched = [n for n in names if pattern.fullmatch(n)]
        if not matched:
            raise AutoslimError(
                f"{what} regex {key!r} matches no layer (known: {', '.join(names)})"
            )
        for name in matched:
            resolved.setdefault(name, value)
    return resolved
