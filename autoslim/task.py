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
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from autoslim._threads import TRAIN_THREADS, fixed_threads
from autoslim.data import LoaderSplit, Split, call_model, split_batch, tile, to_device
from autoslim.errors import AutoslimError
from autoslim.recipe import TaskRef


@dataclass(frozen=True)
class Splits:
    train: Split | LoaderSplit
    val: Split | LoaderSplit
    test: Split | LoaderSplit

    def get(self, name: str) -> Split | LoaderSplit:
        if name not in ("train", "val", "test"):
            raise AutoslimError(f"unknown split {name!r} (known: train, val, test)")
        return getattr(self, name)


def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, targets)


@torch.inference_mode()
def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy as a fraction in [0, 1] (1 pt = 0.01)."""
    model.eval()
    device = next(model.parameters(), torch.empty(0)).device
    correct = total = 0
    for batch in loader:
        inputs, targets = split_batch(batch)
        predicted = call_model(model, to_device(inputs, device)).argmax(dim=-1).cpu()
        correct += (predicted == targets).sum().item()
        total += len(targets)
    return correct / max(total, 1)


@dataclass(kw_only=True)
class TrainSettings:
    """How the fp32 baseline is trained; fine-tunes reuse the batch size, device, threads
    and mixed precision.

    ``device`` is where every fine-tune runs: ``"cpu"``, ``"cuda"`` (``"cuda:1"``), or
    ``"auto"`` (CUDA when there is one). ``threads`` is the CPU thread count (None: the
    machine's cores); it changes a CPU run's bits, so it is part of the baseline's key.
    ``amp`` trains under bf16 autocast on a GPU that has it (fp16 with loss scaling
    otherwise); CPU training stays fp32. ``train_step(model, inputs, targets) -> loss``
    and ``optimizer(params, lr) -> Optimizer`` replace the task loss and Adam for models
    that bring their own.
    """

    epochs: int = 30
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    device: str = "cpu"
    threads: int | None = None
    amp: bool = True
    train_step: Callable | None = None
    optimizer: Callable | None = None

    @property
    def cpu_threads(self) -> int:
        return self.threads or TRAIN_THREADS

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise AutoslimError(
                f"training device {self.device!r} asked for, but CUDA is not available"
            )
        return device


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
    # What makes this task's baseline unique beyond its entry and source: a hash of the
    # weights of a trained model handed in from Python (empty for factory-built tasks).
    identity: str = ""
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
        with fixed_threads(self.train.cpu_threads):
            return float(self.metric(model, self.data.get(split).loader(self.eval_batch_size)))

    def example_batch(self, batch_size: int):
        """A real batch of the model's inputs (a tensor, tuple or dict) from the validation
        split, tiled if the split is smaller."""
        inputs, _ = self.data.val.take(batch_size)
        return tile(inputs, batch_size)


def model_only_task(build_model: Callable[[], nn.Module], name: str) -> Task:
    """A task that can only build its model: enough to load an artifact with no import."""

    def no_data() -> Splits:
        raise AutoslimError(f"the task {name!r} was given as a model factory alone and has no data")

    return Task(name=name, build_model=build_model, load_data=no_data)


def load_task(ref: TaskRef) -> Task:
    """Call the task entry point named in an experiment or recipe, if it is trusted
    (:mod:`autoslim.trust`); an untrusted entry is refused before anything is imported."""
    from autoslim.shared_tasks import shared_task
    from autoslim.trust import resolve_factory

    task = shared_task(ref.entry)
    if task is not None:  # handed over by the process that started this one
        task.train = replace(task.train, **ref.train.overrides())
        return task
    factory = resolve_factory(ref.entry)
    try:
        task = factory(**ref.params)
    except TypeError as exc:
        raise AutoslimError(f"task entry {ref.entry!r} rejected its params: {exc}") from None
    if not isinstance(task, Task):
        raise AutoslimError(f"task entry {ref.entry!r} returned {type(task).__name__}, not a Task")
    task.train = replace(task.train, **ref.train.overrides())
    return task


def task_fingerprint(ref: TaskRef, threads: int = TRAIN_THREADS, identity: str = "") -> str:
    """Content hash of the task: entry, params, the CPU threads it trains with and the
    task module's source code.

    Hashing the source means editing the model or the data pipeline retrains the
    cached baseline instead of silently reusing a stale one; hashing only what the
    factory uses (:func:`factory_source`) means editing another task of the same module
    does not.
    """
    from autoslim.trust import resolve_factory

    source = "" if identity else factory_source(resolve_factory(ref.entry))

    record = {"entry": ref.entry, "params": ref.params, "train_threads": threads}
    if identity:
        record["identity"] = identity
    if ref.train.overrides():  # device and mixed precision change the trained bits too
        record["train"] = ref.train.overrides()
    payload = json.dumps(
        record,
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((payload + "\n" + source).encode()).hexdigest()[:16]


def factory_source(factory: Callable) -> str:
    """The source of ``factory`` and of every function, class and simple constant of its
    module that it uses, directly or through them: what the task it builds depends on
    within that module. Other tasks sharing the module do not enter it."""
    module = inspect.getmodule(factory)
    parts: dict[str, str] = {}
    todo: list[Any] = [factory]
    while todo:
        obj = todo.pop()
        name = getattr(obj, "__qualname__", repr(obj))
        if name in parts:
            continue
        try:
            parts[name] = inspect.getsource(obj)
        except (OSError, TypeError):
            parts[name] = ""
            continue
        for used in sorted(_names_used(obj)):
            ref = getattr(module, used, None)
            if (inspect.isfunction(ref) or inspect.isclass(ref)) and ref.__module__ == getattr(
                module, "__name__", None
            ):
                todo.append(ref)
            elif isinstance(ref, (str, int, float, tuple, frozenset)) and not isinstance(ref, bool):
                parts[f"{used}="] = repr(ref)
    return "\n".join(parts[k] for k in sorted(parts))


def _names_used(obj: Any) -> set[str]:
    """Global names a function's code (nested functions included) or a class's methods
    and bases read."""
    if inspect.isclass(obj):
        names = {b.__name__ for b in obj.__bases__}
        for member in vars(obj).values():
            function = getattr(member, "__func__", member)
            if inspect.isfunction(function):
                names |= _names_used(function)
        return names
    code = getattr(obj, "__code__", None)
    names: set[str] = set()
    stack = [code] if code is not None else []
    while stack:
        current = stack.pop()
        names |= set(current.co_names)
        stack += [c for c in current.co_consts if inspect.iscode(c)]
    return names
