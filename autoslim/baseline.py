"""The trained fp32 baseline every recipe starts from, trained once and cached.

The cache key is a content hash of the task (entry point, params, task source code), so
two experiments on the same task share one baseline and an edited task retrains. The
cache lives in ``$AUTOSLIM_CACHE`` (default ``~/.cache/autoslim``) as safetensors plus a
JSON record of the baseline's metrics; it is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from autoslim.recipe import TaskRef
from autoslim.task import Task, task_fingerprint
from autoslim.train import train

BASELINE_SEED = 0


def cache_root() -> Path:
    return Path(os.environ.get("AUTOSLIM_CACHE", Path.home() / ".cache" / "autoslim"))


@dataclass
class Baseline:
    model: nn.Module
    metrics: dict[str, float]
    fingerprint: str
    weights_sha: str = ""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_baseline(ref: TaskRef, task: Task, *, log: bool = False) -> Baseline:
    """Return the trained fp32 model for ``task``, training and caching it if needed."""
    fingerprint = task_fingerprint(ref, task.train.cpu_threads, task.identity)
    folder = cache_root() / "baselines" / fingerprint
    torch.manual_seed(BASELINE_SEED)  # the initial weights are part of what the cache key promises
    model = task.build_model()
    if (folder / "model.safetensors").is_file():
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        metrics = json.loads((folder / "metrics.json").read_text())["metrics"]
        return Baseline(model.eval(), metrics, fingerprint, _sha(folder / "model.safetensors"))
    if log:
        # stderr: stdout carries results (e.g. a benchmark's --json)
        print(
            f"training the fp32 baseline for {task.name} ({task.train.epochs} epochs, cached as {fingerprint})",
            file=sys.stderr,
        )
    train(
        model,
        task,
        epochs=task.train.epochs,
        lr=task.train.lr,
        seed=BASELINE_SEED,
        weight_decay=task.train.weight_decay,
        desc="fp32 baseline",
    )
    metrics = {
        f"val_{task.metric_name}": task.evaluate(model, "val"),
        f"test_{task.metric_name}": task.evaluate(model, "test"),
    }
    _write_cache(folder, model, metrics, ref)
    return Baseline(model.eval(), metrics, fingerprint, _sha(folder / "model.safetensors"))


def _write_cache(folder: Path, model: nn.Module, metrics: dict[str, float], ref: TaskRef) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    state = unshared_state(model)
    save_file(state, str(tmp / "model.safetensors"))
    record = {"metrics": metrics, "task": ref.model_dump()}
    (tmp / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    try:
        tmp.rename(folder)
    except OSError:
        # Another process cached the same baseline first; theirs is identical.
        shutil.rmtree(tmp, ignore_errors=True)


def unshared_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tensor stored once per key: safetensors refuses tensors
    that share memory, as tied weights (``head.weight is embed.weight``) do. Loading it
    back into the model ties them again, since both keys name one parameter."""
    seen: set[tuple[int, int]] = set()
    state = {}
    for key, value in model.state_dict().items():
        tensor = value.detach()
        mark = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        state[key] = tensor.clone().contiguous() if mark in seen else tensor.contiguous()
        seen.add(mark)
    return state
