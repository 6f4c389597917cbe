"""Artifacts: the directory a user ships, holding the core recipe and packed weights.

Layout::

    ARTIFACT_DIR/
      recipe.yaml           what loading needs of the recipe: task, target and the
                            stages that shape the model, without default-valued fields
                            (no provenance, seed, training-only stages such as distill,
                            or training fields such as fine-tune epochs)
      weights.safetensors   every tensor; quantized weights as bit-packed integers and
                            sparse weights as a 1-bit occupancy map plus their non-zeros

``size_bytes`` is the sum of the files' sizes: what a user downloads. Loading rebuilds
the model from the task's factory and the recipe, then decodes the tensors; nothing is
unpickled. Each weight is stored as the recipe's storage policy says
(:mod:`autoslim.sparse.policy`): in its smallest encoding, dense or any sparse format, or,
with ``fastest``, in the layout of the kernel the loaded model will run it on.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from autoslim.artifact_checks import check_tensors, refuse_links
from autoslim.errors import AutoslimError
from autoslim.pack import pack_bits, packed_nbytes, unpack_bits
from autoslim.pipeline import handler_for, prepare_runtime, rebuild_structure
from autoslim.recipe import Recipe
from autoslim.space import compressible_layers
from autoslim.sparse.choose import choose_format, feasible_formats
from autoslim.sparse.formats import FORMATS, decode_tensor
from autoslim.sparse.policy import FASTEST, SMALLEST, policy_of
from autoslim.sparse.runtime import planned_kernels, sparse_runtime
from autoslim.task import Task, load_task, model_only_task
from autoslim.techniques.codebook import CodebookSpec, assign, lookup
from autoslim.techniques.quant_grid import GridSpec, dequantize_levels, quantize_levels
from autoslim.techniques.quantize import (
    CODEBOOK_BUFFER,
    SCALE_BUFFER,
    ZERO_BUFFER,
    float_width_of,
    grid_of,
    grid_params,
)
from autoslim.techniques.storage import storage_format
from autoslim.trust import trusted

RECIPE_FILE = "recipe.yaml"
WEIGHTS_FILE = "weights.safetensors"
LAYOUT_KEY = "autoslim.layout"
ARTIFACT_FILES = (RECIPE_FILE, WEIGHTS_FILE)


@dataclass(frozen=True)
class Encoded:
    """One weight's stored form: tensors to write plus the layout entry that decodes them."""

    tensors: dict[str, torch.Tensor]
    layout: dict


STORED_FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _grid_layout(spec: GridSpec | CodebookSpec) -> dict:
    if isinstance(spec, CodebookSpec):
        return {"kind": "codebook", "bits": spec.bits, "codebook": spec.kind, "per_channel": spec.per_channel}
    return {"kind": "uniform", "bits": spec.bits, "symmetric": spec.symmetric, "granularity": spec.granularity,
            "group_size": spec.group_size}


def _spec_from_layout(grid: dict) -> GridSpec | CodebookSpec:
    if grid.get("kind") == "codebook":
        return CodebookSpec(bits=grid["bits"], kind=grid["codebook"], per_channel=grid["per_channel"])
    return GridSpec(bits=grid["bits"], symmetric=grid["symmetric"], granularity=grid["granularity"],
                    group_size=grid["group_size"])


def _codebook_zero_levels(codebook: torch.Tensor, shape: list[int], spec: CodebookSpec) -> torch.Tensor:
    """Per weight, the index of the codebook's exact 0.0 entry (255 where there is none)."""
    is_zero = codebook == 0
    index = torch.where(is_zero.any(dim=1), is_zero.float().argmax(dim=1), torch.tensor(255))
    return index.to(torch.uint8)[:, None].expand(codebook.shape[0], int(np.prod(shape)) // codebook.shape[0])


def _levels_and_zero(weight: torch.Tensor, spec, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stored levels of a weight and, per element, the level that decodes to 0.0."""
    if isinstance(spec, CodebookSpec):
        codebook = params["codebook"]
        return assign(weight, codebook, spec), _codebook_zero_levels(codebook, list(weight.shape), spec)
    scale, zero = params["scale"], params["zero"]
    return (quantize_levels(weight, scale, zero, spec),
            quantize_levels(torch.zeros_like(weight), scale, zero, spec))


def _dequantize(levels: torch.Tensor, spec, params: dict) -> torch.Tensor:
    if isinstance(spec, CodebookSpec):
        return lookup(levels, params["codebook"], spec)
    return dequantize_levels(levels, params["scale"], params["zero"], spec)


def _encode_levels(name: str, levels: torch.Tensor, zero_levels: torch.Tensor, spec: GridSpec | CodebookSpec) -> Encoded:
    """Unsigned levels, dense-packed or as bitmap + packed non-zeros, whichever is smaller.

    "Zero" is the level that decodes to 0.0 (the zero point), so pruned weights cost one
    bit each in the bitmap form whatever the grid.
    """
    flat, zero_flat = levels.reshape(-1).numpy(), zero_levels.reshape(-1).numpy()
    nonzero = flat != zero_flat
    nnz, n, bits = int(nonzero.sum()), flat.size, spec.bits
    layout = {"shape": list(levels.shape), "grid": _grid_layout(spec)}
    if packed_nbytes(n, 1) + packed_nbytes(nnz, bits) < packed_nbytes(n, bits):
        data = {f"{name}::mask": pack_bits(nonzero.astype(np.uint8), 1), f"{name}::q": pack_bits(flat[nonzero], bits)}
        layout |= {"enc": "int_bitmap", "nnz": nnz}
    else:
        data = {f"{name}::q": pack_bits(flat, bits)}
        layout |= {"enc": "int_dense"}
    return Encoded({k: torch.from_numpy(v) for k, v in data.items()}, layout)


def _encode_matrix(name: str, matrix: torch.Tensor, shape: list[int], *, value_bits: int | None,
                   choice: str = SMALLEST, kernel: str = "dense") -> Encoded:
    """This weight in the format ``choice`` resolves to: the smallest of every format
    (dense included, measured by actually encoding it), the layout ``kernel`` reads
    (``fastest``), or a format a storage stage pinned, if that format can hold it."""
    matrix2d = matrix.reshape(shape[0], -1)
    if choice in FORMATS and not feasible_formats(matrix2d, [choice], (2, 4)):
        choice = SMALLEST
    fmt, encoded = choose_format(matrix2d, choice, kernel=kernel, value_bits=value_bits)
    tensors = {f"{name}::{key}": torch.from_numpy(np.ascontiguousarray(array)) for key, array in encoded.arrays.items()}
    return Encoded(tensors, {"enc": "sparse", "format": fmt, "meta": encoded.meta, "shape": shape})


def _encode_float(name: str, weight: torch.Tensor, width: str, choice: str = SMALLEST,
                  kernel: str = "dense") -> Encoded:
    """A float weight at its stored width, in its chosen format (fp32 dense stays raw)."""
    stored = weight.detach().to(STORED_FLOATS[width]).contiguous()
    enc = _encode_matrix(name, stored, list(weight.shape), value_bits=None, choice=choice, kernel=kernel)
    if width == "fp32" and enc.layout["format"] == "dense":
        return Encoded({name: weight.detach().contiguous()}, {"enc": "raw"})
    return enc


def _layer_choice(module: nn.Module, policy: str) -> str:
    """A storage stage's value for this layer, where ``auto`` (no stage) means the policy."""
    pinned = storage_format(module)
    return policy if pinned == "auto" else pinned


def _encode_weight(name: str, module: nn.Module, choice: str = SMALLEST, kernel: str = "dense") -> Encoded:
    spec = grid_of(module)
    if spec is None:
        return _encode_float(name, module.weight, float_width_of(module) or "fp32", choice, kernel)
    levels, zero_levels = _levels_and_zero(module.weight, spec, _module_params(module, spec))
    if isinstance(spec, GridSpec) and spec.symmetric:
        # Signed levels make 0.0 the integer 0, which every sparse format treats as absent.
        signed = (levels.to(torch.int16) - spec.qmax).to(torch.int8)
        enc = _encode_matrix(name, signed, list(levels.shape), value_bits=spec.bits, choice=choice, kernel=kernel)
        enc.layout["grid"] = _grid_layout(spec)
        return enc
    # Asymmetric and codebook levels keep their own dense-or-bitmap form: no sparse kernel
    # reads them, so there is no layout to be fastest in.
    return _encode_levels(name, levels, zero_levels, spec)


def _module_params(module: nn.Module, spec) -> dict:
    if isinstance(spec, CodebookSpec):
        return {"codebook": getattr(module, CODEBOOK_BUFFER).detach()}
    scale, zero = grid_params(module)
    return {"scale": scale, "zero": zero}


def _state_params(state: dict, prefix: str, spec) -> dict:
    if isinstance(spec, CodebookSpec):
        return {"codebook": state[prefix + CODEBOOK_BUFFER]}
    scale = state[prefix + SCALE_BUFFER]
    return {"scale": scale, "zero": state.get(prefix + ZERO_BUFFER, torch.zeros_like(scale))}


def runtime_kernels(model: nn.Module, recipe: Recipe) -> dict[str, str]:
    """Per layer, the kernel this model will run once saved and loaded for ``recipe.target``.

    It asks the same function the loader uses (:func:`planned_kernels`), on a copy moved
    onto the runtime's kernels as :func:`load_artifact` moves it (8-bit layers onto int8,
    which leaves them out of the CSR plan), so the stored format and the kernel agree.
    """
    return planned_kernels(prepare_runtime(copy.deepcopy(model), recipe), recipe.target)


def encode_state(
    model: nn.Module, *, policy: str = SMALLEST, kernels: dict[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """All tensors of the model in stored form, plus the layout that decodes them.

    ``kernels`` (from :func:`runtime_kernels`) is what ``fastest`` layers are stored for;
    a layer missing from it runs dense.
    """
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {}
    kernels = kernels or {}
    for layer_name, module in compressible_layers(model).items():
        name = f"{layer_name}.weight" if layer_name else "weight"
        enc = _encode_weight(name, module, _layer_choice(module, policy), kernels.get(layer_name, "dense"))
        if enc.layout["enc"] != "raw":
            tensors |= enc.tensors
            layout[name] = enc.layout
    tensors |= {k: v for k, v in state.items() if k not in layout}
    return tensors, layout


def _decode_matrix(name: str, entry: dict, tensors: dict[str, torch.Tensor], state: dict) -> torch.Tensor:
    prefix = f"{name}::"
    arrays = {k[len(prefix):]: v.numpy() for k, v in tensors.items() if k.startswith(prefix)}
    matrix = decode_tensor((arrays, entry["meta"])).reshape(entry["shape"])
    if "grid" not in entry:
        return matrix.float()
    spec = _spec_from_layout(entry["grid"])
    levels = (matrix.to(torch.int16) + spec.qmax).to(torch.uint8)
    return _dequantize(levels, spec, _state_params(state, name.removesuffix("weight"), spec))


def _decode_levels(name: str, entry: dict, tensors: dict[str, torch.Tensor], state: dict) -> torch.Tensor:
    shape, spec = entry["shape"], _spec_from_layout(entry["grid"])
    params = _state_params(state, name.removesuffix("weight"), spec)
    _, zero_levels = _levels_and_zero(torch.zeros(shape), spec, params)
    levels = zero_levels.reshape(-1).numpy().copy()
    packed = tensors[f"{name}::q"].numpy()
    if entry["enc"] == "int_dense":
        levels[:] = unpack_bits(packed, spec.bits, levels.size)
    else:
        mask = unpack_bits(tensors[f"{name}::mask"].numpy(), 1, levels.size).astype(bool)
        levels[mask] = unpack_bits(packed, spec.bits, entry["nnz"])
    return _dequantize(torch.from_numpy(levels).reshape(shape), spec, params)


def decode_state(tensors: dict[str, torch.Tensor], layout: dict[str, dict]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state`: a plain ``state_dict`` for ``load_state_dict``."""
    state = {k: v for k, v in tensors.items() if "::" not in k}
    for name, entry in layout.items():
        if entry["enc"] == "sparse":
            state[name] = _decode_matrix(name, entry, tensors, state)
        else:
            state[name] = _decode_levels(name, entry, tensors, state)
    return state


def check_output_folder(out_dir: str | Path, *, force: bool = False) -> None:
    """Refuse to write an artifact where it would replace what autoslim did not write.

    A folder that does not exist, is empty, or holds exactly an artifact's files is fine.
    One holding anything else is refused, unless ``force``, which writes the artifact's
    two files beside the others and never deletes any of them."""
    out_dir = Path(out_dir)
    if out_dir.is_symlink():
        raise AutoslimError(f"{out_dir} is a symbolic link; give the folder it points to")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise AutoslimError(f"{out_dir} exists and is not a folder; refusing to overwrite it")
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in ARTIFACT_FILES)
    if others and not force:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise AutoslimError(f"{out_dir} holds files autoslim did not write ({shown}); choose an empty or new "
                            "folder, or pass --force to write the artifact beside them")


def save_artifact(model: nn.Module, recipe: Recipe, out_dir: str | Path, *, task: Task | None = None,
                  force: bool = False) -> Path:
    """Write the artifact atomically: its files go to a temporary sibling folder, which
    then takes the place of ``out_dir``; readers never see half an artifact.

    ``out_dir`` must be new, empty or a previous artifact (:func:`check_output_folder`);
    with ``force``, a folder holding other files gets the two artifact files, each
    renamed into place, and keeps everything else. ``task`` (the recipe's, loaded if
    needed) rebuilds the model to check that the shipped recipe's shorter forms give the
    same shapes (:func:`artifact_recipe`)."""
    out_dir = Path(out_dir)
    check_output_folder(out_dir, force=force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tensors, layout = encode_state(model, **_storage_plan(model, recipe))
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / RECIPE_FILE).write_text(artifact_recipe_text(recipe, task))
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True, separators=(",", ":"))})
        _set_default_permissions(tmp)
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """``tmp``'s files become ``out_dir``'s. A new folder is one rename; an existing one
    gets each file renamed over the old one (atomic per file), and nothing else in it is
    touched, so no file autoslim did not write can be lost."""
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    for name in ARTIFACT_FILES:
        os.replace(tmp / name, out_dir / name)


def artifact_recipe(recipe: Recipe, task: Task | None = None) -> Recipe:
    """What an artifact's recipe.yaml holds: the core recipe less what only trains.

    - stages that only train (``StageConfig.shipped``), such as distillation and recovery;
    - the training fields of the others (``StageConfig.training_fields``): fine-tune
      epochs, learning rates, schedules, QAT and calibration settings;
    - the seed, which only drew the training's randomness;
    - digits and settings a handler's ``shortest_form`` can drop without changing a shape
      (checked by rebuilding the model of ``task``).

    They say how the weights were trained, as provenance says which trial chose them;
    loading needs none of it. A distilled model is the same model, and the same download,
    as one fine-tuned without a teacher or for more epochs: one architecture, one size.
    The replayable recipe is the one ``autoslim export`` writes (the run keeps it for
    every trial).
    """
    core = recipe.core()
    shipped = [stage.without_training() for stage in core.stages if stage.shipped]
    seed = Recipe.model_fields["seed"].default
    return _shortest_forms(core.model_copy(update={"stages": shipped, "seed": seed}), task)


def _shortest_forms(recipe: Recipe, task: Task | None) -> Recipe:
    """Each stage in its handler's ``shortest_form``, accepted only if the whole recipe
    still rebuilds every tensor at the same shape."""
    stages = list(recipe.stages)
    shapes: dict[str, dict] = {}

    def rebuilt_shapes(candidate: Recipe) -> dict:
        nonlocal task
        task = task or load_task(candidate.task)
        model = rebuild_structure(task.build_model(), candidate)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    for index, stage in enumerate(stages):
        shortest = getattr(handler_for(stage), "shortest_form", None)
        if shortest is None:
            continue

        def same_structure(candidate_stage, index=index) -> bool:
            if "reference" not in shapes:
                shapes["reference"] = rebuilt_shapes(recipe)
            candidate = recipe.model_copy(update={"stages": [*stages[:index], candidate_stage, *stages[index + 1:]]})
            try:
                return rebuilt_shapes(candidate) == shapes["reference"]
            except Exception:  # noqa: BLE001 — a candidate that cannot rebuild is simply not taken
                return False

        stages[index] = shortest(stage, same_structure)
    return recipe.model_copy(update={"stages": stages})


def artifact_recipe_text(recipe: Recipe, task: Task | None = None) -> str:
    """:func:`artifact_recipe` without default-valued fields.

    Spelled out in full, the defaults were most of the file (a prune + quantize recipe
    of the KD search with every field: 778 bytes; compact: 327), and on a small model the recipe is a
    large share of what a user downloads. The compact text is only used if it loads back
    to the same recipe; otherwise every field is written.
    """
    shipped = artifact_recipe(recipe, task)
    compact = shipped.to_yaml(compact=True)
    return compact if Recipe.from_dict(yaml.safe_load(compact)) == shipped else shipped.to_yaml()


def _storage_plan(model: nn.Module, recipe: Recipe) -> dict:
    """``encode_state``'s policy and, only if some layer is stored ``fastest``, the kernels
    (planning times crossovers, so a ``smallest`` artifact never waits for a timer)."""
    policy = policy_of(recipe.target)
    layers = compressible_layers(model).values()
    fastest = any(_layer_choice(m, policy) == FASTEST for m in layers)
    return {"policy": policy, "kernels": runtime_kernels(model, recipe) if fastest else None}


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
    """Bytes on disk of every regular file in the artifact directory; a symbolic link is
    neither followed nor counted (loading refuses one anyway)."""
    total = 0
    for root, _, files in os.walk(path, followlinks=False):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


@dataclass
class LoadedArtifact:
    model: nn.Module
    recipe: Recipe
    task: Task
    size_bytes: int


def load_artifact(path: str | Path, *, task: Task | None = None, runtime: bool = True,
                  model_factory: Callable[[], nn.Module] | None = None, trust_task: bool = False) -> LoadedArtifact:
    """Rebuild the model, load its decoded weights, then (``runtime``) move layers onto
    the real low-bit kernels the recipe's target has, as they will run when shipped.

    The model comes from ``task``, from ``model_factory`` (the fp32 model's constructor:
    nothing is imported), or from the recipe's task entry if it is trusted
    (:mod:`autoslim.trust`; ``trust_task=True`` trusts it for this call). Every file is
    checked before it is decoded (:mod:`autoslim.artifact_checks`); any damage is one
    :class:`AutoslimError` line."""
    path = Path(path)
    if not is_artifact(path):
        raise AutoslimError(f"not an autoslim artifact (needs {RECIPE_FILE} and {WEIGHTS_FILE}): {path}")
    refuse_links(path)
    recipe = Recipe.load(path / RECIPE_FILE)
    if task is None and model_factory is not None:
        task = model_only_task(model_factory, recipe.task.entry)
    with trusted(trust_task):
        task = task or load_task(recipe.task)
    model = _guarded(path, "its recipe does not rebuild the model", rebuild_structure, task.build_model(), recipe)
    state = _guarded(path, "unreadable weights", _read_state, path, model.state_dict())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).splitlines()[0])
        raise AutoslimError(f"artifact {path} does not fit its recipe's model: {detail[:200]}") from None
    model = model.eval()
    if runtime:
        model = sparse_runtime(prepare_runtime(model, recipe), recipe.target)
    return LoadedArtifact(model, recipe, task, artifact_bytes(path))


def _read_state(path: Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights file checked against the rebuilt model's tensors, then decoded."""
    with safe_open(str(path / WEIGHTS_FILE), framework="pt") as f:
        layout = json.loads((f.metadata() or {}).get(LAYOUT_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    check_tensors(tensors, layout, expected)
    return decode_state(tensors, layout)


def _guarded(path: Path, what: str, step: Callable, *args):
    """Run one loading step on untrusted files; whatever it raises becomes one line."""
    try:
        return step(*args)
    except AutoslimError as exc:
        raise AutoslimError(f"damaged artifact {path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — a hostile file may break a decoder anywhere
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AutoslimError(f"damaged artifact {path}: {what} ({type(exc).__name__}: {first})") from None


def load(path: str | Path, *, task: Task | None = None, model_factory: Callable[[], nn.Module] | None = None,
         trust_task: bool = False) -> nn.Module:
    """Load an artifact directory as a runnable ``nn.Module`` (no pickle involved).

    From someone else, pass ``model_factory`` (or ``task``) so nothing is imported;
    ``trust_task=True`` imports and runs the recipe's task entry, as
    ``trust_remote_code`` would."""
    return load_artifact(path, task=task, model_factory=model_factory, trust_task=trust_task).model
