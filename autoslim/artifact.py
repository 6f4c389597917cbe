"""Artifacts: the directory a user ships, holding the core recipe and packed weights.

Layout::

    ARTIFACT_DIR/
      recipe.yaml           the recipe's core (task, seed, target, stages), no provenance
      weights.safetensors   every tensor; quantized weights as bit-packed integers and
                            sparse weights as a 1-bit occupancy map plus their non-zeros

``size_bytes`` is the sum of the files' sizes: what a user downloads. Loading rebuilds
the model from the task's factory and the recipe, then decodes the tensors; nothing is
unpickled. Each weight takes whichever encoding is smaller, dense or bitmap-sparse;
the sparse-storage family extends :data:`ENCODINGS` with more formats.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.pack import pack_bits, packed_nbytes, unpack_bits
from autoslim.pipeline import rebuild_structure
from autoslim.recipe import Recipe
from autoslim.space import compressible_layers
from autoslim.task import Task, load_task
from autoslim.techniques.quantize import SCALE_BUFFER, qmax, quantize_weight, quantized_bits

RECIPE_FILE = "recipe.yaml"
WEIGHTS_FILE = "weights.safetensors"
LAYOUT_KEY = "autoslim.layout"
FP32_BYTES = 4


@dataclass(frozen=True)
class Encoded:
    """One weight's stored form: tensors to write plus the layout entry that decodes them."""

    tensors: dict[str, torch.Tensor]
    layout: dict
    nbytes: int


def _encode_ints(name: str, q: torch.Tensor, bits: int) -> Encoded:
    """Integer levels, dense-packed or as bitmap + packed non-zeros, whichever is smaller."""
    unsigned = (q.reshape(-1).numpy().astype(np.int16) + qmax(bits)).astype(np.uint8)
    nonzero = q.reshape(-1).numpy() != 0
    nnz, n = int(nonzero.sum()), q.numel()
    layout = {"bits": bits, "shape": list(q.shape)}
    if packed_nbytes(n, 1) + packed_nbytes(nnz, bits) < packed_nbytes(n, bits):
        data = {f"{name}::mask": pack_bits(nonzero.astype(np.uint8), 1), f"{name}::q": pack_bits(unsigned[nonzero], bits)}
        layout |= {"enc": "int_bitmap", "nnz": nnz}
    else:
        data = {f"{name}::q": pack_bits(unsigned, bits)}
        layout |= {"enc": "int_dense"}
    tensors = {k: torch.from_numpy(v) for k, v in data.items()}
    return Encoded(tensors, layout, sum(t.numel() for t in tensors.values()))


def _encode_float(name: str, weight: torch.Tensor) -> Encoded:
    """A full-precision weight: dense, or bitmap + fp32 non-zeros when that is smaller."""
    flat = weight.detach().reshape(-1).contiguous()
    nonzero = (flat != 0).numpy()
    nnz, n = int(nonzero.sum()), flat.numel()
    if packed_nbytes(n, 1) + FP32_BYTES * nnz < FP32_BYTES * n:
        tensors = {
            f"{name}::mask": torch.from_numpy(pack_bits(nonzero.astype(np.uint8), 1)),
            f"{name}::values": flat[torch.from_numpy(nonzero)].clone(),
        }
        layout = {"enc": "fp32_bitmap", "shape": list(weight.shape), "nnz": nnz}
        return Encoded(tensors, layout, packed_nbytes(n, 1) + FP32_BYTES * nnz)
    return Encoded({name: weight.detach().contiguous()}, {"enc": "raw"}, FP32_BYTES * n)


def encode_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """All tensors of the model in stored form, plus the layout that decodes them."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    encoded_names = set()
    for layer_name, module in compressible_layers(model).items():
        name = f"{layer_name}.weight" if layer_name else "weight"
        bits = quantized_bits(module)
        if bits is not None:
            scale = getattr(module, SCALE_BUFFER)
            enc = _encode_ints(name, quantize_weight(module.weight, scale, bits), bits)
        else:
            enc = _encode_float(name, module.weight)
        if enc.layout["enc"] != "raw":
            tensors |= enc.tensors
            layout[name] = enc.layout
            encoded_names.add(name)
    tensors |= {k: v for k, v in state.items() if k not in encoded_names}
    return tensors, layout


def decode_state(tensors: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state`: a plain ``state_dict`` for ``load_state_dict``."""
    state = {k: v for k, v in tensors.items() if "::" not in k}
    for name, entry in layout.items():
        shape = entry["shape"]
        count = int(np.prod(shape)) if shape else 1
        mask = None
        if entry["enc"].endswith("_bitmap"):
            mask = unpack_bits(tensors[f"{name}::mask"].numpy(), 1, count).astype(bool)
        if entry["enc"] == "fp32_bitmap":
            flat = torch.zeros(count, dtype=torch.float32)
            flat[torch.from_numpy(mask)] = tensors[f"{name}::values"]
            state[name] = flat.reshape(shape)
            continue
        bits = entry["bits"]
        stored = count if mask is None else entry["nnz"]
        values = unpack_bits(tensors[f"{name}::q"].numpy(), bits, stored).astype(np.int16) - qmax(bits)
        q = np.zeros(count, dtype=np.int16)
        if mask is None:
            q[:] = values
        else:
            q[mask] = values
        scale = state[name.removesuffix("weight") + SCALE_BUFFER]
        q_tensor = torch.from_numpy(q).reshape(shape).to(torch.float32)
        state[name] = q_tensor * scale.reshape(-1, *([1] * (len(shape) - 1)))
    return state


def save_artifact(model: nn.Module, recipe: Recipe, out_dir: str | Path) -> Path:
    """Write the artifact atomically: a temporary directory renamed into place."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not is_artifact(out_dir) and any(out_dir.iterdir()):
        raise AutoslimError(f"{out_dir} exists and is not an autoslim artifact; refusing to overwrite")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors, layout = encode_state(model)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / RECIPE_FILE).write_text(recipe.core().to_yaml())
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True)})
        _set_default_permissions(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _set_default_permissions(folder: Path) -> None:
    """mkdtemp makes a private 0700 folder; a shipped artifact should be readable like any file."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def is_artifact(path: Path) -> bool:
    return (path / RECIPE_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of every file in the artifact directory."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@dataclass
class LoadedArtifact:
    model: nn.Module
    recipe: Recipe
    task: Task
    size_bytes: int


def load_artifact(path: str | Path, *, task: Task | None = None) -> LoadedArtifact:
    path = Path(path)
    if not is_artifact(path):
        raise AutoslimError(f"not an autoslim artifact (needs {RECIPE_FILE} and {WEIGHTS_FILE}): {path}")
    recipe = Recipe.load(path / RECIPE_FILE)
    task = task or load_task(recipe.task)
    model = rebuild_structure(task.build_model(), recipe)
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        layout = json.loads((f.metadata() or {}).get(LAYOUT_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    try:
        model.load_state_dict(decode_state(tensors, layout), strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise AutoslimError(f"artifact {path} does not fit its recipe's model: {first}") from None
    return LoadedArtifact(model.eval(), recipe, task, artifact_bytes(path))


def load(path: str | Path) -> nn.Module:
    """Load an artifact directory as a runnable ``nn.Module`` (no pickle involved)."""
    return load_artifact(path).model
