"""Residual-stream ("hidden size") removal for BERT-style ``transformers`` encoders.

Which widths: every layer reading or writing the residual stream: the word, position and
token-type embeddings' dim, the embeddings' LayerNorm and each block's two LayerNorms,
q/k/v ``in_features``, the attention output's and FFN output's ``out_features``, the FFN
up-projection's ``in_features``, the pooler's input (and, as a second group of the same
size, its output with the classifier's input: Hugging Face sizes them all by
``config.hidden_size``). Torch-Pruning's dependency graph, traced on the task's example
inputs, couples them: the residual adds tie every block to the embeddings, so one group
covers the stream. It is rooted at the first block's attention output, which lies on the
stream in every BERT-style layout; with the embeddings' dim equal to the stream's (BERT,
MiniLM) that is the group the word embedding roots, and a factorised embedding (ALBERT,
ELECTRA's ``embeddings_project``) keeps its own width.

What Torch-Pruning does not know, fixed here: ``config.hidden_size`` (kept true, as
:mod:`._depth` keeps ``num_hidden_layers``). ``LayerNorm.normalized_shape`` it updates
itself. Attention is untouched: ``BertSelfAttention`` views q/k/v by
``attention_head_size`` and reads no hidden size at forward time, and ``hidden`` changes
no head, so ``all_head_size``/``attention_head_size`` stay. A consequence:
``BertConfig`` derives the head size from ``hidden_size / num_attention_heads``, so a
model built from the pruned config alone would get other attention widths; artifacts are
rebuilt from the recipe, never from that config.

Output width: where the stream itself is the model's output (a sentence encoder pooling
``last_hidden_state``, such as MiniLM), narrowing it would change what the model returns
and break a loss against full-width targets. With ``ignore_output`` (the default, "the
output keeps its width"), the stream's last LayerNorm is wrapped by :class:`WidthRestore`,
which puts the kept dimensions back in their places and zeros in the removed ones.

Replay: as for heads, the *number* removed depends only on the recipe and the width, and
:func:`prune_hidden` without scores drops the last dimensions; the artifact's state_dict
overwrites every weight and :class:`WidthRestore`'s index buffer, so a rebuild loads
exactly. The kept indices go to ``ctx.records["structured.hidden_kept"]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch.nn import functional as F

from autoslim.errors import AutoslimError
from autoslim.techniques.prune.importance import GradStats, channel_scores, element_scores
from autoslim.techniques.structured._heads import _criterion, bert_layers, count_to_remove

RESIDUAL = "hidden"  # scores key of the residual stream's group

Forward = Callable[[nn.Module, Any], list[torch.Tensor]]


class WidthRestore(nn.Module):
    """The stream's last LayerNorm, its output put back at the model's original width.

    ``source[i]`` is the narrowed dimension that original dimension ``i`` reads, or the
    zero slot appended at the end for a removed one: a gather, so export sees one
    indexing op. The buffer is persistent, so an artifact carries which dimensions stayed.
    """

    def __init__(self, norm: nn.Module, source: torch.Tensor) -> None:
        super().__init__()
        self.norm = norm
        self.register_buffer("source", source)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(self.norm(x), (0, 1)).index_select(-1, self.source)


def _restore_source(kept: list[int], width: int) -> torch.Tensor:
    source = torch.full((width,), len(kept), dtype=torch.long)
    source[torch.tensor(kept, dtype=torch.long)] = torch.arange(len(kept))
    return source


def residual_width(model: nn.Module) -> int | None:
    """The stream's width (the first BERT-style block's q input), or None without one."""
    layers = list(bert_layers(model).values())
    return layers[0].attention.self.query.in_features if layers else None


def _pooler_denses(model: nn.Module, width: int) -> dict[str, nn.Linear]:
    """Square ``dense`` layers of pooler modules: Hugging Face sizes their output by
    ``hidden_size`` too, though it is not the stream (it feeds the classifier)."""
    return {
        f"{name}.dense": m.dense
        for name, m in model.named_modules()
        if "Pooler" in type(m).__name__
        and isinstance(getattr(m, "dense", None), nn.Linear)
        and m.dense.in_features == m.dense.out_features == width
    }


def _trace(model: nn.Module, example: Any, forward: Forward) -> tp.DependencyGraph:
    return tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=forward)


def _root(model: nn.Module) -> nn.Linear:
    return next(iter(bert_layers(model).values())).attention.output.dense


def _groups(
    graph: tp.DependencyGraph, model: nn.Module, width: int, drop: dict[str, list[int]]
) -> dict[str, tp.dependency.Group]:
    """The stream's group and each pooler's output group, removing ``drop[key]``."""
    groups = {
        RESIDUAL: graph.get_pruning_group(
            _root(model), tp.prune_linear_out_channels, idxs=drop[RESIDUAL]
        )
    }
    for name, dense in _pooler_denses(model, width).items():
        groups[name] = graph.get_pruning_group(dense, tp.prune_linear_out_channels, drop[name])
    return groups


def _layer_scores(layer: nn.Module, fn: Any, criterion_name: str, stats: GradStats) -> Any:
    """One layer's score per channel of the group, or None for ops without weights."""
    crit = _criterion(criterion_name)
    if fn == tp.prune_linear_out_channels:
        return channel_scores(layer.weight, crit, stats, dim=0)
    if fn in (tp.prune_linear_in_channels, tp.prune_embedding_out_channels):
        return channel_scores(layer.weight, crit, stats, dim=1)
    if fn == tp.prune_layernorm_out_channels and layer.elementwise_affine:
        return element_scores(layer.weight, crit, stats)
    return None


def group_scores(
    group: tp.dependency.Group, width: int, criterion_name: str, stats: GradStats
) -> torch.Tensor:
    """Each channel's score summed over every layer of the group (all channels in ``group``)."""
    total = torch.zeros(width)
    for i, (dep, idxs) in enumerate(group):
        scores = _layer_scores(dep.layer, dep.pruning_fn, criterion_name, stats)
        if scores is not None:
            total.scatter_add_(0, torch.tensor(group[i].root_idxs), scores[idxs].float())
    return total


def hidden_scores(
    model: nn.Module, criterion_name: str, stats: GradStats, example: Any, forward: Forward
) -> dict[str, torch.Tensor]:
    """Scores of the stream's dimensions (key ``hidden``) and each pooler's outputs, taken
    before any removal: gradient statistics are keyed by the parameters removal replaces."""
    width = residual_width(model)
    if width is None:
        return {}
    graph = _trace(model, example, forward)
    everything = dict.fromkeys([RESIDUAL, *_pooler_denses(model, width)], list(range(width)))
    return {
        key: group_scores(group, width, criterion_name, stats)
        for key, group in _groups(graph, model, width, everything).items()
    }


def _kept(width: int, drop: int, scores: torch.Tensor | None) -> list[int]:
    order = torch.arange(width).flip(0) if scores is None else torch.argsort(scores, stable=True)
    return sorted(set(range(width)) - set(order[:drop].tolist()))


def _sync_hidden_size(model: nn.Module, old: int, new: int) -> None:
    """Keep ``config.hidden_size`` true to the stream, on every sub-model sharing the config."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(config, "hidden_size", None) == old:
            config.hidden_size = new


def _output_shapes(model: nn.Module, example: Any, forward: Forward) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in forward(model, example)]


def _recording(forward: Forward, shapes: list[tuple[int, ...]]) -> Forward:
    """``forward`` noting the output shapes, so the trace's own run tells them."""

    def run(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
        outputs = forward(model, inputs)
        shapes[:] = [tuple(t.shape) for t in outputs]
        return outputs

    return run


def _restore_output_width(
    model: nn.Module,
    group: tp.dependency.Group,
    kept: list[int],
    width: int,
    check: Callable[[], bool],
) -> None:
    """Wrap the stream's last LayerNorm in :class:`WidthRestore`; ``check`` confirms the
    outputs have their old shapes again (a pooler reading the restored stream would not)."""
    norms = {id(dep.layer) for dep, _ in group if isinstance(dep.layer, nn.LayerNorm)}
    name, norm = [(n, m) for n, m in model.named_modules() if id(m) in norms][-1]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, WidthRestore(norm, _restore_source(kept, width)))
    try:
        ok = check()
    except RuntimeError:
        ok = False
    if not ok:
        raise AutoslimError(
            f"hidden narrows the output of {type(model).__name__} and its width cannot be "
            "restored at the residual stream's end (set the stage's ignore_output to false "
            "to let the output narrow, or keep hidden 0)"
        )


def _refusal(model: nn.Module, group: tp.dependency.Group, tied: list[nn.Module]) -> str | None:
    if any(isinstance(m, WidthRestore) for m in model.modules()):
        return "the residual stream was narrowed by an earlier stage"
    tied_ids = {id(m) for m in tied}
    if any(id(dep.layer) in tied_ids for dep, _ in group):
        raise AutoslimError(
            f"hidden cannot narrow {type(model).__name__}'s residual stream: a layer on it "
            "shares its weight (an output head tied to the word embeddings); keep hidden 0"
        )
    return None


def prune_hidden(
    model: nn.Module,
    fraction: float,
    scores: dict[str, torch.Tensor] | None,
    *,
    example: Any,
    forward: Forward,
    tied: list[nn.Module],
    round_to: int | None = None,
    keep_output_width: bool = True,
) -> tuple[list[int] | None, dict[str, str]]:
    """Remove the lowest-scoring ``fraction`` of the stream's dimensions (the last ones
    without scores). Returns the kept dimensions (None if nothing was removed) and skips."""
    width = residual_width(model)
    if width is None or fraction <= 0.0:
        return None, {}
    drop = count_to_remove(width, fraction, round_to)
    if drop == 0:
        return None, {RESIDUAL: f"{fraction:.0%} of {width} dimensions rounds to none"}
    was_training = model.training
    model.eval()
    try:
        before: list[tuple[int, ...]] = []
        graph = _trace(model, example, _recording(forward, before))
        kept = {
            key: _kept(width, drop, scores.get(key) if scores else None)
            for key in [RESIDUAL, *_pooler_denses(model, width)]
        }
        removed = {key: sorted(set(range(width)) - set(k)) for key, k in kept.items()}
        groups = _groups(graph, model, width, removed)
        reason = _refusal(model, groups[RESIDUAL], tied)
        if reason:
            return None, {RESIDUAL: reason}
        for group in groups.values():
            group.prune()
        _sync_hidden_size(model, width, width - drop)
        if keep_output_width and _output_shapes(model, example, forward) != before:
            _restore_output_width(
                model,
                groups[RESIDUAL],
                kept[RESIDUAL],
                width,
                lambda: _output_shapes(model, example, forward) == before,
            )
    finally:
        model.train(was_training)
    return kept[RESIDUAL], {}
