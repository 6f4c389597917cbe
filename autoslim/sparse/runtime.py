"""Putting pruned Linear layers on the sparse kernel, only where it was measured faster.

Called when an artifact is loaded for its target: each ``nn.Linear`` whose weight is at
least :data:`MIN_SPARSITY` zeros is compared against the cached, measured CSR/dense
crossover for its shape, rows and threads (:mod:`autoslim.sparse.crossover`); layers
below the crossover stay plain dense ``nn.Linear``. Convolutions stay dense: their CSR
lowering needs the input size, and was not measured faster on these CPUs.

The crossover is timed at the rows each layer really multiplies. A Linear applied to an
input of shape ``[..., in_features]`` multiplies ``prod(shape[:-1])`` rows: a batch of
64 for an MLP, but 64 x 128 tokens for a transformer's projections, and which kernel
wins changes with it (timed at 64 rows, BERT at 90 % sparsity ran CSR on 73 of its 74
Linear layers, at 1.25-1.31x the fp32 latency). So the rows are recorded by forward
pre-hooks while the model runs one example batch of ``target.batch_size`` (the task's
:meth:`~autoslim.task.Task.example_batch`, the batch latency is timed on). Only without
an example (a task that has no data) is every layer timed at ``target.batch_size`` rows.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn

from autoslim.data import call_model
from autoslim.errors import AutoslimError
from autoslim.recipe import Target
from autoslim.sparse.crossover import measure_crossover
from autoslim.sparse.execute import SparseLinear, choose_kernel, sparsity_of

# Below this no measured crossover on these machines was ever reached; skip the timing.
MIN_SPARSITY = 0.5

# One example input of the model, or a function giving it (None: no example available),
# called only if some layer needs timing, so a model with nothing to time never loads data.
Example = torch.Tensor | Callable[[], torch.Tensor | None] | None

# The example of the model being saved, for the storage codecs' kernel plan: their
# ``plan(model, recipe)`` has no room for it (see :func:`example_input`).
_EXAMPLE: ContextVar[Example] = ContextVar("autoslim_runtime_example", default=None)


@contextlib.contextmanager
def example_input(example: Example) -> Iterator[None]:
    """Within this block, :func:`planned_kernels` (and so the ``fastest`` storage plan,
    which asks it) records rows on ``example`` when it is given none itself."""
    token = _EXAMPLE.set(example)
    try:
        yield
    finally:
        _EXAMPLE.reset(token)


def task_example(task: Any, batch_size: int) -> Callable[[], torch.Tensor | None]:
    """The task's example batch, fetched on first call; None for a task without data.

    ``task`` is a :class:`~autoslim.task.Task` or a function returning one (loading a
    recipe's task is left until a layer needs the rows). A task given as a model factory
    alone has no data; its layers are timed at ``batch_size`` rows as before.
    """
    cached: list[torch.Tensor | None] = []

    def get() -> torch.Tensor | None:
        if not cached:
            cached.append(_fetch_example(task, batch_size))
        return cached[0]

    return get


def _fetch_example(task: Any, batch_size: int) -> torch.Tensor | None:
    try:
        resolved = task() if callable(task) and not hasattr(task, "example_batch") else task
        return None if resolved is None else resolved.example_batch(batch_size)
    except AutoslimError:
        return None  # no data (a model factory alone), or an untrusted task: no example
    except Exception as exc:  # noqa: BLE001 — a task's data failing must not stop a load
        warnings.warn(
            f"no example batch ({type(exc).__name__}: {exc}); sparse crossovers are timed "
            f"at batch_size={batch_size} rows",
            stacklevel=3,
        )
        return None


def _candidates(model: nn.Module, target: Target) -> list[tuple[str, nn.Linear]]:
    if not target.sparse_kernels or target.device != "cpu":
        return []
    return [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear and sparsity_of(m.weight.detach()) >= MIN_SPARSITY
    ]


def layer_rows(
    model: nn.Module, example: torch.Tensor, names: list[str] | None = None
) -> dict[str, tuple[int, ...]]:
    """The rows each Linear layer (or those in ``names``) multiplies when ``model`` runs
    ``example``: ``prod(input.shape[:-1])`` per call, distinct values in call order.

    The model runs once in eval mode under ``inference_mode``, its training flags put
    back after. A layer the example never reaches is left out.
    """
    wanted = set(names) if names is not None else None
    rows: dict[str, list[int]] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or (wanted is not None and name not in wanted):
            continue

        def record(module, args, kwargs, name=name):
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.dim() >= 1:
                seen = rows.setdefault(name, [])
                count = math.prod(x.shape[:-1])
                if count not in seen:
                    seen.append(count)

        handles.append(module.register_forward_pre_hook(record, with_kwargs=True))
    training = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            call_model(model, example)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in training.items():
            module.training = mode
    return {name: tuple(counts) for name, counts in rows.items()}


def _timed_rows(
    model: nn.Module,
    target: Target,
    candidates: list[tuple[str, nn.Linear]],
    example: Example,
) -> dict[str, tuple[int, ...]]:
    """Per candidate layer, the row counts to time its crossover at.

    With an example: the rows the layer saw running it (none for a layer it never
    reaches, which then stays dense untimed). Without: ``target.batch_size``.
    """
    if example is None:
        example = _EXAMPLE.get()
    if callable(example):
        example = example()
    if example is None:
        return {name: (target.batch_size,) for name, _ in candidates}
    return layer_rows(model, example, [name for name, _ in candidates])


def warm_crossovers(model: nn.Module, target: Target, example: Example = None) -> None:
    """Measure (and cache) the crossovers a later :func:`sparse_runtime` will read; give
    the same ``example`` it will get, so the rows (and the cache keys) are the same."""
    planned_kernels(model, target, example)


def planned_kernels(model: nn.Module, target: Target, example: Example = None) -> dict[str, str]:
    """Per qualifying Linear layer, the kernel :func:`sparse_runtime` runs: "csr" or "dense".

    Each layer's crossover is timed at the rows it multiplies on ``example`` (see the
    module docstring); a layer seen at several row counts runs CSR only if CSR wins at
    every one, and a layer ``example`` never reaches runs dense. Layers not listed run as
    they are (dense). The artifact writer calls this too, with the ``fastest`` storage
    policy, so the stored format and the kernel come from one decision.
    """
    candidates = _candidates(model, target)
    if not candidates:
        return {}
    rows = _timed_rows(model, target, candidates, example)
    plan = {}
    for name, linear in candidates:
        sparsity = sparsity_of(linear.weight.detach())
        kernels = [
            choose_kernel(
                sparsity,
                measure_crossover(linear.out_features, linear.in_features, count, target.threads),
            )
            for count in rows.get(name, ())
        ]
        plan[name] = "csr" if kernels and all(k == "csr" for k in kernels) else "dense"
    return plan


def sparse_runtime(model: nn.Module, target: Target, example: Example = None) -> nn.Module:
    """Swap qualifying Linear layers for CSR ``SparseLinear``; return the model."""
    for name, kernel in planned_kernels(model, target, example).items():
        if kernel == "csr":
            linear = model.get_submodule(name)
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                child,
                SparseLinear.from_dense(
                    linear, batch=target.batch_size, threads=target.threads, kernel="csr"
                ),
            )
    return model
