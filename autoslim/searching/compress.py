"""``autoslim.compress``: a trained model and its data in, a measured Pareto front out.

The Python way in, for a model that already exists (a notebook, a script, a training
job): no task module, no YAML. The model handed in IS the fp32 baseline and is never
retrained; the data may be tensors, Datasets or DataLoaders with tensor, tuple or dict
inputs. It runs the same study, run folder, front, recipes and artifacts as
``autoslim search``, so ``autoslim pareto``, ``report`` and the notebooks read its run.

The task is registered in this process under ``autoslim_session:<name>`` and handed to
the measuring processes by :mod:`autoslim.shared_tasks`; a later process has to be given
it again (``autoslim.load(path, task=run.task)``), since nothing importable names it.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from autoslim.data import as_split
from autoslim.errors import AutoslimError
from autoslim.recipe import Target, TaskRef, Training, validate_model
from autoslim.run import Run
from autoslim.searching.experiment import (
    Constraint,
    Experiment,
    SearchSettings,
    narrow_to_runtime,
    resolve_space,
)
from autoslim.shared_tasks import SESSION_MODULE
from autoslim.space import SearchSpace
from autoslim.task import Splits, Task, TrainSettings, accuracy, cross_entropy
from autoslim.trust import register_task

DEFAULT_COSTS = {"size_bytes": "minimize", "latency_ms": "minimize"}


def compress(
    model: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any = None,
    metric: Callable[[nn.Module, Any], float] | None = None,
    metric_name: str | None = None,
    objectives: Mapping[str, str] | None = None,
    constraints: list[dict] | None = None,
    space: str | Path | SearchSpace | list[dict] = "prune_quant",
    trials: int = 40,
    target: Target | dict | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    device: str = "auto",
    threads: int | None = None,
    amp: bool = True,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    train_step: Callable | None = None,
    optimizer: Callable | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    search: Mapping[str, Any] | None = None,
    tracking: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> Run:
    """Search compressions of the trained ``model``; returns the run (``run.front()``,
    ``run.recipe(n)``, ``run.load(n)``).

    - ``train``/``val``/``test``: a ``DataLoader``, a ``Dataset`` or an ``(inputs,
      targets)`` pair of tensors. Batches are ``(x, y)``, ``(x1, x2, ..., y)`` or a dict
      with ``labels``. ``val`` steers the search; ``test`` (default: ``val``) is reported.
    - ``metric(model, loader) -> float`` over the split's own loader (default: top-1
      accuracy, named ``accuracy``); its direction is the one ``objectives`` gives it.
    - ``objectives``: name → direction; default the metric, ``size_bytes`` and
      ``latency_ms``. ``constraints``: as in an experiment file, e.g.
      ``[{"objective": "accuracy", "max_drop": 0.01}]``.
    - ``space``: a preset name (``prune_quant``, ``structured``, ...), a YAML path, a
      :class:`SearchSpace` or its list of components.
    - ``target``: where it runs and is measured (:class:`autoslim.Target`).
    - ``device``/``threads``/``amp``: where fine-tunes run (``"auto"``: CUDA when there
      is one), CPU threads (default: the machine's cores) and bf16/fp16 autocast on GPU.
    - ``search``: further search settings (``sampler``, ``timeout``, ``early_stopping``, ...);
      ``tracking``: e.g. ``{"mlflow": {"uri": "sqlite:///mlflow.db"}}`` logs every trial.
    - ``loss``/``train_step``/``optimizer``: the fine-tune objective
      (``loss(outputs, targets)``, default cross-entropy), or a whole step
      ``train_step(model, inputs, targets) -> loss`` for models with their own loss, and
      ``optimizer(params, lr)`` instead of Adam.
    """
    from autoslim.searching.driver import run_search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = _run_name(name, model)
    metric_name = metric_name or ("accuracy" if metric is None else _callable_name(metric))
    objectives = dict(objectives or {metric_name: "maximize", **DEFAULT_COSTS})
    direction = objectives.get(metric_name, "maximize")
    task = _task(
        model,
        name=name,
        splits=(train, val, test if test is not None else val),
        metric=metric,
        metric_name=metric_name,
        direction=direction,
        settings=TrainSettings(
            epochs=0,  # the model handed in is the baseline: never retrained
            lr=lr,
            batch_size=_batch_size(train),
            threads=threads or torch.get_num_threads(),
            train_step=train_step,
            optimizer=optimizer,
        ),
        loss=loss,
    )
    entry = f"{SESSION_MODULE}:{name}"
    # The params name the weights: a run folder of another model (or of this one
    # retrained) under the same name is then a changed task, refused on resume.
    register_task(entry, lambda **_: task)
    training = validate_model(
        Training, {"device": device, "threads": threads, "amp": amp}, what="training settings"
    )
    experiment = validate_model(
        Experiment,
        {
            "name": name,
            "task": TaskRef(
                entry=entry, params={"weights_sha": task.identity}, train=training
            ).model_dump(),
            "space": space.spec() if isinstance(space, SearchSpace) else _space_spec(space),
            "objectives": objectives,
            "constraints": [
                validate_model(Constraint, c, what="constraint") for c in constraints or []
            ],
            "search": validate_model(
                SearchSettings,
                {"trials": trials, "seed": seed, **dict(search or {})},
                what="search settings",
            ),
            "target": target or {},
            "tracking": dict(tracking or {}),
        },
        what="compress() arguments",
    )
    space_obj = space if isinstance(space, SearchSpace) else resolve_space(experiment.space, None)
    space_obj = narrow_to_runtime(space_obj, experiment.target)
    run = run_search(
        experiment,
        space_obj,
        task,
        out=out or Path("runs") / name,
        progress=progress,
    )
    run.task = task
    return run


def _task(
    model: nn.Module,
    *,
    name: str,
    splits: tuple[Any, Any, Any],
    metric: Callable | None,
    metric_name: str,
    direction: str,
    settings: TrainSettings,
    loss: Callable | None,
) -> Task:
    baseline = copy.deepcopy(model).cpu().eval()
    train, val, test = (as_split(s) for s in splits)
    if direction not in ("maximize", "minimize"):
        raise AutoslimError(f"objective {metric_name!r}: direction must be maximize or minimize")
    return Task(
        name=name,
        build_model=lambda: copy.deepcopy(baseline),
        load_data=lambda: Splits(train=train, val=val, test=test),
        metric_name=metric_name,
        metric_direction=direction,
        metric=metric or accuracy,
        loss=loss or cross_entropy,
        train=settings,
        identity=weights_identity(baseline),
    )


def weights_identity(model: nn.Module) -> str:
    """A hash of the model's class and every tensor: the baseline cache's key for it."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(
            value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()[:16]


def _space_spec(space: Any) -> Any:
    if isinstance(space, Path):
        return str(space)
    if isinstance(space, (str, list)):
        return space
    raise AutoslimError(
        f"space must be a preset name, a YAML path, a SearchSpace or a list, not {type(space).__name__}"
    )


def _batch_size(train: Any) -> int:
    size = getattr(train, "batch_size", None)
    return size if isinstance(size, int) and size > 0 else 64


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__name__", "metric")
    return name if re.fullmatch(r"[A-Za-z_]\w*", name) and name != "<lambda>" else "metric"


def _run_name(name: str | None, model: nn.Module) -> str:
    name = name or type(model).__name__.lower()
    if not re.fullmatch(r"[A-Za-z_]\w*", name):
        raise AutoslimError(f"name {name!r}: use letters, digits and underscores")
    return name
