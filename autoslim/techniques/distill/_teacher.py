"""The teacher side of distillation: probes that capture intermediate values, and
teacher outputs cached per sample.

Inputs may be a tensor, a tuple or a dict of tensors (:mod:`autoslim.data`), and the
train split may be streamed from a user's loader that does not fit in memory, so the
cache never reads the split by itself. It fills lazily from the batches training feeds
the loss: each row is keyed by a digest of its bytes (every tensor of the row, with its
name, dtype and shape; the shuffle order changes every epoch and stage, so per-batch keys
would never hit), rows the teacher has already labelled are looked up, the others are
labelled by running the teacher on them, and new rows are kept until the cache holds
``max_bytes``. Past that it keeps what it has and the teacher runs for everything else.

A cache belongs to one :class:`~autoslim.techniques.distill.Distiller`, so to one
application of a recipe: what it holds depends only on the recipe, seed and data, and a
replay fills it the same way, which keeps replay deterministic.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from autoslim.data import batch_len, call_model, first_tensor, map_tensors
from autoslim.errors import AutoslimError
from autoslim.techniques.distill import _losses as L

INPUT_SUFFIX = ":input"
MAX_CACHE_BYTES = 256 * 2**20  # beyond this the teacher runs per batch instead
ROW_OVERHEAD = 64  # bytes counted per cached row for its key and index entry

# ---- probes: named intermediate values captured by forward hooks ----


def _is_mha(module: nn.Module) -> bool:
    """``nn.MultiheadAttention`` and its pruned stand-in: packed q/k/v in-projection."""
    return hasattr(module, "num_heads") and (
        hasattr(module, "in_proj_weight") or hasattr(module, "in_proj")
    )


# Hugging Face self-attention layouts, as (query Linear, key Linear, head-count attribute):
# BERT/RoBERTa/ELECTRA (and ViT in transformers 4), DistilBERT, ViT as of transformers 5.25.
# Matched on structure rather than class names, so the families that copy a layout are
# covered, and only the innermost module (BertSelfAttention, not BertAttention) matches.
_HF_LAYOUTS = (
    ("query", "key", "num_attention_heads"),
    ("q_lin", "k_lin", "n_heads"),
    ("q_proj", "k_proj", "num_attention_heads"),
)


def _hf_projections(module: nn.Module) -> tuple[nn.Linear, nn.Linear, int] | None:
    """The (query, key, head count) of a Hugging Face self-attention module, else None.

    Read at each call: head pruning shrinks ``query``/``key`` and updates the count."""
    for q_name, k_name, heads_name in _HF_LAYOUTS:
        q, k = getattr(module, q_name, None), getattr(module, k_name, None)
        heads = getattr(module, heads_name, None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear) and isinstance(heads, int):
            return q, k, heads
    return None


def _is_attention(module: nn.Module) -> bool:
    return _is_mha(module) or _hf_projections(module) is not None


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a module's input or output means: itself, the first element of a tuple,
    or the first tensor of a dict-like output (Hugging Face's ``ModelOutput``)."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    return None


def _probe_value(
    name: str, module: nn.Module, mode: str, args: tuple, kwargs: dict, output: Any
) -> torch.Tensor:
    if mode == "attention" and _hf_projections(module) is not None:
        return _hf_attention_probs(name, module, _arguments(module, args, kwargs))
    if mode in ("input", "attention"):
        value = _first_tensor(args) if args else _first_tensor(list(kwargs.values()))
    else:
        value = _first_tensor(output)
    if value is None:
        what = "input" if mode != "output" else "output"
        raise AutoslimError(
            f"distill: layer {name!r} ({type(module).__name__}) has no tensor {what} to "
            "distil from; name another layer"
        )
    if mode == "attention":
        query = value if getattr(module, "batch_first", True) else value.transpose(0, 1)
        weight = (
            module.in_proj_weight if hasattr(module, "in_proj_weight") else module.in_proj.weight
        )
        bias = module.in_proj_bias
        return L.attention_probs(query, weight, bias, module.num_heads)
    return value


# ---- Hugging Face self-attention maps, recomputed from the layer's input ----


def _arguments(module: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """A forward call's arguments by parameter name: Hugging Face layers take the mask
    by keyword in one model and by position in another."""
    try:
        names = [
            p.name
            for p in inspect.signature(module.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):  # no signature to read: keyword arguments only
        names = []
    named = dict(zip(names, args, strict=False)) | kwargs
    if args and names[:1] != ["hidden_states"]:
        named.setdefault("hidden_states", args[0])
    return named


def _refuse(name: str, module: nn.Module, why: str) -> AutoslimError:
    return AutoslimError(
        f"distill: attention layer {name!r} ({type(module).__name__}) {why}; set "
        "attention_weight to 0 or name other attention_layers"
    )


def _hf_mask(
    name: str, module: nn.Module, named: dict[str, Any], hidden: torch.Tensor, heads: int
) -> torch.Tensor | None:
    """The mask the layer applies, broadcastable to (batch, heads, L, L), or None.

    Transformers 5 passes ``attention_mask`` as a (batch, 1, L, L) additive float (eager)
    or bool (SDPA, True = attend) mask, and None when nothing is padded."""
    unread = [k for k, v in named.items() if "mask" in k and k != "attention_mask"]
    unread = [k for k in unread if named[k] is not None]
    if unread:
        raise _refuse(name, module, f"takes a mask as {unread[0]!r}, which is not read")
    mask = named.get("attention_mask")
    if mask is None:
        return _implicit_causal_mask(module, named, hidden)
    batch, length = hidden.shape[:2]
    _check_mask(name, module, mask, (batch, heads, length, length))
    return mask


def _implicit_causal_mask(
    module: nn.Module, named: dict[str, Any], hidden: torch.Tensor
) -> torch.Tensor | None:
    """SDPA makes a causal layer causal by itself when it is given no mask, so a decoder's
    mask may never be passed: the causal (L, L) mask then, else None."""
    causal = named.get("is_causal")
    if causal is None:
        causal = getattr(module, "is_causal", False)
    if not causal:
        return None
    length = hidden.shape[1]
    return torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()


def _check_mask(name: str, module: nn.Module, mask: Any, target: tuple[int, ...]) -> None:
    """Refuse masks whose meaning is a guess: integer 0/1 masks (keep, or additive?),
    and fewer than four axes (which axis is the batch?)."""
    if (
        isinstance(mask, torch.Tensor)
        and (mask.dtype == torch.bool or mask.dtype.is_floating_point)
        and mask.dim() == 4
        and _broadcasts(mask.shape, target)
    ):
        return
    what = (
        f"{mask.dtype} mask of shape {tuple(mask.shape)}"
        if isinstance(mask, torch.Tensor)
        else type(mask).__name__
    )
    raise _refuse(
        name,
        module,
        f"got an attention mask it cannot read ({what}; readable: a 4-D bool or additive "
        f"float mask broadcastable to {target})",
    )


def _broadcasts(shape: torch.Size, target: tuple[int, ...]) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _hf_attention_probs(name: str, module: nn.Module, named: dict[str, Any]) -> torch.Tensor:
    """Head-averaged probabilities (batch, L, L) from the layer's input, its own query
    and key projections and the mask it received, whatever kernel the model runs."""
    q, k, heads = _hf_projections(module)
    hidden = named.get("hidden_states")
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise _refuse(name, module, "has no (batch, length, width) hidden-state input")
    # Keys from other states (cross-attention) or rotated by position (RoPE) would make
    # a map recomputed from the hidden states alone wrong.
    for arg in ("encoder_hidden_states", "key_value_states", "position_embeddings"):
        if named.get(arg) is not None:
            raise _refuse(
                name, module, f"is called with {arg}: its map is not its hidden states' alone"
            )
    if q.out_features != k.out_features or q.out_features % heads:
        raise _refuse(
            name,
            module,
            f"has query width {q.out_features} and key width {k.out_features} for {heads} "
            "heads (equal widths, divisible by the head count, are read)",
        )
    scale = getattr(module, "scaling", None)
    return L.projected_attention_probs(
        hidden,
        (q.weight, q.bias),
        (k.weight, k.bias),
        heads,
        scale=scale if isinstance(scale, float) else None,
        mask=_hf_mask(name, module, named, hidden, heads),
    )


@contextmanager
def capture(
    model: nn.Module, probes: dict[str, tuple[str, str]]
) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``{key: value}`` for probes ``{key: (layer name, mode)}`` during one forward.

    Hooks are added by name for each forward and removed after, so they survive stages
    that replace modules (head pruning, QAT) and are never part of the artifact. Inputs
    passed by keyword (as Hugging Face layers take them) are seen too.
    """
    values: dict[str, torch.Tensor] = {}
    handles = []
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for key, (name, mode) in probes.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise AutoslimError(f"distill: the model has no layer {name!r}") from None

            def hook(
                m: nn.Module,
                args: tuple,
                kwargs: dict,
                out: Any,
                key: str = key,
                name: str = name,
                mode: str = mode,
            ) -> None:
                values[key] = _probe_value(name, m, mode, args, kwargs, out)

            handles.append(module.register_forward_hook(hook, with_kwargs=True))
        torch.backends.mha.set_fastpath_enabled(False)  # the fused path skips self_attn's hooks
        yield values
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()


# ---- the teacher's forward pass ----


def _device_of(inputs: Any) -> torch.device:
    return first_tensor(inputs).device


def place(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` on ``device`` (moved only when one of its tensors is elsewhere)."""
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    if tensor is not None and tensor.device != device:
        module.to(device)
    return module


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, inputs: Any, probes: dict[str, tuple[str, str]]
) -> dict[str, torch.Tensor]:
    """The teacher's logits and probe values on ``inputs`` (a tensor, tuple or dict),
    run on the inputs' device (the teacher is moved there on first use)."""
    place(teacher, _device_of(inputs))
    with capture(teacher, probes) as values:
        logits = call_model(teacher, inputs)
    return {"logits": logits, **{k: v.detach() for k, v in values.items()}}


# ---- per-row keys ----


def _leaves(inputs: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``inputs`` with a stable name (dict keys sorted, tuple positions)."""
    if isinstance(inputs, torch.Tensor):
        yield prefix, inputs
    elif isinstance(inputs, dict):
        for key in sorted(inputs, key=str):
            yield from _leaves(inputs[key], f"{prefix}.{key}")
    elif isinstance(inputs, (tuple, list)):
        for i, value in enumerate(inputs):
            yield from _leaves(value, f"{prefix}[{i}]")


def row_keys(inputs: Any) -> list[bytes]:
    """A 16-byte digest per row of ``inputs`` (a tensor, tuple or dict of tensors) from
    every tensor's bytes, name, dtype and row shape; the tensors may be on any device."""
    n = batch_len(inputs)
    digests = [hashlib.blake2b(digest_size=16) for _ in range(n)]
    for name, tensor in _leaves(inputs):
        if tensor.dim() == 0 or len(tensor) != n:
            raise AutoslimError(
                f"distill: input {name or 'tensor'} of shape {tuple(tensor.shape)} is not "
                f"batched like the others ({n} rows)"
            )
        header = f"{name}|{tensor.dtype}|{tuple(tensor.shape[1:])}".encode()
        flat = tensor.detach().reshape(n, -1).contiguous()
        if flat.dtype == torch.bool:
            flat = flat.to(torch.uint8)
        data = flat.view(torch.uint8).cpu().numpy()
        for digest, row in zip(digests, data, strict=True):
            digest.update(header)
            digest.update(row.tobytes())
    return [d.digest() for d in digests]


# ---- the cache ----


class TeacherCache:
    """Teacher outputs per train row, keyed by the row's bytes, filled lazily up to
    ``max_bytes`` from the batches the loss sees (see the module doc)."""

    def __init__(self, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.blocks: list[dict[str, torch.Tensor]] = []  # rows stored together, per batch
        self.index: dict[bytes, tuple[int, int]] = {}  # row key -> (block, row in block)
        self.full = False  # the byte cap was reached: nothing more is stored
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, inputs: Any) -> dict[str, torch.Tensor] | None:
        """The cached outputs of every row of ``inputs``, or None if one is not cached."""
        found = [self.index.get(k) for k in row_keys(inputs)]
        if any(f is None for f in found):
            return None
        return self._gather(found, _device_of(inputs))

    def outputs(
        self, teacher: nn.Module, inputs: Any, probes: dict[str, tuple[str, str]]
    ) -> dict[str, torch.Tensor]:
        """The teacher's outputs on ``inputs``: cached rows looked up, the others computed
        by the teacher (and stored while the cache has room)."""
        if self.full and not self.index:
            return teacher_forward(teacher, inputs, probes)  # nothing cached: skip the keys
        keys = row_keys(inputs)
        found = [self.index.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        device = _device_of(inputs)
        if not missing:
            try:
                return self._gather(found, device)
            except RuntimeError:  # cached rows of other shapes cannot be joined: recompute
                return teacher_forward(teacher, inputs, probes)
        if len(missing) == len(keys):
            fresh = teacher_forward(teacher, inputs, probes)
        else:
            index = torch.tensor(missing, device=device)
            fresh = teacher_forward(teacher, map_tensors(inputs, lambda t: t[index]), probes)
        if not all(v.dim() > 0 and len(v) == len(missing) for v in fresh.values()):
            # A probe whose first axis is not the batch cannot be split into rows.
            self.full = True
            return fresh if len(missing) == len(keys) else teacher_forward(teacher, inputs, probes)
        self._store([keys[i] for i in missing], fresh)
        if len(missing) == len(keys):
            return fresh
        try:
            cached = self._gather([f for f in found if f is not None], device)
        except RuntimeError:  # cached rows of other shapes cannot be joined: recompute
            return teacher_forward(teacher, inputs, probes)
        if any(cached[k].shape[1:] != fresh[k].shape[1:] for k in fresh):
            return teacher_forward(teacher, inputs, probes)
        hit = torch.tensor([i for i, f in enumerate(found) if f is not None], device=device)
        miss = torch.tensor(missing, device=device)
        out = {}
        for name, value in fresh.items():
            merged = value.new_empty((len(keys), *value.shape[1:]))
            merged[miss] = value
            merged[hit] = cached[name].to(value.dtype)
            out[name] = merged
        return out

    def _store(self, keys: list[bytes], outputs: dict[str, torch.Tensor]) -> None:
        if self.full:
            return
        per_row = ROW_OVERHEAD + sum(v[0].numel() * v.element_size() for v in outputs.values())
        room = (self.max_bytes - self.bytes) // per_row
        new: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self.index and k not in new:
                new[k] = i
        take = list(new.values())[: max(room, 0)]
        if len(take) < len(new):
            self.full = True
        if not take:
            return
        rows = torch.tensor(take, device=next(iter(outputs.values())).device)
        block = len(self.blocks)
        self.blocks.append({k: v.detach()[rows].clone() for k, v in outputs.items()})
        for j, i in enumerate(take):
            self.index[keys[i]] = (block, j)
        self.bytes += per_row * len(take)

    def _gather(
        self, found: list[tuple[int, int]], device: torch.device
    ) -> dict[str, torch.Tensor]:
        by_block: dict[int, tuple[list[int], list[int]]] = {}
        for position, (block, row) in enumerate(found):
            positions, rows = by_block.setdefault(block, ([], []))
            positions.append(position)
            rows.append(row)
        if len(by_block) == 1:
            ((block, (_, rows)),) = by_block.items()
            index = torch.tensor(rows, device=self._device(block))
            return {k: v[index].to(device) for k, v in self.blocks[block].items()}
        parts = []
        order = []
        for block, (positions, rows) in by_block.items():
            index = torch.tensor(rows, device=self._device(block))
            parts.append({k: v[index].to(device) for k, v in self.blocks[block].items()})
            order.extend(positions)
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(device)
        return {k: torch.cat([p[k] for p in parts])[inverse] for k in parts[0]}

    def _device(self, block: int) -> torch.device:
        return next(iter(self.blocks[block].values())).device
