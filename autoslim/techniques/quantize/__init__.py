"""Per-layer weight quantization: bit width, grid and calibration per layer.

Each compressible layer gets a width from {2, 3, 4, 5, 6, 8} bits, fp16, bf16, or stays
fp32. Integer widths use the grids of :mod:`autoslim.techniques.quantize._grid` (symmetric
or asymmetric; per tensor, per output channel or in groups; min-max, percentile or MSE
calibrated). The quantized model keeps ``weight = dequant(levels)`` in fp32 and the
grid's ``weight_scale`` / ``weight_zero_point`` buffers; the artifact writer re-derives
the integer levels and bit-packs them, so the bytes on disk are real.

GRU and LSTM layers are layers of the plan too (``recurrent``, on by default): each of
their weight matrices (``weight_ih_l*``, ``weight_hh_l*``) gets the layer's width with
its own grid, stored bit-packed like any weight (:class:`autoslim.space.WeightSlot`
lets the codecs read them); biases stay fp32. Embedding tables take ``embeddings``; a
table tied to a layer (``head.weight is embed.weight``) is that layer's weight, so it
takes the layer's width, stays tied, and is stored once.

What runs is decided at load time by :meth:`WeightQuantHandler.runtime`: 8-bit Linear
layers on a CPU target run on PyTorch's int8 dynamic-quantization kernel (fbgemm/x86,
activations quantized per batch) when ``int8_kernel`` is on, and so do 8-bit GRU/LSTM
layers wide enough for torch's dynamic int8 GRU/LSTM to win
(:data:`~autoslim.techniques.quantize._kernels.RNN_INT8_MIN_HIDDEN`); everything else is
decoded to fp32 and runs on the fp32 kernels, because no faster kernel exists for it here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar, Literal

import optuna
import torch
from pydantic import Field, model_validator
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext
from autoslim.recipe import Target, resolve_layer_map
from autoslim.registry import (
    ComponentSpec,
    RuntimeForms,
    StageConfig,
    StageHandler,
    register_handler,
)
from autoslim.space import (
    FloatRange,
    IntRange,
    ModelInfo,
    WeightSlot,
    compressible_layers,
    embedding_tables,
    quantizable_layers,
    recurrent_layers,
    recurrent_weights,
)
from autoslim.techniques.quantize import _codec  # noqa: F401  (registers the quantized-weight codec)
from autoslim.techniques.quantize._codebook import (
    MAX_CODEBOOK_BITS,
    CodebookSpec,
    assign,
    lookup,
    make_codebook,
)
from autoslim.techniques.quantize._grid import (
    GridSpec,
    dequantize_levels,
    fake_quantize,
    grouped,
    quantize_levels,
)
from autoslim.techniques.quantize._marks import (
    grid_of,
    grid_params,
    mark_codebook,
    mark_grid,
    mark_name,
)
from autoslim.techniques.quantize._qat import attach, detach_quantizer, fold_batchnorm
from autoslim.techniques.storage.codec import FLOAT_ATTR, float_width_of

__all__ = [
    "FLOAT_ATTR",
    "FLOAT_WIDTHS",
    "BitWidth",
    "QuantizeConfig",
    "WeightQuantHandler",
    "WeightQuantSpace",
    "compact_plan",
    "float_width_of",
    "grid_of",
    "grid_params",
    "mark_grid",
]

BitWidth = Literal[2, 3, 4, 5, 6, 8, "fp16", "bf16", "fp32"]
FLOAT_WIDTHS = {"fp16": torch.float16, "bf16": torch.bfloat16}


def compact_plan(plan: dict[str, BitWidth], all_layers: list[str]) -> dict:
    """A per-layer plan written as its most common width plus the exceptions.

    The artifact stores its recipe, so this is bytes on disk: a per-layer search that
    lands on uniform 8-bit gives the very artifact a uniform 8-bit recipe gives. Only a
    plan that covers every compressible layer can move its width into ``default``
    (the others must stay fp32).
    """
    if not plan or set(plan) != set(all_layers):
        return {"layers": plan}
    default = Counter(plan.values()).most_common(1)[0][0]
    return {
        "default": default,
        "layers": {name: bits for name, bits in plan.items() if bits != default},
    }


def _width_name(width: BitWidth, what: str = "weights") -> str:
    return f"{width}-bit {what}" if isinstance(width, int) else f"{width} {what}"


# Embedding rows are quantized in groups of this many values, each with its own scale:
# one scale per row loses the rare large entries of a token's vector, and 32 is the
# block ONNX Runtime's 4-bit gather reads.
EMBEDDING_GROUP = 32


def embedding_grid(bits: int, table: nn.Embedding) -> GridSpec:
    grouped_rows = table.embedding_dim % EMBEDDING_GROUP == 0
    return GridSpec(
        bits=bits,
        symmetric=True,
        granularity="group" if grouped_rows else "per_channel",
        group_size=EMBEDDING_GROUP if grouped_rows else None,
    )


def _quantize_tables(model: nn.Module, width: BitWidth, *, rebuild: bool) -> None:
    """Snap (or, rebuilding, only mark) every embedding table to ``width``."""
    if width == "fp32":
        return
    for table in embedding_tables(model).values():
        if width in FLOAT_WIDTHS:
            if not rebuild:
                with torch.no_grad():
                    table.weight.copy_(table.weight.to(FLOAT_WIDTHS[width]).float())
            setattr(table, FLOAT_ATTR, width)
        elif rebuild:
            spec = embedding_grid(width, table)
            shape = grouped(table.weight, spec).shape[:2]
            mark_grid(table, spec, torch.ones(shape), torch.zeros(shape))
        else:
            _snap_to_grid(table, embedding_grid(width, table))


class QuantizeConfig(StageConfig):
    """Bit width per layer: ``layers`` maps exact names or ``re:`` regexes to a width,
    every other compressible layer gets ``default``. The grid settings apply to every
    integer-quantized layer of the stage."""

    kind: Literal["quantize"] = "quantize"
    default: BitWidth = "fp32"
    layers: dict[str, BitWidth] = Field(default_factory=dict)
    granularity: Literal["per_tensor", "per_channel", "group"] = "per_channel"
    group_size: int | None = Field(default=None, ge=2)
    symmetric: bool = True
    calibration: Literal["minmax", "percentile", "mse", "kl"] = "minmax"
    percentile: float = Field(default=99.9, gt=50.0, le=100.0)
    int8_kernel: bool = True
    fold_bn: bool = False
    qat_epochs: int = Field(default=0, ge=0)
    qat_lr: float = Field(default=1e-4, gt=0.0)
    qat_method: Literal["ste", "lsq"] = "ste"
    grid_kind: Literal["uniform", "pow2", "log", "kmeans"] = "uniform"
    codebook_per_channel: bool = True
    # Width of the embedding tables (nn.Embedding): symmetric uniform levels in groups
    # of EMBEDDING_GROUP along each row, the block layout runtimes gather from directly.
    embeddings: BitWidth = "fp32"
    # Whether GRU/LSTM layers take the plan's widths (``default`` or their ``layers``
    # entry, one width for all of a layer's weight matrices; biases stay fp32). False
    # keeps them fp32, as runtimes that ship their own file need (their RNN ops are fp32).
    recurrent: bool = True

    # The stored grid (scale, zero point or codebook) is in the weights file; how it was
    # calibrated or learned is not needed to load it.
    training_fields: ClassVar[frozenset[str]] = frozenset(
        {"calibration", "percentile", "qat_epochs", "qat_lr", "qat_method"}
    )

    @model_validator(mode="after")
    def _consistent(self) -> QuantizeConfig:
        if self.grid_kind != "uniform":
            widths = [self.default, *self.layers.values()]
            too_wide = sorted({w for w in widths if isinstance(w, int) and w > MAX_CODEBOOK_BITS})
            if too_wide:
                raise ValueError(
                    f"{self.grid_kind} codebooks take 2-{MAX_CODEBOOK_BITS} bits, not {too_wide}"
                )
            if self.qat_epochs:
                raise ValueError("QAT learns uniform grids; use grid_kind: uniform with qat_epochs")
        if (self.granularity == "group") != (self.group_size is not None):
            raise ValueError("group_size is required with granularity: group, and only then")
        if self.qat_method == "lsq" and not self.symmetric:
            raise ValueError("qat_method lsq learns symmetric grids only (set symmetric: true)")
        return self

    def layer_names(self, model: nn.Module) -> list[str]:
        """The layers this stage's plan covers: compressible ones, and recurrent ones
        unless ``recurrent`` is off."""
        layers = quantizable_layers(model) if self.recurrent else compressible_layers(model)
        return list(layers)

    def widths(self, layer_names: list[str]) -> dict[str, int | str]:
        """Width per layer, fp32 layers omitted."""
        resolved = resolve_layer_map(self.layers, layer_names)
        plan = {name: resolved.get(name, self.default) for name in layer_names}
        return {name: bits for name, bits in plan.items() if bits != "fp32"}

    def grid(self, bits: int) -> GridSpec | CodebookSpec:
        if self.grid_kind != "uniform":
            return CodebookSpec(
                bits=bits, kind=self.grid_kind, per_channel=self.codebook_per_channel
            )
        return GridSpec(
            bits=bits,
            symmetric=self.symmetric,
            granularity=self.granularity,
            group_size=self.group_size,
            calibration=self.calibration,
            percentile=self.percentile,
        )


def _check_groups(module: nn.Module, spec: GridSpec, name: str) -> None:
    try:
        grouped(module.weight, spec)
    except ValueError as exc:
        raise AutoslimError(f"layer {name}: {exc}") from None


@register_handler(QuantizeConfig)
class WeightQuantHandler(StageHandler[QuantizeConfig]):
    def storage_only(self, config: QuantizeConfig, forms: RuntimeForms) -> list[str]:
        widths = {config.default, *config.layers.values()}
        parts = [_width_name(w) for w in sorted(widths, key=str) if not forms.runs_width(w)]
        if len(widths) > 1 and not forms.per_layer:
            parts.append("per-layer widths")
        if not forms.runs_embedding(config.embeddings):
            parts.append(_width_name(config.embeddings, "embeddings"))
        return parts

    def apply(self, model: nn.Module, config: QuantizeConfig, ctx: ApplyContext) -> nn.Module:
        if config.fold_bn:
            fold_batchnorm(model)
        layers = compressible_layers(model)
        recurrent = recurrent_layers(model)
        specs, recurrent_plan = {}, {}
        for name, width in config.widths(config.layer_names(model)).items():
            if name in recurrent:
                recurrent_plan[name] = width
                continue
            if width in FLOAT_WIDTHS:
                with torch.no_grad():
                    layers[name].weight.copy_(layers[name].weight.to(FLOAT_WIDTHS[width]).float())
                setattr(layers[name], FLOAT_ATTR, width)
                continue
            specs[name] = config.grid(width)
            if isinstance(specs[name], GridSpec):
                _check_groups(layers[name], specs[name], name)
        learned = {}
        if config.qat_epochs > 0 and specs:
            learned = _train_aware(model, {n: layers[n] for n in specs}, specs, config, ctx)
        for name, spec in specs.items():
            _snap_to_grid(layers[name], spec, learned=learned.get(name))
        # After QAT, which trains every weight: a snapped recurrent weight would drift.
        for name, width in recurrent_plan.items():
            _quantize_recurrent(recurrent[name], width, config, name, rebuild=False)
        _quantize_tables(model, config.embeddings, rebuild=False)
        return model

    def rebuild(self, model: nn.Module, config: QuantizeConfig) -> nn.Module:
        if config.fold_bn:
            fold_batchnorm(model)
        layers = compressible_layers(model)
        recurrent = recurrent_layers(model)
        for name, width in config.widths(config.layer_names(model)).items():
            if name in recurrent:
                _quantize_recurrent(recurrent[name], width, config, name, rebuild=True)
                continue
            module = layers[name]
            if width in FLOAT_WIDTHS:
                setattr(module, FLOAT_ATTR, width)
                continue
            spec = config.grid(width)
            if isinstance(spec, CodebookSpec):
                groups = module.weight.shape[0] if spec.per_channel else 1
                mark_codebook(module, spec, torch.zeros(groups, spec.entries))
                continue
            shape = grouped(module.weight, spec).shape[:2]
            mark_grid(module, spec, torch.ones(shape), torch.zeros(shape))
        _quantize_tables(model, config.embeddings, rebuild=True)
        return model

    def runtime(self, model: nn.Module, config: QuantizeConfig, target: Target) -> nn.Module:
        """Swap layers onto real low-bit kernels where the target has one."""
        from autoslim.techniques.quantize._kernels import (
            int8_dynamic_linear,
            int8_dynamic_rnn,
            int8_rnn_wins,
            off_fused_transformer_path,
            supports_int8_dynamic,
            takes_int8_kernel,
        )

        if not (config.int8_kernel and target.device == "cpu" and supports_int8_dynamic()):
            return model
        for name, layer in list(recurrent_layers(model).items()):
            weights = recurrent_weights(layer)
            specs = {grid_of(layer, w) for w in weights}
            spec = specs.pop() if len(specs) == 1 else None
            if _int8_kernel_grid(spec) and int8_rnn_wins(layer):
                _replace(model, name, int8_dynamic_rnn(layer, spec, weights))
        for name, module in list(compressible_layers(model).items()):
            spec = grid_of(module)
            swappable = isinstance(module, nn.Linear) and takes_int8_kernel(module)
            if swappable and _int8_kernel_grid(spec):
                _replace(model, name, int8_dynamic_linear(module, spec))
        off_fused_transformer_path(model)
        return model

    def shortest_form(self, config: QuantizeConfig, same_structure) -> QuantizeConfig:
        """``recurrent: false`` is dropped where it changes nothing: a model without
        GRU/LSTM layers (checked by rebuilding; float widths add no buffer to check by,
        so a stage with one keeps it)."""
        floats = {config.default, *config.layers.values()} & set(FLOAT_WIDTHS)
        if not config.recurrent and not floats:
            candidate = config.model_copy(update={"recurrent": True})
            if same_structure(candidate):
                return candidate
        return config


def _train_aware(
    model: nn.Module,
    layers: dict[str, nn.Module],
    specs: dict[str, GridSpec],
    config: QuantizeConfig,
    ctx: ApplyContext,
) -> dict[str, tuple]:
    """QAT: fake-quantize the layers' weights, fine-tune through the estimator, and
    return the grids LSQ learned (STE grids are re-calibrated afterwards)."""
    for name, module in layers.items():
        attach(module, specs[name], config.qat_method)
    learned = {}
    try:
        ctx.fine_tune(model, epochs=config.qat_epochs, lr=config.qat_lr)
    finally:
        for name, module in layers.items():
            grid = detach_quantizer(module)
            if grid is not None:
                learned[name] = grid
    return learned


@torch.no_grad()
def _snap_to_grid(
    module: nn.Module,
    spec: GridSpec | CodebookSpec,
    *,
    learned: tuple | None = None,
    weight: str = "weight",
) -> None:
    """Put the module's ``weight`` exactly on its grid (PTQ calibration, or LSQ's
    learned step). The copy is in place, so a tied weight stays tied."""
    tensor = getattr(module, weight)
    if isinstance(spec, CodebookSpec):
        codebook = make_codebook(tensor, spec)
        tensor.copy_(lookup(assign(tensor, codebook, spec), codebook, spec))
        mark_codebook(module, spec, codebook, weight)
        return
    if learned is None:
        dequantized, scale, zero = fake_quantize(tensor, spec)
    else:
        scale, zero = learned
        dequantized = dequantize_levels(
            quantize_levels(tensor, scale, zero, spec), scale, zero, spec
        )
    tensor.copy_(dequantized)
    mark_grid(module, spec, scale, zero, weight)


def _quantize_recurrent(
    layer: nn.RNNBase, width: BitWidth, config: QuantizeConfig, name: str, *, rebuild: bool
) -> None:
    """Every weight matrix of a GRU/LSTM at ``width``, each with its own grid (per
    channel: one scale per gate row), in place so the layer's flat weights stay its own.
    QAT does not fake-quantize them (the recurrence reads its flat weights, not a
    parametrization): they are calibrated after it, post-training."""
    for attr in recurrent_weights(layer):
        tensor = getattr(layer, attr)
        if width in FLOAT_WIDTHS:
            if not rebuild:
                with torch.no_grad():
                    tensor.copy_(tensor.to(FLOAT_WIDTHS[width]).float())
            setattr(layer, mark_name(FLOAT_ATTR, attr), width)
            continue
        spec = config.grid(width)
        if isinstance(spec, GridSpec):
            _check_groups(WeightSlot(layer, attr), spec, f"{name}.{attr}")
        if not rebuild:
            _snap_to_grid(layer, spec, weight=attr)
        elif isinstance(spec, CodebookSpec):
            groups = tensor.shape[0] if spec.per_channel else 1
            mark_codebook(layer, spec, torch.zeros(groups, spec.entries), attr)
        else:
            shape = grouped(tensor, spec).shape[:2]
            mark_grid(layer, spec, torch.ones(shape), torch.zeros(shape), attr)


def _int8_kernel_grid(spec: object) -> bool:
    """Whether a grid's levels are what torch's int8 kernels take as they are."""
    return (
        isinstance(spec, GridSpec)
        and spec.bits == 8
        and spec.symmetric
        and spec.granularity != "group"
    )


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class WeightQuantSpace(ComponentSpec):
    """Search dimensions: one bit width per layer (or one for all), from ``bits``.

    ``layer_bits`` narrows the choices of chosen layers (exact name or ``re:`` regex),
    e.g. to keep a sensitive first layer at 8 bits or fp32. ``granularity`` and
    ``calibration`` list the grid settings to search (one entry: fixed).
    """

    type: Literal["quantize.weight"] = "quantize.weight"
    name: str = "quant"
    bits: list[BitWidth] = Field(default=[2, 3, 4, 8, "fp32"], min_length=1)
    per_layer: bool = True
    layers: str = ".*"
    layer_bits: dict[str, list[BitWidth]] = Field(default_factory=dict)
    granularity: list[Literal["per_tensor", "per_channel"]] = Field(
        default=["per_channel"], min_length=1
    )
    calibration: list[Literal["minmax", "percentile", "mse", "kl"]] = Field(
        default=["minmax"], min_length=1
    )
    symmetric: bool = True
    fold_bn: list[bool] = Field(default=[False], min_length=1)
    qat_epochs: IntRange = IntRange(low=0, high=0)
    qat_lr: FloatRange = FloatRange(low=1e-5, high=1e-3, log=True)
    qat_method: list[Literal["ste", "lsq"]] = Field(default=["ste"], min_length=1)
    grid_kind: list[Literal["uniform", "pow2", "log", "kmeans"]] = Field(
        default=["uniform"], min_length=1
    )
    # Embedding-table widths to search (models without nn.Embedding ignore it).
    embeddings: list[BitWidth] = Field(default=["fp32"], min_length=1)
    # Whether GRU/LSTM layers are quantized (models without them ignore it): with
    # ``per_layer`` each gets its own width parameter, else they take the one width.
    recurrent: bool = True

    # Added after studies were run: at its default it searches what those spaces searched
    # on models without GRU/LSTM layers, so it leaves the space's fingerprint as it was.
    fingerprint_new_fields: ClassVar[tuple[str, ...]] = ("recurrent",)

    def for_runtime(self, forms: RuntimeForms) -> tuple[ComponentSpec | None, list[str]]:
        if forms.storage_ships:
            return self, []
        bits = [b for b in self.bits if forms.runs_width(b)]
        dropped = [_width_name(b) for b in self.bits if not forms.runs_width(b)]
        notes = []
        if dropped:
            notes.append(
                f"{self.name}: {', '.join(dropped)} dropped; {forms.runtime} has no kernels "
                "for them and its file would store them no smaller"
            )
        if set(bits) <= {"fp32"}:
            return None, [*notes, f"{self.name}: dropped; nothing left that runs quantized"]
        update: dict[str, Any] = {"bits": bits}
        # Such a runtime runs and ships its own fp32 GRU/LSTM ops (ONNX Runtime's and
        # OpenVINO's quantizers leave them fp32): a low-bit recurrent weight would buy no
        # bytes and no speed there, only lose accuracy, so it is not offered.
        recurrent_note = "GRU/LSTM weights stay fp32, as its recurrent ops are"
        if self.per_layer and not forms.per_layer:
            update["per_layer"] = False
            notes.append(
                f"{self.name}: one width for all layers, as {forms.runtime} runs them"
                + (f"; {recurrent_note}" if self.recurrent else "")
            )
        elif self.recurrent:
            notes.append(f"{self.name}: {recurrent_note} on {forms.runtime}")
        if self.recurrent:
            update["recurrent"] = False
        tables = [w for w in self.embeddings if forms.runs_embedding(w)] or ["fp32"]
        if tables != self.embeddings:
            notes.append(
                f"{self.name}: embeddings {', '.join(map(str, self.embeddings))} narrowed to "
                f"{', '.join(map(str, tables))}, what {forms.runtime} gathers from directly"
            )
            update["embeddings"] = tables
        if self.layer_bits:
            update["layer_bits"] = {
                layer: [b for b in choices if forms.runs_width(b)] or ["fp32"]
                for layer, choices in self.layer_bits.items()
            }
        return self.model_copy(update=update), notes

    def matching_layers(self, names: list[str]) -> list[str]:
        from autoslim.space import LayerInfo

        return ModelInfo(tuple(LayerInfo(n, "", 0, ()) for n in names), 0).matching(self.layers)

    def _suggest_qat(self, trial: optuna.Trial) -> dict:
        epochs = self.qat_epochs.suggest(trial, f"{self.name}.qat_epochs")
        if epochs == 0:
            return {}
        return {
            "qat_epochs": epochs,
            "qat_lr": self.qat_lr.suggest(trial, f"{self.name}.qat_lr"),
            "qat_method": self._pick(trial, "qat_method", self.qat_method),
        }

    def _pick(self, trial: optuna.Trial, key: str, options: list) -> object:
        return (
            options[0]
            if len(options) == 1
            else trial.suggest_categorical(f"{self.name}.{key}", options)
        )

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> QuantizeConfig | None:
        if not self.enabled(trial):
            return None
        grid = {
            "granularity": self._pick(trial, "granularity", self.granularity),
            "calibration": self._pick(trial, "calibration", self.calibration),
            "symmetric": self.symmetric,
            "fold_bn": self._pick(trial, "fold_bn", self.fold_bn),
            "grid_kind": self._pick(trial, "grid_kind", self.grid_kind),
            "embeddings": self._pick(trial, "embeddings", self.embeddings),
        }
        if not self.recurrent:
            grid["recurrent"] = False
        uniform = grid["grid_kind"] == "uniform"
        if uniform:
            grid |= self._suggest_qat(trial)
        # Codebook grids allow fewer widths; a separate parameter name keeps each
        # Optuna distribution's choice set fixed across trials.
        key, allowed = (
            ("bits", self.bits) if uniform else ("cbits", self._codebook_widths(self.bits))
        )
        if not self.per_layer:
            return QuantizeConfig(
                default=trial.suggest_categorical(f"{self.name}.{key}", allowed), **grid
            )
        # Per-layer widths cover the recurrent layers too (unless ``recurrent`` is off).
        names = info.width_names if self.recurrent else info.names
        choices = resolve_layer_map(self.layer_bits, names)
        plan = {}
        for layer in info.matching(self.layers, recurrent=self.recurrent):
            options = choices.get(layer, self.bits)
            options = options if uniform else self._codebook_widths(options)
            plan[layer] = trial.suggest_categorical(f"{self.name}.{key}.{layer}", options)
        return QuantizeConfig(**compact_plan(plan, names), **grid)

    @staticmethod
    def _codebook_widths(options: list) -> list:
        kept = [b for b in options if not isinstance(b, int) or b <= MAX_CODEBOOK_BITS]
        return kept or ["fp32"]
