"""autoslim: search whole compression pipelines jointly; report only measured gains.

Public API (imported lazily, so ``import autoslim`` stays cheap)::

    run = autoslim.search("experiments/digits.yaml")      # multi-objective study
    run = autoslim.load_run("runs/digits")                 # read a run folder
    recipe = run.recipe(trial_number)                      # a replayable Recipe
    model = autoslim.apply(recipe)                         # compressed nn.Module
    autoslim.save_artifact(model, recipe, "out/")          # safetensors + packed bits
    model = autoslim.load("out/")                          # runnable nn.Module again
    bundle = autoslim.load_bundle("bundle/")               # several points, switched in place

A recipe is data: its task entry is imported only if it is bundled, registered
(``autoslim.register_task`` or the ``autoslim.tasks`` entry-point group) or trusted for
the call (``trust_task=True``; ``--trust-task`` on the command line).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "AutoslimError": "autoslim.errors",
    "TrialFailed": "autoslim.errors",
    "Recipe": "autoslim.recipe",
    "Target": "autoslim.recipe",
    "Task": "autoslim.task",
    "Split": "autoslim.task",
    "Splits": "autoslim.task",
    "SearchSpace": "autoslim.space",
    "ModelInfo": "autoslim.space",
    "load": "autoslim.artifact",
    "load_artifact": "autoslim.artifact",
    "save_artifact": "autoslim.artifact",
    "load_run": "autoslim.run",
    "measure_artifact": "autoslim.measure",
    "register_task": "autoslim.trust",
    "search": "autoslim.searching.driver",
    "compress": "autoslim.searching.compress",
    "load_bundle": "autoslim.bundle.module",
}

__all__ = ["apply", *_EXPORTS]


def apply(recipe: Any, *, trust_task: bool = False, **kwargs: Any) -> Any:
    """Replay a recipe (a :class:`Recipe` or a YAML path) on the task's fp32 model.

    The recipe's task entry is imported only if it is registered or ``trust_task`` is
    true (see :mod:`autoslim.trust`), unless ``task=`` supplies the task."""
    from pathlib import Path

    from autoslim.pipeline import apply_recipe
    from autoslim.recipe import Recipe
    from autoslim.trust import trusted

    if isinstance(recipe, (str, Path)):
        recipe = Recipe.load(recipe)
    with trusted(trust_task):
        return apply_recipe(recipe, **kwargs)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autoslim' has no attribute {name!r}")
