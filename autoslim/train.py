"""The one training loop: baseline training and every stage's fine-tune go through it.

Techniques customise it through :class:`TrainHooks` instead of writing loops of their
own: distillation swaps the loss, gradual pruning acts after each step, and early
stopping listens to the per-epoch validation metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from autoslim._threads import fixed_threads
from autoslim.data import call_model, to_device
from autoslim.errors import AutoslimError, TrialFailed
from autoslim.progress import progress
from autoslim.task import Task

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[nn.Module, int], None]
EpochHook = Callable[[nn.Module, int], None]

# A loss this many times its first value means the run has diverged, not just wobbled.
DIVERGENCE_FACTOR = 1e4


@dataclass
class TrainHooks:
    """Extension points of the training loop.

    ``loss`` replaces the task loss (given model, inputs, targets); ``after_step`` runs
    after every optimiser step with the global step index; ``on_epoch_end`` runs after
    each epoch with the epoch index (0-based).
    """

    loss: LossFn | None = None
    after_step: list[StepHook] = field(default_factory=list)
    on_epoch_end: list[EpochHook] = field(default_factory=list)


def train(
    model: nn.Module,
    task: Task,
    *,
    epochs: int,
    lr: float,
    seed: int,
    hooks: TrainHooks | None = None,
    weight_decay: float = 0.0,
    desc: str = "fine-tune",
) -> nn.Module:
    """Train ``model`` in place on the task's train split, on the task's training device,
    and hand it back on the CPU in eval mode.

    Deterministic for a given seed on CPU: the shuffle order and dropout both come from
    the seed. A NaN or exploding loss raises :class:`TrialFailed` with where it happened.
    """
    hooks = hooks or TrainHooks()
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if epochs <= 0 or not params:
        return model
    device = task.train.resolved_device()
    with fixed_threads(task.train.cpu_threads):
        model.to(device)
        try:
            return _train_epochs(
                model,
                task,
                params,
                epochs=epochs,
                lr=lr,
                seed=seed,
                hooks=hooks,
                weight_decay=weight_decay,
                device=device,
                desc=desc,
            )
        finally:
            model.cpu()


@contextmanager
def on_training_device(model: nn.Module, task: Task) -> Iterator[torch.device]:
    """Within this block the model sits on the task's training device (where a GPU makes
    calibration's per-sample backward passes cheap), and afterwards where it was."""
    device = task.train.resolved_device()
    original = next(model.parameters(), torch.empty(0)).device
    model.to(device)
    try:
        with fixed_threads(task.train.cpu_threads):
            yield device
    finally:
        model.to(original)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The dtype fine-tunes autocast to: bf16 on a GPU that has it, else fp16 (with loss
    scaling); None on the CPU, where autocast would change the bits a recipe replays."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _optimizer(task: Task, params: list, lr: float, weight_decay: float):
    if task.train.optimizer is not None:
        return task.train.optimizer(params, lr)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _loss_fn(task: Task, hooks: TrainHooks) -> LossFn:
    if hooks.loss is not None:
        return hooks.loss
    if task.train.train_step is not None:
        return task.train.train_step
    return lambda m, x, y: task.loss(call_model(m, x), y)


def _train_epochs(
    model: nn.Module,
    task: Task,
    params: list,
    *,
    epochs: int,
    lr: float,
    seed: int,
    hooks: TrainHooks,
    weight_decay: float,
    device: torch.device,
    desc: str,
) -> nn.Module:
    optimizer = _optimizer(task, params, lr, weight_decay)
    loss_fn = _loss_fn(task, hooks)
    dtype = autocast_dtype(device, task.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    split = task.data.train
    step, first_loss = 0, None
    for epoch in range(epochs):
        model.train()
        batches = split.batches(task.train.batch_size, shuffle=True, seed=seed + epoch)
        for inputs, targets in progress(
            batches,
            desc=f"{desc} epoch {epoch + 1}/{epochs}",
            total=_steps(split, task),
            unit="batch",
        ):
            inputs, targets = to_device(inputs, device), to_device(targets, device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = loss_fn(model, inputs, targets)
            value = float(loss.detach())
            first_loss = value if first_loss is None else first_loss
            _check_divergence(value, first_loss, epoch, step)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            for hook in hooks.after_step:
                hook(model, step)
            step += 1
        for hook in hooks.on_epoch_end:
            hook(model, epoch)
    model.eval()
    return model


def _steps(split, task: Task) -> int | None:
    """Batches per epoch, where the split knows its length."""
    try:
        return -(-len(split) // task.train.batch_size)
    except (TypeError, AutoslimError):
        return None


def _check_divergence(value: float, first: float, epoch: int, step: int) -> None:
    if not math.isfinite(value):
        raise TrialFailed(f"training loss became {value} at epoch {epoch}, step {step}")
    if value > DIVERGENCE_FACTOR * max(first, 1e-3):
        raise TrialFailed(
            f"training diverged at epoch {epoch}, step {step}: loss {value:.3g} vs {first:.3g} at start"
        )
