"""Bundle folders: several artifacts of one task in one folder, each tensor stored once.

Layout::

    BUNDLE_DIR/
      bundle.json             the manifest (:class:`Manifest`): the task, the objectives,
                              the fp32 baseline, and per point its measured values with
                              their intervals and its bytes as a separate artifact
      tensors.safetensors     every distinct stored tensor, once (its sha256 is in the
                              manifest)
      points/NAME/recipe.yaml the point's artifact recipe, as in its artifact
      points/NAME/layout.json its weight layout (codec records) and, per tensor name, the
                              key of the stored tensor it reads
      points/NAME/deploy/     the runtime's own files, for points measured on one that
                              ships a file of its own (ONNX Runtime, OpenVINO)

Points of one search share tensors whenever a stage left them as they were: the biases,
norms and unquantized layers of post-training quantization, a pruning mask reused at
another width. Content addressing finds every such tensor without knowing the
techniques; the manifest says how many bytes it saved against separate artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import safe_open
from safetensors.torch import save_file

from autoslim._artifact_checks import refuse_links
from autoslim.artifact import (
    DEPLOY_DIR,
    LAYOUT_KEY,
    RECIPE_FILE,
    WEIGHTS_FILE,
    artifact_bytes,
    is_artifact,
    set_default_permissions,
)
from autoslim.deploy._files import file_sha256
from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe

MANIFEST_FILE = "bundle.json"
TENSORS_FILE = "tensors.safetensors"
POINTS_DIR = "points"
LAYOUT_FILE = "layout.json"
FORMAT = 1


class PointEntry(BaseModel):
    """One operating point: where its files are and what the search measured."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    trial: int | None = None
    roles: list[str] = []
    runtime: str = "torch"
    # objective and measured values (latency with its p10/p90 and paired-ratio interval)
    values: dict[str, float | int | str | bool | None] = {}
    bytes_alone: int = Field(ge=0)  # the point as a separate artifact, on disk
    measured_batch: int = Field(default=1, ge=1)  # rows per call its latency/energy were timed at


class Manifest(BaseModel):
    """``bundle.json``: enough to check a bundle against a task before loading it."""

    model_config = ConfigDict(extra="forbid")

    format: int = FORMAT
    task: dict[str, Any]
    metric_name: str = "accuracy"
    objectives: dict[str, str] = {}
    baseline: dict[str, float | int | str | bool | None] = {}
    points: list[PointEntry] = Field(min_length=1)
    bytes_bundle: int = 0
    bytes_separate: int = 0
    shared_tensors: int = 0  # stored once, used by more than one point
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # the store, checked on loading

    @property
    def bytes_saved(self) -> int:
        return self.bytes_separate - self.bytes_bundle

    def entry(self, name: str) -> PointEntry:
        for point in self.points:
            if point.name == name:
                return point
        known = ", ".join(p.name for p in self.points)
        raise AutoslimError(f"the bundle has no point {name!r} (it has {known})")


def tensor_key(tensor: torch.Tensor) -> str:
    """Content hash of a stored tensor: its dtype, shape and bytes."""
    flat = tensor.detach().contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype}|{list(tensor.shape)}|".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def read_stored(artifact: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An artifact's stored (still encoded) tensors and its layout record."""
    with safe_open(str(artifact / WEIGHTS_FILE), framework="pt") as f:
        layout = json.loads((f.metadata() or {}).get(LAYOUT_KEY, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    return tensors, layout


def same_task(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two recipes' task references name the same model and weights."""
    return a.get("entry") == b.get("entry") and a.get("params", {}) == b.get("params", {})


def task_ref(recipe: Recipe) -> dict[str, Any]:
    return recipe.task.model_dump(mode="json", include={"entry", "params"})


def write_bundle(
    points: list[tuple[PointEntry, Path]],
    out_dir: str | Path,
    *,
    metric_name: str,
    objectives: dict[str, str],
    baseline: dict[str, Any],
    force: bool = False,
) -> Manifest:
    """Pack the artifacts (``PointEntry`` and its artifact folder, most accurate first)
    into ``out_dir``, atomically: readers never see half a bundle. ``force`` replaces a
    previous bundle there (never a folder holding anything else)."""
    out_dir = Path(out_dir)
    check_bundle_folder(out_dir, force=force)
    recipes = {entry.name: Recipe.load(folder / RECIPE_FILE) for entry, folder in points}
    task = _one_task(recipes)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        store, users = _write_points(points, tmp)
        save_file(store, str(tmp / TENSORS_FILE))
        manifest = Manifest(
            tensors_sha256=file_sha256(tmp / TENSORS_FILE),
            task=task,
            metric_name=metric_name,
            objectives=objectives,
            baseline=baseline,
            points=[entry for entry, _ in points],
            bytes_separate=sum(entry.bytes_alone for entry, _ in points),
            shared_tensors=sum(1 for count in users.values() if count > 1),
        )
        manifest.bytes_bundle = _folder_bytes(tmp) + len(_manifest_text(manifest))
        # the manifest's own length is part of the count it states: settle it
        manifest.bytes_bundle = _folder_bytes(tmp) + len(_manifest_text(manifest))
        (tmp / MANIFEST_FILE).write_text(_manifest_text(manifest))
        set_default_permissions(tmp)
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _write_points(
    points: list[tuple[PointEntry, Path]], folder: Path
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Each point's recipe and layout into ``folder``; the distinct tensors, stored under
    short keys (``t0``, ``t1``, ...), and how many points use each."""
    store: dict[str, torch.Tensor] = {}
    by_content: dict[str, str] = {}
    users: dict[str, int] = {}
    for entry, artifact in points:
        if not is_artifact(artifact):
            raise AutoslimError(f"not an autoslim artifact: {artifact}")
        refuse_links(artifact)
        tensors, layout = read_stored(artifact)
        keys = {}
        for name, tensor in tensors.items():
            content = tensor_key(tensor)
            key = by_content.setdefault(content, f"t{len(by_content)}")
            store.setdefault(key, tensor.contiguous())
            keys[name] = key
        for key in set(keys.values()):  # points using each tensor, not uses within one
            users[key] = users.get(key, 0) + 1
        point_dir = folder / POINTS_DIR / entry.name
        point_dir.mkdir(parents=True)
        shutil.copyfile(artifact / RECIPE_FILE, point_dir / RECIPE_FILE)
        record = {"layout": layout, "tensors": keys}
        (point_dir / LAYOUT_FILE).write_text(json.dumps(record, separators=(",", ":")))
        if (artifact / DEPLOY_DIR).is_dir() and entry.runtime not in ("torch", "torch-compile"):
            shutil.copytree(artifact / DEPLOY_DIR, point_dir / DEPLOY_DIR)
        entry.bytes_alone = entry.bytes_alone or separate_bytes(artifact, entry.runtime)
    return store, users


def separate_bytes(artifact: Path, runtime: str) -> int:
    """What the point costs shipped on its own: the artifact, plus the runtime's file."""
    own = 0
    if runtime not in ("torch", "torch-compile") and (artifact / DEPLOY_DIR).is_dir():
        own = artifact_bytes(artifact / DEPLOY_DIR)
    return artifact_bytes(artifact) + own


def _one_task(recipes: dict[str, Recipe]) -> dict[str, Any]:
    refs = {name: task_ref(r) for name, r in recipes.items()}
    first_name, first = next(iter(refs.items()))
    for name, ref in refs.items():
        if not same_task(ref, first):
            raise AutoslimError(
                f"points {first_name} and {name} come from different tasks; "
                "a bundle holds points of one model"
            )
    return first


def check_bundle_folder(out_dir: Path, *, force: bool) -> None:
    """Refuse a folder that is not new, empty, or (with ``force``) a previous bundle."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise AutoslimError(f"{out_dir} exists and is not a folder; refusing to overwrite it")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not force:
        raise AutoslimError(
            f"{out_dir} is not empty; choose a new or empty folder (--force replaces a bundle)"
        )
    if not _only_bundle_files(out_dir):
        raise AutoslimError(
            f"{out_dir} holds files autoslim did not write; --force only replaces a bundle"
        )


def _only_bundle_files(folder: Path) -> bool:
    return {p.name for p in folder.iterdir()} <= {MANIFEST_FILE, TENSORS_FILE, POINTS_DIR}


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """``tmp`` becomes ``out_dir``; a previous bundle there is set aside first and removed
    only once the new one is in place."""
    if out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    if not out_dir.exists():
        tmp.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    tmp.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _folder_bytes(folder: Path) -> int:
    return sum(
        os.lstat(os.path.join(root, name)).st_size
        for root, _, files in os.walk(folder)
        for name in files
    )


def _manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest.model_dump(mode="json"), indent=1, sort_keys=True) + "\n"


# --- reading -----------------------------------------------------------------------------


def read_manifest(path: str | Path) -> Manifest:
    """The manifest of the bundle at ``path``, checked; any problem is one line."""
    path = Path(path)
    file = path / MANIFEST_FILE
    if not file.is_file() or not (path / TENSORS_FILE).is_file():
        raise AutoslimError(f"not an autoslim bundle (needs {MANIFEST_FILE}): {path}")
    refuse_links(path)
    try:
        manifest = Manifest.model_validate_json(file.read_text())
    except ValueError as exc:
        first = str(exc).splitlines()[0][:160]
        raise AutoslimError(f"damaged bundle {path}: {MANIFEST_FILE} ({first})") from None
    if manifest.format != FORMAT:
        raise AutoslimError(
            f"bundle {path} has format {manifest.format}; this autoslim reads {FORMAT}"
        )
    if len({p.name for p in manifest.points}) != len(manifest.points):
        raise AutoslimError(f"damaged bundle {path}: two points share a name")
    return manifest


def read_store(path: Path, manifest: Manifest) -> dict[str, torch.Tensor]:
    """Every stored tensor, once the file's hash matches the manifest's."""
    if file_sha256(path / TENSORS_FILE) != manifest.tensors_sha256:
        raise AutoslimError(f"damaged bundle {path}: {TENSORS_FILE} does not match its hash")
    with safe_open(str(path / TENSORS_FILE), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)


def point_files(path: Path, name: str) -> tuple[Recipe, dict[str, Any], dict[str, str]]:
    """A point's recipe, layout record and tensor-name -> hash map."""
    folder = path / POINTS_DIR / name
    try:
        recipe = Recipe.load(folder / RECIPE_FILE)
        record = json.loads((folder / LAYOUT_FILE).read_text())
        layout, keys = record["layout"], record["tensors"]
    except (OSError, ValueError, KeyError, TypeError, AutoslimError) as exc:
        first = (str(exc).splitlines() or [""])[0][:160]
        raise AutoslimError(f"damaged bundle {path}: point {name} ({first})") from None
    if not isinstance(layout, dict) or not isinstance(keys, dict):
        raise AutoslimError(f"damaged bundle {path}: point {name} has no layout")
    return recipe, layout, keys
