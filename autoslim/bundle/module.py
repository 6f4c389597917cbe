"""A loaded bundle: every point in memory, one of them answering calls, switched in place.

Switching is a pointer change, so it costs microseconds and never touches the disk.
Points are ordered as a ladder, most accurate first and fastest last, so a policy
(:mod:`autoslim.bundle.policies`) can step "faster" or "more accurate" without knowing
the objectives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoslim._artifact_checks import check_tensors
from autoslim.artifact import decode_state
from autoslim.bundle.store import (
    POINTS_DIR,
    Manifest,
    PointEntry,
    point_files,
    read_manifest,
    read_store,
    same_task,
    task_ref,
    tensor_key,
)
from autoslim.data import tracing_example
from autoslim.errors import AutoslimError
from autoslim.pipeline import deploy_runtime, rebuild_structure
from autoslim.sparse.runtime import task_example
from autoslim.task import Task, load_task, model_only_task
from autoslim.trust import trusted


@dataclass(frozen=True)
class Point:
    """What a policy may know of a point: its place and its measured costs (latency per
    call as measured; energy per request)."""

    index: int
    name: str
    metric: float | None
    latency_ms: float | None
    energy_mj: float | None


class BundleModule(nn.Module):
    """Every point of a bundle; calls go to the active one (:meth:`select`)."""

    def __init__(
        self, models: dict[str, nn.Module], manifest: Manifest, task: Task | None = None
    ) -> None:
        super().__init__()
        self.task = task  # what the points were loaded for: its data serves replay
        self.points = nn.ModuleDict(models)
        self.manifest = manifest
        self.ladder = [_point(i, entry, manifest) for i, entry in enumerate(manifest.points)]
        self._index = {p.name: p.index for p in self.ladder}
        self.active = 0
        self.switches = 0

    @property
    def active_name(self) -> str:
        return self.ladder[self.active].name

    def select(self, point: int | str) -> None:
        """Make ``point`` (its name or its ladder index) answer the next calls."""
        index = self.index_of(point)
        if index != self.active:
            self.active = index
            self.switches += 1

    def index_of(self, point: int | str) -> int:
        if isinstance(point, str):
            if point not in self._index:
                self.manifest.entry(point)  # raises the one-line error naming the points
            return self._index[point]
        if not 0 <= point < len(self.ladder):
            raise AutoslimError(f"the bundle has points 0..{len(self.ladder) - 1}, not {point}")
        return point

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.points[self.active_name](*args, **kwargs)

    def resident_bytes(self, names: list[str] | None = None) -> int:
        """Bytes of the tensors the named points (all: None) hold, a shared one once."""
        return resident_bytes([self.points[n] for n in names or list(self.points)])


def _point(index: int, entry: PointEntry, manifest: Manifest) -> Point:
    def number(key: str) -> float | None:
        value = entry.values.get(key)
        return float(value) if isinstance(value, (int, float)) else None

    energy = number("energy_mj")  # measured per call of measured_batch rows
    return Point(
        index,
        entry.name,
        number(manifest.metric_name),
        number("latency_ms"),
        None if energy is None else energy / entry.measured_batch,
    )


def resident_bytes(modules: list[nn.Module]) -> int:
    """Bytes held by the modules' parameters and buffers, a storage shared between them
    counted once (quantized kernels' packed weights are counted by their state)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for module in modules:
        for tensor in module.state_dict(keep_vars=True).values():
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.is_quantized:  # unpacked fresh on each call: no storage to share
                total += tensor.numel() * tensor.element_size()
                continue
            storage = tensor.untyped_storage()
            key = (storage.data_ptr(), storage.nbytes())
            if key not in seen:
                seen.add(key)
                total += storage.nbytes()
    return total


# --- loading -----------------------------------------------------------------------------


def load_bundle(
    path: str | Path,
    *,
    task: Task | None = None,
    model_factory: Callable[[], nn.Module] | None = None,
    trust_task: bool = False,
) -> BundleModule:
    """Load every point of the bundle at ``path`` into one :class:`BundleModule`.

    The model comes from ``task``, ``model_factory`` or the bundle's (trusted) task entry,
    as for :func:`autoslim.load_artifact`. Tensors equal across points share memory.
    Each point runs as it was measured: eager torch, or the runtime's own file."""
    path = Path(path)
    manifest = read_manifest(path)
    if task is not None and not _task_fits(task, manifest):
        raise AutoslimError(
            f"bundle {path} was made for another model (weights {manifest.task['params']['weights_sha'][:12]}); "
            "pass the task it was made from"
        )
    entry = manifest.task["entry"]
    if task is None and model_factory is not None:
        task = model_only_task(model_factory, entry)
    with trusted(trust_task):
        task = task or load_task(_recipe_task(path, manifest))
    store = read_store(path, manifest)
    shared: dict[str, torch.Tensor] = {}
    models = {
        point.name: _load_point(path, point, manifest, task, store, shared)
        for point in manifest.points
    }
    return BundleModule(models, manifest, task).eval()


def _task_fits(task: Task, manifest: Manifest) -> bool:
    """A task handed in from Python names its weights; the bundle's points recorded
    theirs (``weights_sha``), so a bundle of another model is refused before loading."""
    recorded = manifest.task.get("params", {}).get("weights_sha")
    return not (recorded and task.identity and task.identity != recorded)


def _recipe_task(path: Path, manifest: Manifest):
    recipe, _, _ = point_files(path, manifest.points[0].name)
    return recipe.task


def _load_point(
    path: Path,
    point: PointEntry,
    manifest: Manifest,
    task: Task,
    store: dict[str, torch.Tensor],
    shared: dict[str, torch.Tensor],
) -> nn.Module:
    recipe, layout, keys = point_files(path, point.name)
    if not same_task(task_ref(recipe), manifest.task):
        raise AutoslimError(f"damaged bundle {path}: point {point.name} names another task")
    if point.runtime not in ("torch", "torch-compile"):
        return _deployed_point(path, point, recipe, task)
    with tracing_example(task):
        model = rebuild_structure(task.build_model(), recipe)
    missing = sorted(set(keys.values()) - set(store))
    if missing:
        raise AutoslimError(f"damaged bundle {path}: point {point.name} misses stored tensors")
    tensors = {name: store[key] for name, key in keys.items()}
    try:
        check_tensors(tensors, layout, model.state_dict())
        state = decode_state(tensors, layout)
        model.load_state_dict(_share(state, shared), strict=True, assign=True)
    except (AutoslimError, RuntimeError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise AutoslimError(
            f"bundle {path}: point {point.name} does not fit the task's model ({first})"
        ) from None
    model = deploy_runtime(model.eval(), recipe, task_example(task, recipe.target.batch_size))
    if point.runtime == "torch-compile":  # compiled as it was measured
        from autoslim.deploy.runtimes import runtime_named

        model, _ = runtime_named(point.runtime).compiled(model, recipe, recipe.target)
    return model


def _share(state: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]) -> dict:
    """Decoded tensors equal to one another point already holds become that tensor, so
    the points share its memory (``load_state_dict(assign=True)`` keeps it)."""
    return {name: shared.setdefault(tensor_key(t), t) for name, t in state.items()}


def _deployed_point(path: Path, point: PointEntry, recipe, task: Task) -> nn.Module:
    """A point measured on ONNX Runtime or OpenVINO runs its own shipped file."""
    from autoslim.deploy.runtimes import runtime_named

    runtime = runtime_named(point.runtime)
    missing = runtime.missing()
    if missing:
        raise AutoslimError(f"point {point.name}: {missing}")
    folder = path / POINTS_DIR / point.name
    return runtime.deploy(folder, task, recipe.target).module


def time_switches(bundle: BundleModule, count: int = 2000) -> list[float]:
    """Milliseconds of each of ``count`` switches, alternating between the ladder's ends."""
    times = []
    ends = (0, len(bundle.ladder) - 1)
    for i in range(count):
        start = time.perf_counter()
        bundle.select(ends[i % 2])
        times.append((time.perf_counter() - start) * 1e3)
    return times
