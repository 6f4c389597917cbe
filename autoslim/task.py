"""Tasks: what autoslim compresses (a model factory), on what data, judged by which metric.

An experiment names a task by entry point (``package.module:function``); calling it with
the experiment's params returns a :class:`Task`. Data is built lazily and once, because
loading an artifact only needs the model factory, not the data.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from autoslim._threads import TRAIN_THREADS, fixed_threads
from autoslim.errors import AutoslimError
from autoslim.recipe import TaskRef


@dataclass(frozen=True)
class Split:
    """One data split held in memory as tensors (inputs, targets)."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        # A seeded generator makes the shuffling order part of the recipe's determinism.
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            TensorDataset(self.inputs, self.targets),
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
        )


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split

    def get(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise AutoslimError(f"unknown split {name!r} (known: train, val, test)")
        return getattr(self, name)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets)


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy as a fraction in [0, 1] (1 pt = 0.01)."""
    model.eval()
    correct = total = 0
    for inputs, targets in loader:
        correct += (model(inputs).argmax(dim=1) == targets).sum().item()
        total += len(targets)
    return correct / max(total, 1)


@dataclass(kw_only=True)
class TrainSettings:
    """How the fp32 baseline is trained (fine-tunes reuse the batch size)."""

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0


@dataclass(kw_only=True, eq=False)
class Task:
    """A model factory, its data and its metric.

    ``loss`` is the train step's objective; ``metric`` is what the search maximises (or
    minimises, per ``metric_direction``). Both are plain callables so a task can bring
    any model family without subclassing.
    """

    name: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[], Splits]
    metric_name: str = "accuracy"
    metric_direction: str = "maximize"
    metric: Callable[[nn.Module, DataLoader], float] = accuracy
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    train: TrainSettings = field(default_factory=TrainSettings)
    eval_batch_size: int = 256
    # The best value the metric can take, when it has one (accuracy: 1.0). Early stopping
    # uses it to skip, before any training, a trial that even a perfect metric would not
    # bring onto the front.
    metric_best: float | None = None

    @property
    def best_possible_metric(self) -> float | None:
        if self.metric_best is not None:
            return self.metric_best
        return 1.0 if self.metric is accuracy else None

    @cached_property
    def data(self) -> Splits:
        return self.load_data()

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        # On training's fixed thread count: the metric must not depend on the machine's
        # cores, and trials running side by side must not each start a thread per core.
        with fixed_threads():
            return float(self.metric(model, self.data.get(split).loader(self.eval_batch_size)))

    def example_batch(self, batch_size: int) -> torch.Tensor:
        """A real batch from the validation split, tiled if the split is smaller."""
        inputs = self.data.val.inputs
        reps = -(-batch_size // len(inputs))
        return inputs.repeat(reps, *([1] * (inputs.dim() - 1)))[:batch_size].contiguous()


def model_only_task(build_model: Callable[[], nn.Module], name: str) -> Task:
    """A task that can only build its model: enough to load an artifact with no import."""

    def no_data() -> Splits:
        raise AutoslimError(f"the task {name!r} was given as a model factory alone and has no data")

    return Task(name=name, build_model=build_model, load_data=no_data)


def load_task(ref: TaskRef) -> Task:
    """Call the task entry point named in an experiment or recipe, if it is trusted
    (:mod:`autoslim.trust`); an untrusted entry is refused before anything is imported."""
    from autoslim.trust import resolve_factory

    factory = resolve_factory(ref.entry)
    try:
        task = factory(**ref.params)
    except TypeError as exc:
        raise AutoslimError(f"task entry {ref.entry!r} rejected its params: {exc}") from None
    if not isinstance(task, Task):
        raise AutoslimError(f"task entry {ref.entry!r} returned {type(task).__name__}, not a Task")
    return task


def task_fingerprint(ref: TaskRef) -> str:
    """Content hash of the task: entry, params and the task module's source code.

    Hashing the source means editing the model or the data pipeline retrains the
    cached baseline instead of silently reusing a stale one.
    """
    from autoslim.trust import resolve_factory

    module = inspect.getmodule(resolve_factory(ref.entry))
    try:
        source = inspect.getsource(module) if module is not None else ""
    except (OSError, TypeError):
        source = ""

    payload = json.dumps(
        {"entry": ref.entry, "params": ref.params, "train_threads": TRAIN_THREADS},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((payload + "\n" + source).encode()).hexdigest()[:16]
