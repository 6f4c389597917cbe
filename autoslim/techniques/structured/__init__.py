"""Structured pruning that physically removes channels, FFN neurons, attention heads
and whole blocks (:mod:`autoslim.techniques.structured._depth`).

Channels: built on Torch-Pruning's DepGraph, which finds coupled layers (residual adds,
BatchNorm, concatenation, grouped convs) and shrinks them together. Writing our own
tracer would re-derive that graph for every new op; what we add is the policy.

Replay: an artifact's state_dict overwrites every weight, so :meth:`rebuild` only needs
the same *number* of channels removed per group. Pruning is always local (per group),
where Torch-Pruning derives that number from ``ratio``/``round_to`` and never from
importance values; global ranking would make shapes depend on trained weights, which a
recipe cannot replay, so it is not offered. ``apply`` checks that a structural-only
rebuild of the same model gives the same shapes, so a recipe that would not load fails
at apply time.

Heads: Torch-Pruning 1.6.1 cannot remove heads of ``nn.MultiheadAttention``. Measured:
with ``prune_num_heads=True`` it shrinks ``embed_dim`` (the whole residual stream, 64 → 32)
and keeps ``num_heads=8`` (head_dim 8 → 4); given ``num_heads={mha: 8}`` and
``prune_head_dims=False`` it leaves the attention untouched. Its head logic expects q/k/v
``nn.Linear`` layers, and ``nn.MultiheadAttention`` ties heads × head_dim to
``embed_dim``. So we replace each attention by :class:`PrunedMultiheadAttention`
(packed q/k/v ``Linear`` plus ``out_proj``, inner width free of ``embed_dim``) and drop
whole heads there; Torch-Pruning never touches attention or the residual stream.
The pruned layer leaves ``nn.TransformerEncoderLayer``'s fused inference kernel (it
assumes heads × head_dim == embed_dim), so speed is measured, never assumed.

BERT-style ``transformers`` layers (and the FFN of ``nn.TransformerEncoderLayer``): see
:mod:`autoslim.techniques.structured._heads`. ``heads`` also removes their heads; ``ffn`` removes
that fraction of FFN neurons per block. With ``ffn`` set, FFN up-projections are kept out
of Torch-Pruning, so ``ratio`` and ``ffn`` never both shrink one FFN. Attention
projections (children of any module with a head count or size) are only ever changed by
``heads``: Torch-Pruning would cut them channel by channel under the head size the module
reshapes by. ``ratio`` never prunes embedding tables, which also keeps a transformer's
residual stream (and ``config.hidden_size``) whole; so ``ratio`` on BERT shrinks the FFN
(unless ``ffn`` governs it) and the pooler.

Hidden size: ``hidden`` removes that fraction of a BERT-style encoder's residual stream,
everywhere it flows (:mod:`autoslim.techniques.structured._hidden`), after channels, heads
and FFN neurons. None of those touches the stream, so its dimensions keep their numbering
and the scores taken on the unpruned model still apply.

Tracing: Torch-Pruning runs the model on ``input_shape`` ones when the recipe or the model
(``example_input_shape``) gives a shape, else on the task's real example inputs
(:func:`autoslim.data.current_example`: any dtype, a tuple or a dict, Hugging Face style),
which ``apply_recipe`` and artifact loading provide; every tensor the model returns is
traced, so no layer feeding any output is left out.

Layers kept whole: recurrent layers (``nn.GRU``/``nn.LSTM``/``nn.RNN``) keep their hidden
width, but the channels feeding them may go (:class:`RecurrentInputPruner`); layers that
share a weight (``head.weight is embed.weight``) are touched by no group at all, and
``apply``/``rebuild`` check that every tie survives. transformers' ``Conv1D`` (GPT-2) is
refused for ``ratio`` in one line, by the search space before any trial and at apply.

Skips: a group Torch-Pruning cannot shrink, or one the criterion cannot score (e.g.
``bn_scale`` without BatchNorm), stays whole and is listed in
``ctx.records["structured.skipped"]``; only a model that cannot be traced at all is an
error (one line, the tracer's exception as its cause), since the recipe would then promise
removal it cannot deliver.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

import optuna
import torch
import torch_pruning as tp
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from autoslim.data import current_example, example_args, to_device
from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext
from autoslim.recipe import resolve_layer_map
from autoslim.registry import ComponentSpec, StageConfig, StageHandler, register_handler
from autoslim.space import FloatRange, IntRange, ModelInfo, compressible_layers
from autoslim.techniques.prune.importance import (
    CriterionName,
    GradStats,
    calibrate,
    element_scores,
    get_criterion,
)
from autoslim.techniques.prune.importance import channel_scores as element_channel_scores
from autoslim.techniques.structured._depth import (
    DropLayersConfig,
    DropLayersHandler,
    DropLayersSpace,
    drop_blocks,
)
from autoslim.techniques.structured._heads import (
    bert_layers,
    ffn_pairs,
    ffn_up_layers,
    is_bert_layer,
    prune_bert_heads,
    prune_ffn,
    transformer_scores,
)
from autoslim.techniques.structured._hidden import WidthRestore, hidden_scores, prune_hidden
from autoslim.train import on_training_device

__all__ = [
    "DropLayersConfig",
    "DropLayersHandler",
    "DropLayersSpace",
    "PrunedMultiheadAttention",
    "StructuredPruneConfig",
    "StructuredPruneHandler",
    "StructuredPruneSpace",
    "WidthRestore",
    "drop_blocks",
    "prune_channels",
    "prune_heads",
    "prune_transformer",
]

log = logging.getLogger(__name__)
ATTENTION = (nn.MultiheadAttention,)


class StructuredPruneConfig(StageConfig):
    """Remove ``ratio`` of each prunable group's channels (``group_ratios`` sets a group's
    ratio outright, ``group_multipliers`` scales ``ratio``; keys are the group's layer
    names or ``re:`` regexes), ``heads`` of each attention's heads (``nn.MultiheadAttention``
    and BERT-style layers), ``ffn`` of each transformer block's FFN neurons and ``hidden`` of
    a BERT-style encoder's residual-stream dimensions, then fine-tune."""

    kind: Literal["prune_structured"] = "prune_structured"
    ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    group_ratios: dict[str, float] = Field(default_factory=dict)
    group_multipliers: dict[str, float] = Field(default_factory=dict)
    round_to: int | None = Field(default=None, ge=1)
    importance: CriterionName = "l1"
    heads: float = Field(default=0.0, ge=0.0, lt=1.0)
    ffn: float = Field(default=0.0, ge=0.0, lt=1.0)
    hidden: float = Field(default=0.0, ge=0.0, lt=1.0)
    ignore: list[str] = Field(default_factory=list)
    ignore_output: bool = True
    input_shape: list[int] | None = None
    calibration_samples: int = Field(default=64, ge=1)
    fine_tune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0.0)

    # ``importance`` is not listed: ``bn_scale`` rebuilds along other groups than l1 does
    # (see ``rebuild``); :meth:`StructuredPruneHandler.shortest_form` drops it where it can.
    training_fields: ClassVar[frozenset[str]] = frozenset(
        {"calibration_samples", "fine_tune_epochs", "lr"}
    )

    def milder(self, fraction: float) -> StructuredPruneConfig:
        """Every removed share (channels, group ratios, heads, FFN neurons, hidden
        dimensions) scaled by ``fraction``."""
        return self.model_validate(
            {
                **self.model_dump(),
                "ratio": self.ratio * fraction,
                "heads": self.heads * fraction,
                "ffn": self.ffn * fraction,
                "hidden": self.hidden * fraction,
                "group_ratios": {
                    name: value * fraction for name, value in self.group_ratios.items()
                },
            }
        )

    @model_validator(mode="after")
    def _check_groups(self) -> StructuredPruneConfig:
        for name, value in self.group_ratios.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"group ratio for {name!r} must be in [0, 1), got {value}")
        for name, value in self.group_multipliers.items():
            if value < 0.0:
                raise ValueError(f"group multiplier for {name!r} must be >= 0, got {value}")
        return self


class PrunedMultiheadAttention(nn.Module):
    """Self-attention whose inner width (heads × head_dim) is free of ``embed_dim``.

    A drop-in for ``nn.MultiheadAttention`` inside ``nn.TransformerEncoderLayer``.
    ``_qkv_same_embed_dim = False`` turns off the layer's fused inference path, which
    assumes heads × head_dim == embed_dim; the slow path calls our ``forward``.
    """

    _qkv_same_embed_dim = False

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        *,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.dropout, self.batch_first = dropout, batch_first
        self.in_proj = nn.Linear(embed_dim, 3 * num_heads * head_dim, bias=bias)
        self.out_proj = nn.Linear(num_heads * head_dim, embed_dim, bias=bias)

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        return self.in_proj.bias

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise AutoslimError("PrunedMultiheadAttention does not return attention weights")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        (b, lq, _), ls = query.shape, key.shape[1]
        wq, wk, wv = self.in_proj.weight.chunk(3)
        bq, bk, bv = self.in_proj.bias.chunk(3) if self.in_proj.bias is not None else (None,) * 3
        q, k, v = (
            F.linear(t, w, bb).view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
            for t, w, bb in ((query, wq, bq), (key, wk, bk), (value, wv, bv))
        )
        mask = _additive_mask(attn_mask, key_padding_mask, b, lq, ls, query.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal and mask is None,
        )
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.num_heads * self.head_dim))
        return (out if self.batch_first else out.transpose(0, 1)), None


def _additive_mask(
    attn_mask: torch.Tensor | None,
    padding: torch.Tensor | None,
    b: int,
    lq: int,
    ls: int,
    dtype: torch.dtype,
) -> torch.Tensor | None:
    """nn.MultiheadAttention's masks (bool: True = blocked, or additive float) as one float mask."""

    def as_float(m: torch.Tensor) -> torch.Tensor:
        return (
            torch.zeros(m.shape, dtype=dtype).masked_fill(m, float("-inf"))
            if m.dtype == torch.bool
            else m.to(dtype)
        )

    mask = None
    if attn_mask is not None:
        mask = (
            as_float(attn_mask).view(-1, 1, lq, ls)
            if attn_mask.dim() == 2
            else as_float(attn_mask).view(b, -1, lq, ls)
        )
    if padding is not None:
        pad = as_float(padding).view(b, 1, 1, ls)
        mask = pad if mask is None else mask + pad
    return mask


def to_pruned_attention(mha: nn.MultiheadAttention) -> PrunedMultiheadAttention:
    """An exact copy of a standard self-attention in the prunable layout."""
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise AutoslimError(
            "only plain self-attention (no kdim/vdim, bias_k, add_zero_attn) can lose heads"
        )
    new = PrunedMultiheadAttention(
        mha.embed_dim,
        mha.num_heads,
        mha.head_dim,
        bias=mha.in_proj_bias is not None,
        dropout=mha.dropout,
        batch_first=mha.batch_first,
    )
    with torch.no_grad():
        new.in_proj.weight.copy_(mha.in_proj_weight)
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if mha.in_proj_bias is not None:
            new.in_proj.bias.copy_(mha.in_proj_bias)
            new.out_proj.bias.copy_(mha.out_proj.bias)
    return new.train(mha.training)


def keep_heads(attn: PrunedMultiheadAttention, keep: list[int]) -> PrunedMultiheadAttention:
    """A smaller attention holding only the heads in ``keep`` (in their original order)."""
    d, inner = attn.head_dim, attn.num_heads * attn.head_dim
    cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(keep)])
    rows = torch.cat([cols + part * inner for part in range(3)])
    new = PrunedMultiheadAttention(
        attn.embed_dim,
        len(keep),
        d,
        bias=attn.in_proj.bias is not None,
        dropout=attn.dropout,
        batch_first=attn.batch_first,
    )
    with torch.no_grad():
        new.in_proj.weight.copy_(attn.in_proj.weight[rows])
        new.out_proj.weight.copy_(attn.out_proj.weight[:, cols])
        if attn.in_proj.bias is not None:
            new.in_proj.bias.copy_(attn.in_proj.bias[rows])
            new.out_proj.bias.copy_(attn.out_proj.bias)
    return new.train(attn.training)


def head_scores(attn: nn.Module, criterion_name: str, stats: GradStats) -> torch.Tensor:
    """Sum of element scores over each head's q/k/v rows and out_proj columns."""
    criterion = get_criterion("l1" if criterion_name == "bn_scale" else criterion_name)
    w_in = attn.in_proj_weight if isinstance(attn, nn.MultiheadAttention) else attn.in_proj.weight
    rows = (
        element_channel_scores(w_in, criterion, stats, dim=0)
        .view(3, attn.num_heads, -1)
        .sum(dim=(0, 2))
    )
    cols = (
        element_channel_scores(attn.out_proj.weight, criterion, stats, dim=1)
        .view(attn.num_heads, -1)
        .sum(1)
    )
    return rows + cols


def heads_to_remove(num_heads: int, fraction: float) -> int:
    return min(int(round(fraction * num_heads)), num_heads - 1)


def prune_heads(
    model: nn.Module, fraction: float, scores: dict[str, torch.Tensor] | None
) -> dict[str, str]:
    """Drop the lowest-scoring heads of every attention (the last ones without scores)."""
    skipped: dict[str, str] = {}
    for name, attn in [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, (*ATTENTION, PrunedMultiheadAttention))
    ]:
        k = heads_to_remove(attn.num_heads, fraction)
        if k == 0:
            skipped[name] = f"{fraction:.0%} of {attn.num_heads} heads rounds to none"
            continue
        try:
            pruned = to_pruned_attention(attn) if isinstance(attn, ATTENTION) else attn
        except AutoslimError as exc:
            skipped[name] = str(exc)
            continue
        order = (
            torch.argsort(scores[name], stable=True)
            if scores
            else torch.arange(attn.num_heads).flip(0)
        )
        keep = sorted(set(range(attn.num_heads)) - set(order[:k].tolist()))
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, keep_heads(pruned, keep))
    return skipped


class GroupImportance(tp.importance.Importance):
    """Torch-Pruning importance from our element criteria: the mean over a group's layers.

    ``bn_scale`` scores only BatchNorm scales; a group without one gets ``None`` and
    Torch-Pruning leaves it whole (reported as skipped). Which groups get ``None``
    depends on structure only, which keeps :meth:`StructuredPruneHandler.rebuild` exact.
    """

    def __init__(self, criterion_name: str, stats: GradStats) -> None:
        self.criterion, self.stats = get_criterion(criterion_name), stats
        self.frozen: set[int] = set()  # ids of layers no group may touch (set per model)

    def _layer_scores(self, layer: nn.Module, fn: object, idxs: list[int]) -> torch.Tensor | None:
        crit = self.criterion
        if fn == tp.prune_batchnorm_out_channels:
            return element_scores(layer.weight, crit, self.stats)[idxs] if layer.affine else None
        if crit.bn_only:
            return None
        transposed = getattr(layer, "transposed", False)
        if fn in (tp.prune_conv_out_channels, tp.prune_linear_out_channels):
            return element_channel_scores(layer.weight, crit, self.stats, dim=int(transposed))[idxs]
        if fn in (tp.prune_conv_in_channels, tp.prune_linear_in_channels):
            scores = element_channel_scores(layer.weight, crit, self.stats, dim=1 - int(transposed))
            groups = getattr(layer, "groups", 1)
            if groups > 1 and groups != layer.in_channels:
                scores = scores.repeat(groups)
            return scores[idxs]
        return None

    @torch.no_grad()
    def __call__(self, group: tp.dependency.Group) -> torch.Tensor | None:
        if any(id(dep.layer) in self.frozen for dep, _ in group):
            return None  # structural: the same groups stay whole in apply and rebuild
        total, count = torch.zeros(len(group[0].idxs)), 0
        for i, (dep, idxs) in enumerate(group):
            root_idxs = group[i].root_idxs
            scores = self._layer_scores(dep.layer, dep.pruning_fn, idxs)
            if scores is None or any(r is None for r in root_idxs):
                continue
            total.scatter_add_(0, torch.tensor(root_idxs), scores.float())
            count += 1
        return total / count if count else None


class RecurrentInputPruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning's view of ``nn.GRU`` / ``nn.RNN`` / ``nn.LSTM``, which it cannot prune
    (1.6 has an LSTM pruner for one layer only, none for GRU, and traces a GRU as an
    element-wise op, which couples its input and hidden widths and ends in an IndexError).

    As a layer of its own, the recurrent layer separates the width feeding it from its
    hidden width. Its inputs may shrink (columns of the first layer's input weights, each
    direction); its hidden width never does (it is in ``_ignored``: gates interleave it).
    """

    TARGET_MODULES = (nn.RNNBase,)

    def prune_out_channels(self, layer: nn.Module, idxs: list) -> nn.Module:
        raise AutoslimError(f"the hidden width of {type(layer).__name__} cannot be pruned")

    def prune_in_channels(self, layer: nn.RNNBase, idxs: list) -> nn.Module:
        keep = torch.tensor(sorted(set(range(layer.input_size)) - set(idxs)), dtype=torch.long)
        suffixes = ["", "_reverse"] if layer.bidirectional else [""]
        with torch.no_grad():
            for suffix in suffixes:
                name = f"weight_ih_l0{suffix}"
                old = getattr(layer, name)
                setattr(layer, name, nn.Parameter(old[:, keep].clone(), old.requires_grad))
        layer.input_size = len(keep)
        return layer

    def get_out_channels(self, layer: nn.RNNBase) -> int:
        width = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
        return width * (2 if layer.bidirectional else 1)

    def get_in_channels(self, layer: nn.RNNBase) -> int:
        return layer.input_size


class _Opaque(torch.autograd.Function):
    """``out`` (computed elsewhere) as one autograd node whose only input is ``x``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:
        return None, None


@contextlib.contextmanager
def _opaque_recurrent(model: nn.Module) -> Iterator[None]:
    """While Torch-Pruning traces: every recurrent layer as one autograd node from its input
    to its output. On CPU a GRU runs as per-step gate ops in the autograd graph, and the
    tracer, which follows that graph, would meet those ops (splits of the gate weights)
    instead of the layer's input, and fail with an IndexError."""

    def opaque(module: nn.RNNBase, x: Any, *rest: Any) -> Any:
        out, state = type(module).forward(module, x, *rest)
        if not isinstance(x, torch.Tensor):  # a PackedSequence: traced as it is
            return out, state
        return _Opaque.apply(x, out.detach()), state

    patched = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    for module in patched:
        module.forward = types.MethodType(opaque, module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def example_input(model: nn.Module, config: StructuredPruneConfig) -> Any:
    """The inputs Torch-Pruning traces the model with: ones of ``input_shape`` (the recipe's)
    or of the model's ``example_input_shape``, else the task's real example
    (:func:`autoslim.data.current_example`: a tensor, tuple or dict of any dtype), which
    ``apply_recipe`` and artifact loading provide."""
    shape = config.input_shape or getattr(model, "example_input_shape", None)
    if shape is not None:
        return torch.ones(1, *shape)
    example = current_example()
    if example is None:
        raise AutoslimError(
            "structured pruning needs an example input or the model's input shape to trace "
            "it: apply it with the task's data (apply_recipe, or load with the task), or set "
            "the stage's input_shape (without the batch dimension) or the model's "
            "example_input_shape"
        )
    return to_device(example, next(model.parameters(), torch.empty(0)).device)


def _trace_forward(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """Torch-Pruning's ``forward_fn``: the model called the way its inputs say, with every
    tensor it returns (a Hugging Face ``ModelOutput``, a tuple of heads) kept, so that no
    layer feeding any output is left out of the graph."""
    args, kwargs = example_args(inputs)
    return _output_tensors(model(*args, **kwargs))


def _output_tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in _output_tensors(item)]
    logits = getattr(out, "logits", None)
    return [logits] if isinstance(logits, torch.Tensor) else []


def tied_modules(model: nn.Module) -> list[nn.Module]:
    """Modules holding a parameter that another module holds too (``head.weight is
    embed.weight``): removing channels from either would untie them, so neither is touched."""
    owners: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(id(param), []).append(module)
    return list({id(m): m for ms in owners.values() if len(ms) > 1 for m in ms}.values())


HEAD_ATTRS = ("attention_head_size", "head_dim", "num_attention_heads", "num_heads")


def attention_projections(model: nn.Module) -> list[nn.Module]:
    """The ``nn.Linear`` children of every attention module written as such (one with an
    ``attention_head_size``, ``head_dim`` or head count: Hugging Face self- and
    cross-attention). Their widths are heads × head size; Torch-Pruning would shrink them
    channel by channel, leaving the head size the module reshapes by wrong, so only
    ``heads`` changes them."""
    return [
        child
        for module in _attention_like(model)
        for child in module.children()
        if isinstance(child, nn.Linear)
    ]


def _attention_like(model: nn.Module) -> list[nn.Module]:
    """Modules that say they are attention (a head count or size) and are not
    ``nn.MultiheadAttention``, whose heads :func:`prune_heads` handles."""
    return [
        module
        for module in model.modules()
        if not isinstance(module, (*ATTENTION, PrunedMultiheadAttention))
        and any(isinstance(getattr(module, a, None), int) for a in HEAD_ATTRS)
    ]


def _frozen(model: nn.Module) -> list[nn.Module]:
    """Layers no channel group may touch at all, input side included: tied layers."""
    return tied_modules(model)


def _ignored(model: nn.Module, config: StructuredPruneConfig) -> list[nn.Module]:
    """Layers whose outputs Torch-Pruning must not shrink: the recipe's ``ignore`` and the
    output layer; embedding tables (never pruned); attention, whose width ``heads``
    governs (BERT-style q/k/v and attention output included); FFN up-projections when
    ``ffn`` governs them; recurrent layers (their inputs may shrink, their hidden state
    not); and tied layers."""
    layers = compressible_layers(model)
    names = set(resolve_layer_map(dict.fromkeys(config.ignore, True), layers, what="layer to keep"))
    if config.ignore_output and layers:
        names.add(list(layers)[-1])
    kept = [
        m
        for m in model.modules()
        if isinstance(m, (*ATTENTION, PrunedMultiheadAttention, nn.Embedding, nn.RNNBase))
    ]
    for layer in bert_layers(model).values():
        kept.append(layer.attention.output.dense)
    kept += attention_projections(model)
    ffn = ffn_up_layers(model) if config.ffn > 0 else []
    return list(
        {id(m): m for m in [layers[n] for n in names] + kept + ffn + _frozen(model)}.values()
    )


def group_ratios(config: StructuredPruneConfig, layer_names: list[str]) -> dict[str, float]:
    """Per-layer ratios: explicit ``group_ratios`` win over ``ratio`` × ``group_multipliers``."""
    scaled = {
        n: min(config.ratio * m, 0.95)
        for n, m in resolve_layer_map(config.group_multipliers, layer_names).items()
    }
    return scaled | resolve_layer_map(config.group_ratios, layer_names, what="layer group")


# Layer classes Torch-Pruning 1.6 cannot shrink, with what to do instead. transformers'
# ``Conv1D`` (GPT-2 style, weight stored transposed) fails inside its tracer with a TypeError.
UNSUPPORTED_FOR_CHANNELS = {
    "Conv1D": "transformers' Conv1D layers (GPT-2 style) cannot lose channels; keep ratio 0",
}


def _unsupported(module_types: set[str] | frozenset[str]) -> str | None:
    found = sorted(set(UNSUPPORTED_FOR_CHANNELS) & set(module_types))
    return UNSUPPORTED_FOR_CHANNELS[found[0]] if found else None


def prune_channels(
    model: nn.Module, config: StructuredPruneConfig, importance: GroupImportance
) -> list:
    """Remove channels group by group with Torch-Pruning (in eval mode: tracing must not
    update BatchNorm statistics). Returns Torch-Pruning's history: (root layer, is-output,
    removed indices) per group, in the original numbering."""
    layers = compressible_layers(model)
    ratios = group_ratios(config, list(layers))
    if config.ratio == 0.0 and not any(ratios.values()):
        return []
    reason = _unsupported({type(m).__name__ for m in model.modules()})
    if reason:
        raise AutoslimError(f"structured pruning of {type(model).__name__}: {reason}")
    importance.frozen = {id(m) for m in _frozen(model)}
    recurrent = RecurrentInputPruner()
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _opaque_recurrent(model):
                pruner = tp.pruner.MetaPruner(
                    model,
                    example_input(model, config),
                    importance=importance,
                    pruning_ratio=config.ratio,
                    pruning_ratio_dict={layers[n]: r for n, r in ratios.items()},
                    ignored_layers=_ignored(model, config),
                    round_to=config.round_to,
                    global_pruning=False,
                    forward_fn=_trace_forward,
                    customized_pruners={
                        type(m): recurrent for m in model.modules() if isinstance(m, nn.RNNBase)
                    },
                )
            pruner.step()
            return pruner.pruning_history()
    except AutoslimError:
        raise
    except Exception as exc:  # noqa: BLE001 — tracing failures become one-line user errors
        detail = " ".join(str(exc).split())  # one line, however the tracer wrote it
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise AutoslimError(
            f"structured pruning (Torch-Pruning) failed on {type(model).__name__}: "
            f"{type(exc).__name__}: {detail} (list the layers it cannot handle in the "
            "stage's ignore, or prune with heads/ffn only)"
        ) from exc
    finally:
        model.train(was_training)


def prune_transformer(
    model: nn.Module, config: StructuredPruneConfig, scores: dict[str, torch.Tensor] | None
) -> dict[str, str]:
    """Heads (MHA and BERT-style) then FFN neurons; ``scores=None`` is the structural
    replay, which keeps the same counts. Returns what was skipped and why."""
    skipped: dict[str, str] = {}
    if config.heads > 0:
        prunable = [
            m
            for m in model.modules()
            if isinstance(m, (*ATTENTION, PrunedMultiheadAttention)) or is_bert_layer(m)
        ]
        if not prunable and _attention_like(model):
            skipped["heads"] = (
                "this attention's layout is not one heads prunes "
                "(nn.MultiheadAttention or BERT-style query/key/value)"
            )
        skipped |= prune_heads(model, config.heads, scores)
        skipped |= prune_bert_heads(model, config.heads, scores)
    if config.ffn > 0:
        if not ffn_up_layers(model) and _attention_like(model):
            skipped["ffn"] = (
                "this transformer's FFN layout is not one ffn prunes "
                "(nn.TransformerEncoderLayer or BERT-style intermediate/output)"
            )
        skipped |= prune_ffn(model, config.ffn, scores, config.round_to)
    return skipped


def _hidden_scores(
    model: nn.Module, config: StructuredPruneConfig, stats: GradStats
) -> dict[str, torch.Tensor]:
    """Scores of the residual stream's dimensions, traced in eval mode on the example."""
    was_training = model.training
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            example = example_input(model, config)
            return hidden_scores(model.eval(), config.importance, stats, example, _trace_forward)
    finally:
        model.train(was_training)


def prune_residual(
    model: nn.Module, config: StructuredPruneConfig, scores: dict[str, torch.Tensor] | None
) -> tuple[list[int] | None, dict[str, str]]:
    """``hidden`` of a BERT-style residual stream; a model without one (a CNN) is left
    alone, a transformer of another layout is reported skipped. ``scores=None`` is the
    structural replay. Returns the kept dimensions (None if none went) and skips."""
    if config.hidden <= 0:
        return None, {}
    if not bert_layers(model):
        if _attention_like(model) or any(
            isinstance(m, (*ATTENTION, PrunedMultiheadAttention)) for m in model.modules()
        ):
            return None, {"hidden": "this transformer's layout is not one hidden prunes"}
        return None, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prune_hidden(
            model,
            config.hidden,
            scores,
            example=example_input(model, config),
            forward=_trace_forward,
            tied=tied_modules(model),
            round_to=config.round_to,
            keep_output_width=config.ignore_output,
        )


def _tied_to_stream(info: ModelInfo) -> bool:
    """A BERT-style model (it has q projections) with a layer of the stream's input width
    whose weight another module shares: an output head tied to the word embeddings."""
    widths = {
        layer.shape[1] for layer in info.layers if layer.name.endswith("attention.self.query")
    }
    return any(
        layer.name in info.tied and len(layer.shape) == 2 and layer.shape[1] in widths
        for layer in info.layers
    )


def tie_groups(model: nn.Module) -> list[list[str]]:
    """Names of parameters that are one tensor (``head.weight`` and ``embed.weight``)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return sorted(group for group in names.values() if len(group) > 1)


def _check_ties(model: nn.Module, before: list[list[str]]) -> None:
    if tie_groups(model) != before:
        raise AutoslimError(
            f"structured pruning untied shared weights {before} of {type(model).__name__}; "
            "list those layers in the stage's ignore"
        )


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@register_handler(StructuredPruneConfig)
class StructuredPruneHandler(StageHandler[StructuredPruneConfig]):
    def apply(
        self, model: nn.Module, config: StructuredPruneConfig, ctx: ApplyContext
    ) -> nn.Module:
        expected = _shapes(self.rebuild(copy.deepcopy(model), config))
        ties = tie_groups(model)
        before = {n: m.weight.shape[0] for n, m in compressible_layers(model).items()}
        stats = GradStats(
            generator=torch.Generator().manual_seed(ctx.seed + 7919 * ctx.stage_index)
        )
        if get_criterion(config.importance).needs_grad:
            # A user's shuffling DataLoader draws its order from the global RNG: seed it
            # here, so the calibration samples (and the channels chosen) are the recipe's.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed + 7919 * ctx.stage_index)
                inputs, targets = ctx.task.data.train.take(config.calibration_samples)
            with on_training_device(model, ctx.task):
                stats = calibrate(model, inputs, targets, ctx.task.loss)
            stats = stats.to("cpu")
            stats.generator = torch.Generator().manual_seed(ctx.seed)
        scores = {
            name: head_scores(m, config.importance, stats)
            for name, m in model.named_modules()
            if isinstance(m, (*ATTENTION, PrunedMultiheadAttention))
        }
        if config.heads > 0 or config.ffn > 0:
            scores |= transformer_scores(model, config.importance, stats)
        if config.hidden > 0:
            scores |= _hidden_scores(model, config, stats)
        prune_channels(model, config, GroupImportance(config.importance, stats))
        skipped = prune_transformer(model, config, scores)
        kept, hidden_skipped = prune_residual(model, config, scores)
        skipped |= hidden_skipped
        if kept is not None:
            ctx.records["structured.hidden_kept"] = kept
        _check_ties(model, ties)
        if _shapes(model) != expected:
            raise AutoslimError(
                "structured pruning is not replayable for this model (rebuild gives other shapes)"
            )
        after = compressible_layers(model)
        ignored = {n for n, m in after.items() if m in _ignored(model, config)}
        wanted = {n: config.ratio for n in before} | group_ratios(config, list(before))
        for name, width in before.items():
            if (
                name in after
                and name not in ignored
                and after[name].weight.shape[0] == width
                and wanted[name] > 0
            ):
                skipped[name] = (
                    "no channels removed (unprunable group, e.g. one reaching an embedding, "
                    "attention, a recurrent state or a tied weight; or rounding)"
                )
        if skipped:
            log.info("structured pruning skipped: %s", skipped)
        ctx.records["structured.skipped"] = skipped
        ctx.fine_tune(model, epochs=config.fine_tune_epochs, lr=config.lr)
        return model

    def rebuild(self, model: nn.Module, config: StructuredPruneConfig) -> nn.Module:
        ties = tie_groups(model)
        structural = "bn_scale" if config.importance == "bn_scale" else "l1"
        prune_channels(model, config, GroupImportance(structural, GradStats()))
        prune_transformer(model, config, None)
        prune_residual(model, config, None)
        _check_ties(model, ties)
        return model

    def shortest_form(
        self, config: StructuredPruneConfig, same_structure: Callable[[StructuredPruneConfig], bool]
    ) -> StructuredPruneConfig:
        """The config an artifact ships: the default criterion and the fewest digits per
        fraction that still rebuild the same shapes (``same_structure`` checks a candidate).

        Why: a search draws ratios such as 0.7073 and 0.7085 that remove the same channels;
        their artifacts should be the same size, so the shipped text must not carry the digits
        that did not matter, nor the criterion that only chose which channels went.
        """
        default = StructuredPruneConfig.model_fields["importance"].default
        if config.importance != default and same_structure(
            config.model_copy(update={"importance": default})
        ):
            config = config.model_copy(update={"importance": default})
        for field in ("ratio", "heads", "ffn", "hidden"):
            for shorter in _fewer_digits(getattr(config, field)):
                if same_structure(candidate := config.model_copy(update={field: shorter})):
                    config = candidate
                    break
        for field in ("group_ratios", "group_multipliers"):
            for key, value in getattr(config, field).items():
                for shorter in _fewer_digits(value):
                    values = getattr(config, field) | {key: shorter}
                    if same_structure(candidate := config.model_copy(update={field: values})):
                        config = candidate
                        break
        return config


def _fewer_digits(value: float) -> list[float]:
    """``value`` rounded to 1, 2 and 3 decimals, where that changes it (shortest first)."""
    shorter = []
    for digits in (1, 2, 3):
        rounded = round(value, digits)
        if rounded == value:
            break
        shorter.append(rounded)
    return shorter


def head_prunable(model: nn.Module) -> bool:
    """Whether ``heads`` can remove anything: the model has ``nn.MultiheadAttention`` or
    BERT-style self-attention."""
    return bool(bert_layers(model)) or any(
        isinstance(m, (*ATTENTION, PrunedMultiheadAttention)) for m in model.modules()
    )


def other_attention(model: nn.Module) -> list[tuple[str, str]]:
    """(name, class) of attention-like modules (they count their heads) that ``heads``
    cannot prune: a timm ``Attention`` with its fused ``qkv`` Linear, for one."""
    read = {f"{name}.attention.self" for name in bert_layers(model)}
    return [
        (name, type(m).__name__)
        for name, m in model.named_modules()
        if any(isinstance(getattr(m, a, None), int) for a in HEAD_COUNTS)
        and not isinstance(m, (*ATTENTION, PrunedMultiheadAttention))
        and name not in read
    ]


HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads")


class StructuredPruneSpace(ComponentSpec):
    """Search dimensions: channel ratio, per-group multipliers, head, FFN and hidden-size
    fractions, criterion, channel rounding, fine-tune epochs and learning rate."""

    type: Literal["prune.structured"] = "prune.structured"
    name: str = "structured"
    ratio: FloatRange = FloatRange(low=0.0, high=0.7)
    group_multipliers: dict[str, FloatRange] = Field(default_factory=dict)
    heads: FloatRange = FloatRange(low=0.0, high=0.0)
    ffn: FloatRange = FloatRange(low=0.0, high=0.0)
    hidden: FloatRange = FloatRange(low=0.0, high=0.0)
    importance: list[CriterionName] = Field(default=["l1"], min_length=1)
    round_to: list[int] = Field(default=[1], min_length=1)
    ignore: list[str] = Field(default_factory=list)
    input_shape: list[int] | None = None
    fine_tune_epochs: IntRange = IntRange(low=0, high=3)
    lr: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)

    def _pick(self, trial: optuna.Trial, key: str, choices: list) -> object:
        return (
            choices[0]
            if len(choices) == 1
            else trial.suggest_categorical(f"{self.name}.{key}", choices)
        )

    def model_notes(self, model: nn.Module) -> list[str]:
        notes = []
        if self.heads.high > 0 and not head_prunable(model):
            others = other_attention(model)
            unread = f"; {others[0][0]} ({others[0][1]}) is neither" if others else ""
            notes.append(
                f"{self.name}: heads does nothing on this model: it removes heads of "
                f"nn.MultiheadAttention and BERT-style self-attention{unread}"
            )
        if self.ffn.high > 0 and not ffn_pairs(model):
            notes.append(
                f"{self.name}: ffn does nothing on this model: it removes FFN neurons of "
                "nn.TransformerEncoderLayer and BERT-style layers"
            )
        return notes

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> StructuredPruneConfig | None:
        if "bn_scale" in self.importance and not (
            info.has_module("BatchNorm") or info.has_module("Attention")
        ):
            # bn_scale scores channels by BatchNorm scales (heads fall back to L1): here it
            # scores nothing, so every bn_scale trial would ship the unpruned model.
            raise AutoslimError(
                f"{self.name}: importance bn_scale scores BatchNorm scales, and the model "
                "has no BatchNorm layer (drop bn_scale from importance)"
            )
        reason = _unsupported(info.module_types)
        if reason and (self.ratio.high > 0 or self.group_multipliers):
            raise AutoslimError(f"{self.name}: {reason} (ratio: {{low: 0.0, high: 0.0}})")
        if self.hidden.high > 0 and _tied_to_stream(info):
            raise AutoslimError(
                f"{self.name}: hidden cannot narrow a residual stream whose word embeddings "
                "are tied to an output head (hidden: {low: 0.0, high: 0.0})"
            )
        if not self.enabled(trial):
            return None
        n = self.name
        multipliers = {
            key: rng.suggest(trial, f"{n}.mult.{key}")
            for key, rng in self.group_multipliers.items()
        }
        epochs = self.fine_tune_epochs.suggest(trial, f"{n}.fine_tune_epochs")
        return StructuredPruneConfig(
            ratio=self.ratio.suggest(trial, f"{n}.ratio"),
            group_multipliers=multipliers,
            heads=self.heads.suggest(trial, f"{n}.heads"),
            ffn=self.ffn.suggest(trial, f"{n}.ffn"),
            hidden=self.hidden.suggest(trial, f"{n}.hidden"),
            importance=self._pick(trial, "importance", self.importance),
            round_to=self._pick(trial, "round_to", self.round_to),
            ignore=self.ignore,
            input_shape=self.input_shape,
            fine_tune_epochs=epochs,
            lr=self.lr.suggest(trial, f"{n}.lr") if epochs > 0 else StructuredPruneConfig().lr,
        )
