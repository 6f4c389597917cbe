"""Rewrite an artifact's weights file: its tensors, its layout record or its raw header."""

from __future__ import annotations

import copy
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from autoslim.artifact import LAYOUT_KEY, WEIGHTS_FILE

Mutation = Callable[[dict, dict], None]


def read(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        layout = json.loads(f.metadata()[LAYOUT_KEY]) if LAYOUT_KEY in (f.metadata() or {}) else {}
        return {k: f.get_tensor(k) for k in f.keys()}, layout  # noqa: SIM118


def tampered_copy(source: Path, dest: Path, mutate: Mutation) -> Path:
    """A copy of the artifact whose tensors and layout ``mutate`` changed in place."""
    shutil.copytree(source, dest)
    tensors, layout = read(source)
    tensors, layout = dict(tensors), copy.deepcopy(layout)
    mutate(tensors, layout)
    metadata = {LAYOUT_KEY: layout if isinstance(layout, str) else json.dumps(layout)}
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(dest / WEIGHTS_FILE), metadata=metadata
    )
    return dest


def rewrite_header(folder: Path, edit: Callable[[dict], None]) -> None:
    """Edit the raw safetensors header (dtype labels, offsets) without touching the data."""
    path = folder / WEIGHTS_FILE
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size :])
