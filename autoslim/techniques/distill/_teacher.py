"""The teacher side of distillation: probes that capture intermediate values, and
teacher outputs computed once per sample.

Teacher outputs on the train split are computed once in fixed chunks and looked up by
each sample's bytes (the shuffle order changes every epoch and stage, so per-batch keys
would never hit). The cache is a function of teacher and data only, shared by trials of
a process, and so keeps replay deterministic.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.techniques.distill import _losses as L

INPUT_SUFFIX = ":input"
MAX_CACHE_BYTES = 256 * 2**20  # beyond this the teacher runs per batch instead
CACHE_CHUNK = 512

# ---- probes: named intermediate values captured by forward hooks ----


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "num_heads") and (
        hasattr(module, "in_proj_weight") or hasattr(module, "in_proj")
    )


def _probe_value(module: nn.Module, mode: str, args: tuple, output: Any) -> torch.Tensor:
    if mode == "input":
        return args[0]
    if mode == "attention":
        query = args[0] if getattr(module, "batch_first", True) else args[0].transpose(0, 1)
        weight = (
            module.in_proj_weight if hasattr(module, "in_proj_weight") else module.in_proj.weight
        )
        bias = module.in_proj_bias
        return L.attention_probs(query, weight, bias, module.num_heads)
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def capture(
    model: nn.Module, probes: dict[str, tuple[str, str]]
) -> Iterator[dict[str, torch.Tensor]]:
    """Record ``{key: value}`` for probes ``{key: (layer name, mode)}`` during one forward.

    Hooks are added by name for each forward and removed after, so they survive stages
    that replace modules (head pruning, QAT) and are never part of the artifact.
    """
    values: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for key, (name, mode) in probes.items():
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise AutoslimError(f"distill: the model has no layer {name!r}") from None

            def hook(m: nn.Module, args: tuple, out: Any, key: str = key, mode: str = mode) -> None:
                values[key] = _probe_value(m, mode, args, out)

            handles.append(module.register_forward_hook(hook))
        fastpath = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)  # the fused path skips self_attn's hooks
        yield values
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for handle in handles:
            handle.remove()


def _row_keys(inputs: torch.Tensor) -> list[bytes]:
    flat = inputs.detach().reshape(len(inputs), -1).contiguous().numpy()
    return [row.tobytes() for row in flat]


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, inputs: torch.Tensor, probes: dict[str, tuple[str, str]]
) -> dict[str, torch.Tensor]:
    with capture(teacher, probes) as values:
        logits = teacher(inputs)
    return {"logits": logits, **{k: v.detach() for k, v in values.items()}}


class TeacherCache:
    """Teacher outputs for every train sample, computed in fixed chunks, keyed by bytes."""

    def __init__(self, outputs: dict[str, torch.Tensor], keys: list[bytes]) -> None:
        self.outputs, self.index = outputs, {k: i for i, k in enumerate(keys)}

    @classmethod
    def build(cls, teacher: nn.Module, inputs: torch.Tensor, probes: dict) -> TeacherCache | None:
        chunks = []
        for start in range(0, len(inputs), CACHE_CHUNK):
            chunks.append(teacher_forward(teacher, inputs[start : start + CACHE_CHUNK], probes))
            per_sample = sum(v.numel() * v.element_size() for v in chunks[0].values()) / len(
                chunks[0]["logits"]
            )
            if per_sample * len(inputs) > MAX_CACHE_BYTES:
                return None
        outputs = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
        return cls(outputs, _row_keys(inputs))

    def lookup(self, inputs: torch.Tensor) -> dict[str, torch.Tensor] | None:
        rows = [self.index.get(k) for k in _row_keys(inputs)]
        if any(r is None for r in rows):
            return None  # a sample outside the train split (e.g. augmented): run the teacher
        idx = torch.tensor(rows)
        return {k: v[idx] for k, v in self.outputs.items()}


_CACHES: OrderedDict[str, TeacherCache | None] = OrderedDict()


def _fingerprint(teacher: nn.Module, inputs: torch.Tensor, probes: dict) -> str:
    digest = hashlib.sha256(repr(sorted(probes.items())).encode())
    for name, tensor in teacher.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    digest.update(inputs.contiguous().numpy().tobytes())
    return digest.hexdigest()


def shared_cache(teacher: nn.Module, inputs: torch.Tensor, probes: dict) -> TeacherCache | None:
    """One cache per (teacher weights, probes, data) in this process: trials share it."""
    key = _fingerprint(teacher, inputs, probes)
    if key not in _CACHES:
        _CACHES[key] = TeacherCache.build(teacher, inputs, probes)
        while len(_CACHES) > 2:
            _CACHES.popitem(last=False)
    return _CACHES[key]
