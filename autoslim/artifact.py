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
unpickled. This module knows no technique: each weight is
encoded by the weight codec that takes it (:class:`autoslim.registry.WeightCodec`: a
quantized layer's packed levels, a float weight in its smallest or fastest sparse format),
and the layout records which codec's encoding each weight is in.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from autoslim._artifact_checks import check_tensors, refuse_links
from autoslim.data import tracing_example
from autoslim.errors import AutoslimError
from autoslim.pipeline import deploy_runtime, handler_for, rebuild_structure
from autoslim.recipe import Recipe
from autoslim.registry import codec_for, weight_codecs
from autoslim.space import stored_weights
from autoslim.sparse.runtime import example_input, task_example
from autoslim.task import Task, load_task, model_only_task
from autoslim.trust import trusted

RECIPE_FILE = "recipe.yaml"
# The layout record of a weight tied to another: stored once, under the key it names.
TIED = "tied"
WEIGHTS_FILE = "weights.safetensors"
LAYOUT_KEY = "autoslim.layout"
ARTIFACT_FILES = (RECIPE_FILE, WEIGHTS_FILE)
DEPLOY_DIR = "deploy"  # a runtime's shipped form (autoslim.deploy.runtimes)


def encode_state(
    model: nn.Module, plan: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """All tensors of the model in stored form, plus the layout that decodes them.

    Each stored layer's weight (compressible layers and embedding tables) goes to the
    first registered codec that takes it
    (:func:`autoslim.registry.weight_codecs`); ``plan`` is what the codecs worked out for
    this model (:func:`storage_plan`; none: every weight in its smallest form).
    """
    codecs = weight_codecs()
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    stored = stored_weights(model)  # state key -> its layer, or a WeightSlot of a GRU/LSTM
    aliases = tied_aliases(model, set(stored))
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, dict] = {
        alias: {"enc": TIED, "to": kept, "shape": list(state[alias].shape)}
        for alias, kept in aliases.items()
    }
    for name, holder in stored.items():
        if name in aliases:
            continue
        enc = next(
            e for e in (codec.encode(name, holder, plan or {}) for codec in codecs) if e is not None
        )
        if enc.layout is not None:
            tensors |= enc.tensors
            layout[name] = enc.layout
    tensors |= {k: v for k, v in state.items() if k not in layout}
    return tensors, layout


def tied_aliases(model: nn.Module, preferred: set[str]) -> dict[str, str]:
    """State keys naming a tensor another key already names (tied weights), each mapped
    to the key that stores it: one the codecs encode (``preferred``) where there is one,
    so a quantized head keeps its width for the embedding tied to it."""
    groups: dict[tuple, list[str]] = {}
    for key, value in model.state_dict().items():
        mark = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        groups.setdefault(mark, []).append(key)
    aliases = {}
    for keys in groups.values():
        if len(keys) > 1:
            kept = next((k for k in keys if k in preferred), keys[0])
            aliases |= {k: kept for k in keys if k != kept}
    return aliases


def storage_plan(model: nn.Module, recipe: Recipe) -> dict[str, Any]:
    """Every codec's once-per-model decisions for saving ``model`` under ``recipe``."""
    plan: dict[str, Any] = {}
    for codec in weight_codecs():
        plan |= codec.plan(model, recipe)
    return plan


def decode_state(
    tensors: dict[str, torch.Tensor], layout: dict[str, dict]
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`encode_state`: a plain ``state_dict`` for ``load_state_dict``.
    Plain tensors come first, since a codec may read its layer's buffers (scales)."""
    state = {k: v for k, v in tensors.items() if "::" not in k}
    for name, entry in layout.items():
        if entry.get("enc") != TIED:
            state[name] = codec_for(entry).decode(name, entry, tensors, state)
    for name, entry in layout.items():
        if entry.get("enc") == TIED:  # the same tensor again: loading ties them as before
            state[name] = state[entry["to"]]
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
        raise AutoslimError(
            f"{out_dir} holds files autoslim did not write ({shown}); choose an empty or new "
            "folder, or pass --force to write the artifact beside them"
        )


def save_artifact(
    model: nn.Module,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    task: Task | None = None,
    force: bool = False,
) -> Path:
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
    # A ``fastest`` plan times crossovers at the rows each layer multiplies on the task's
    # example batch, as loading does (the task is only loaded if some layer needs it).
    example = task_example(task or (lambda: load_task(recipe.task)), recipe.target.batch_size)
    with example_input(example):
        plan = storage_plan(model, recipe)
    tensors, layout = encode_state(model, plan)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        (tmp / RECIPE_FILE).write_text(artifact_recipe_text(recipe, task))
        save_file(
            tensors,
            str(tmp / WEIGHTS_FILE),
            metadata={LAYOUT_KEY: json.dumps(layout, sort_keys=True, separators=(",", ":"))},
        )
        set_default_permissions(tmp)
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
        with tracing_example(task):
            model = rebuild_structure(task.build_model(), candidate)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    for index, stage in enumerate(stages):

        def same_structure(candidate_stage, index=index) -> bool:
            if "reference" not in shapes:
                shapes["reference"] = rebuilt_shapes(recipe)
            candidate = recipe.model_copy(
                update={"stages": [*stages[:index], candidate_stage, *stages[index + 1 :]]}
            )
            try:
                return rebuilt_shapes(candidate) == shapes["reference"]
            except Exception:  # noqa: BLE001 — a candidate that cannot rebuild is simply not taken
                return False

        stages[index] = handler_for(stage).shortest_form(stage, same_structure)
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


def set_default_permissions(folder: Path) -> None:
    """mkdtemp makes a private 0700 folder; a shipped artifact should be readable like any file."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)


def is_artifact(path: Path) -> bool:
    return (path / RECIPE_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def artifact_bytes(path: str | Path) -> int:
    """Bytes on disk of every regular file in the artifact directory; a symbolic link is
    neither followed nor counted (loading refuses one anyway). A runtime's shipped form
    under ``deploy/`` is another artifact's worth of bytes, counted on its own."""
    total = 0
    for root, folders, files in os.walk(path, followlinks=False):
        if Path(root) == Path(path) and DEPLOY_DIR in folders:
            folders.remove(DEPLOY_DIR)
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


def load_artifact(
    path: str | Path,
    *,
    task: Task | None = None,
    runtime: bool = True,
    model_factory: Callable[[], nn.Module] | None = None,
    trust_task: bool = False,
) -> LoadedArtifact:
    """Rebuild the model, load its decoded weights, then (``runtime``) move layers onto
    the real low-bit kernels the recipe's target has, as they will run when shipped.

    The model comes from ``task``, from ``model_factory`` (the fp32 model's constructor:
    nothing is imported), or from the recipe's task entry if it is trusted
    (:mod:`autoslim.trust`; ``trust_task=True`` trusts it for this call). Every file is
    checked before it is decoded (:mod:`autoslim._artifact_checks`); any damage is one
    :class:`AutoslimError` line."""
    path = Path(path)
    if not is_artifact(path):
        raise AutoslimError(
            f"not an autoslim artifact (needs {RECIPE_FILE} and {WEIGHTS_FILE}): {path}"
        )
    refuse_links(path)
    recipe = Recipe.load(path / RECIPE_FILE)
    if task is None and model_factory is not None:
        task = model_only_task(model_factory, recipe.task.entry)
    with trusted(trust_task):
        task = task or load_task(recipe.task)
    with tracing_example(task):
        model = _guarded(
            path,
            "its recipe does not rebuild the model",
            rebuild_structure,
            task.build_model(),
            recipe,
        )
    state = _guarded(path, "unreadable weights", _read_state, path, model.state_dict())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = next(
            (ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()), str(exc).splitlines()[0]
        )
        raise AutoslimError(
            f"artifact {path} does not fit its recipe's model: {detail[:200]}"
        ) from None
    model = model.eval()
    if runtime:
        model = deploy_runtime(model, recipe, task_example(task, recipe.target.batch_size))
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
        raise AutoslimError(
            f"damaged artifact {path}: {what} ({type(exc).__name__}: {first})"
        ) from None


def load(
    path: str | Path,
    *,
    task: Task | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    trust_task: bool = False,
) -> nn.Module:
    """Load an artifact directory as a runnable ``nn.Module`` (no pickle involved).

    From someone else, pass ``model_factory`` (or ``task``) so nothing is imported;
    ``trust_task=True`` imports and runs the recipe's task entry, as
    ``trust_remote_code`` would."""
    return load_artifact(path, task=task, model_factory=model_factory, trust_task=trust_task).model
