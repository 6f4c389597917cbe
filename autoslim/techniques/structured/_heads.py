"""Head and FFN-neuron removal for BERT-style ``transformers`` layers (and FFN neurons of
``nn.TransformerEncoderLayer``), by slicing the weights so the model really shrinks.

Which layers: any module shaped like transformers' ``BertLayer`` (``attention.self`` with
``query``/``key``/``value``, ``attention.output.dense``, ``intermediate.dense``,
``output.dense``, all ``nn.Linear``). Matching the shape rather than the class also
covers the families that copy BERT's layout (RoBERTa, ELECTRA, ...). Checked on
transformers 5.24: ``BertSelfAttention.forward`` views q/k/v as ``(-1, attention_head_size)``
and reshapes the context to ``(..., -1)``, so a layer with fewer heads runs as is; we still
update ``num_attention_heads`` and ``all_head_size`` so the module describes itself.
``config.num_attention_heads`` is shared by every layer and is left alone.

Why our own slicing: transformers 5.x removed ``PreTrainedModel.prune_heads`` and
``find_pruneable_heads_and_indices``; ``transformers.pytorch_utils`` keeps only
``prune_linear_layer``. That helper builds a fresh ``nn.Linear`` (its random init draws
from the global RNG, only to be overwritten) in the default dtype, not the layer's, and
replaces the module. Slicing the parameters of the existing ``nn.Linear`` in place keeps
module identity, dtype, device and the RNG untouched, in a few lines.

Replay: heads and neurons are removed per layer, ``heads`` / ``ffn`` of each, so the
*number* kept per layer depends only on the recipe and the architecture. Kept slices are
packed in their original order, and the artifact's state_dict overwrites every weight, so
:func:`prune_bert_heads` / :func:`prune_ffn` without scores (drop the last ones) rebuild
exactly the shapes the artifact was saved with; the indices themselves need no recording.
A global ranking would make per-layer counts depend on trained weights, which a frozen
recipe cannot carry, so (as for channels) it is not offered.
"""

from __future__ import annotations

import torch
from torch import nn

from autoslim.techniques.prune.importance import Criterion, GradStats, channel_scores, get_criterion

_BERT_LINEARS = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)


def _attr(module: nn.Module, path: str) -> object:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def is_bert_layer(module: nn.Module) -> bool:
    """True for a module laid out like transformers' ``BertLayer`` (self-attention only)."""
    return all(isinstance(_attr(module, p), nn.Linear) for p in _BERT_LINEARS) and hasattr(
        _attr(module, "attention.self"), "attention_head_size"
    )


def bert_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if is_bert_layer(m)}


def ffn_pairs(model: nn.Module) -> dict[str, tuple[nn.Linear, nn.Linear]]:
    """Each transformer block's (up, down) FFN projections: neuron i is up's row i and
    down's column i, and nothing else reads it, so removing both is exact."""
    pairs: dict[str, tuple[nn.Linear, nn.Linear]] = {}
    for name, m in model.named_modules():
        if is_bert_layer(m):
            pairs[name] = (m.intermediate.dense, m.output.dense)
        elif isinstance(m, nn.TransformerEncoderLayer):
            pairs[name] = (m.linear1, m.linear2)
    return pairs


def count_to_remove(total: int, fraction: float, round_to: int | None = None) -> int:
    """How many of ``total`` heads or neurons go: at least one always stays, and with
    ``round_to`` the kept count is rounded down to a multiple of it (efficient kernels)."""
    if fraction <= 0.0:
        return 0
    keep = total - min(int(round(fraction * total)), total - 1)
    if round_to and round_to > 1 and keep >= round_to:
        keep -= keep % round_to
    return total - keep


def _criterion(name: str) -> Criterion:
    # bn_scale scores BatchNorm only; transformer blocks have none: L1 stands in, as for MHA.
    return get_criterion("l1" if name == "bn_scale" else name)


def bert_head_scores(layer: nn.Module, criterion_name: str, stats: GradStats) -> torch.Tensor:
    """Sum of element scores over each head's q/k/v rows and attention-output columns."""
    crit, attn = _criterion(criterion_name), layer.attention
    heads = attn.self.num_attention_heads
    qkv = (attn.self.query, attn.self.key, attn.self.value)
    rows = sum(channel_scores(lin.weight, crit, stats, dim=0) for lin in qkv)
    cols = channel_scores(attn.output.dense.weight, crit, stats, dim=1)
    return rows.view(heads, -1).sum(1) + cols.view(heads, -1).sum(1)


def ffn_scores(
    up: nn.Linear, down: nn.Linear, criterion_name: str, stats: GradStats
) -> torch.Tensor:
    """Sum of element scores over each neuron's up row and down column."""
    crit = _criterion(criterion_name)
    return channel_scores(up.weight, crit, stats, dim=0) + channel_scores(
        down.weight, crit, stats, dim=1
    )


def transformer_scores(
    model: nn.Module, criterion_name: str, stats: GradStats
) -> dict[str, torch.Tensor]:
    """Head scores (key ``NAME.heads``) and FFN scores (``NAME.ffn``), taken before any
    removal: gradient statistics are keyed by the parameters that removal replaces."""
    scores = {
        f"{n}.heads": bert_head_scores(m, criterion_name, stats)
        for n, m in bert_layers(model).items()
    }
    for name, (up, down) in ffn_pairs(model).items():
        scores[f"{name}.ffn"] = ffn_scores(up, down, criterion_name, stats)
    return scores


@torch.no_grad()
def slice_linear(layer: nn.Linear, keep: torch.Tensor, dim: int) -> None:
    """Keep only the indices ``keep`` along ``dim`` (0: outputs, 1: inputs), in place."""
    grad = layer.weight.requires_grad
    layer.weight = nn.Parameter(layer.weight.index_select(dim, keep).clone(), grad)
    if dim == 0:
        layer.out_features = len(keep)
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias[keep].clone(), layer.bias.requires_grad)
    else:
        layer.in_features = len(keep)


def keep_bert_heads(layer: nn.Module, keep: list[int]) -> None:
    """Shrink a BERT-style layer's self-attention to the heads in ``keep`` (original order)."""
    attn = layer.attention
    d = attn.self.attention_head_size
    cols = torch.cat([torch.arange(h * d, (h + 1) * d) for h in sorted(keep)])
    for lin in (attn.self.query, attn.self.key, attn.self.value):
        slice_linear(lin, cols, dim=0)
    slice_linear(attn.output.dense, cols, dim=1)
    attn.self.num_attention_heads = len(keep)
    attn.self.all_head_size = len(keep) * d


def keep_ffn_neurons(up: nn.Linear, down: nn.Linear, keep: list[int]) -> None:
    idx = torch.tensor(sorted(keep), dtype=torch.long)
    slice_linear(up, idx, dim=0)
    slice_linear(down, idx, dim=1)


def _kept(total: int, drop: int, scores: torch.Tensor | None) -> list[int]:
    """The indices that stay: all but the ``drop`` lowest-scoring (the last ones without
    scores, which is all :meth:`rebuild` needs, since only the count shapes the layer)."""
    last_first = torch.arange(total).flip(0)
    order = last_first if scores is None else torch.argsort(scores, stable=True)
    return sorted(set(range(total)) - set(order[:drop].tolist()))


def _score(scores: dict[str, torch.Tensor] | None, key: str) -> torch.Tensor | None:
    return scores[key] if scores else None


def prune_bert_heads(
    model: nn.Module, fraction: float, scores: dict[str, torch.Tensor] | None
) -> dict[str, str]:
    """Drop the lowest-scoring ``fraction`` of heads in every BERT-style layer; returns skips."""
    skipped: dict[str, str] = {}
    for name, layer in bert_layers(model).items():
        total = layer.attention.self.num_attention_heads
        drop = count_to_remove(total, fraction)
        if drop == 0:
            skipped[f"{name}.attention"] = f"{fraction:.0%} of {total} heads rounds to none"
            continue
        keep_bert_heads(layer, _kept(total, drop, _score(scores, f"{name}.heads")))
    return skipped


def prune_ffn(
    model: nn.Module,
    fraction: float,
    scores: dict[str, torch.Tensor] | None,
    round_to: int | None = None,
) -> dict[str, str]:
    """Drop the lowest-scoring ``fraction`` of FFN neurons in every transformer block."""
    skipped: dict[str, str] = {}
    for name, (up, down) in ffn_pairs(model).items():
        drop = count_to_remove(up.out_features, fraction, round_to)
        if drop == 0:
            skipped[f"{name}.ffn"] = f"{fraction:.0%} of {up.out_features} neurons rounds to none"
            continue
        keep_ffn_neurons(up, down, _kept(up.out_features, drop, _score(scores, f"{name}.ffn")))
    return skipped


def ffn_up_layers(model: nn.Module) -> list[nn.Module]:
    """Up projections that Torch-Pruning must leave alone when ``ffn`` governs FFN width."""
    return [up for up, _ in ffn_pairs(model).values()]
