"""Replaying a recipe: each stage kind has a handler that applies it to a model.

A handler's ``apply`` runs the technique (with its fine-tune); ``rebuild`` only reshapes
a freshly built model so an artifact's stored weights fit it (a structurally pruned
layer is smaller, a sparse layer may be a different module). Handlers never measure:
measurement happens on the saved artifact, see :mod:`autoslim.measure`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from autoslim import registry
from autoslim.data import tracing_example
from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe, Target
from autoslim.registry import RegistryError, StageConfig, StageHandler
from autoslim.sparse.runtime import Example, sparse_runtime
from autoslim.task import Task, load_task
from autoslim.train import TrainHooks, train

# The ``records`` key under which stages leave their settled configs, by stage index.
REALISED = "realised_stages"
# The ``records`` key holding the index of the stage being applied, so a per-epoch hook
# knows which stages are still to come (early stopping scores the model as it would ship).
CURRENT_STAGE = "current_stage"
# The ``records`` key a dry run leaves the recipe's planned fine-tunes under: the epochs of
# each, in order (None: a stage decides them while it trains), so early stopping knows how
# many epochs a trial still has to come.
PLANNED_FINE_TUNES = "planned_fine_tunes"


@dataclass
class ApplyContext:
    """What a stage may use while applying itself.

    ``hooks`` is shared by every fine-tune of the recipe, which is how a distillation
    stage changes the loss of pruning's fine-tune and how early stopping listens to
    per-epoch validation metrics. ``records`` collects facts a stage decided at apply
    time (e.g. an adaptive schedule's adjustments) so they can be written to the recipe;
    ``target`` is the recipe's, for stages whose decisions depend on the deployment.
    """

    task: Task
    seed: int
    hooks: TrainHooks = field(default_factory=TrainHooks)
    records: dict[str, Any] = field(default_factory=dict)
    stage_index: int = 0
    skip_training: bool = False
    target: Target = field(default_factory=Target)
    recipe: Recipe | None = (
        None  # the recipe being applied (progressive distillation derives from it)
    )

    def realise(self, config: StageConfig) -> None:
        """Record the settled form of the current stage (e.g. the phases an adaptive
        controller chose); :func:`realised_recipe` writes it into the recipe, and replaying
        that recipe runs the settled stage without deciding anything again."""
        self.records.setdefault(REALISED, {})[self.stage_index] = config

    def plan_fine_tunes(self, epochs: list[int] | None) -> None:
        """In a dry run: the fine-tunes a stage would run (None: it decides them while it
        trains). A stage whose dry run skips its own fine-tune calls says so here."""
        planned = self.records.get(PLANNED_FINE_TUNES, [])
        if planned is None or epochs is None:
            self.records[PLANNED_FINE_TUNES] = None  # one unknown stage makes the horizon unknown
        else:
            self.records[PLANNED_FINE_TUNES] = [*planned, *(max(e, 0) for e in epochs)]

    def fine_tune(
        self, model: nn.Module, *, epochs: int, lr: float, extra: TrainHooks | None = None
    ) -> nn.Module:
        """Fine-tune with the recipe's shared hooks plus a stage's own (e.g. mask upkeep).

        A dry run (``skip_training``) builds the final structure without training, which
        is all the cost objectives (size, latency, memory, energy) depend on.
        """
        if self.skip_training:
            self.plan_fine_tunes([epochs])
            return model
        hooks = TrainHooks(
            loss=(extra.loss if extra and extra.loss else self.hooks.loss),
            after_step=[*self.hooks.after_step, *(extra.after_step if extra else [])],
            on_epoch_end=[*self.hooks.on_epoch_end, *(extra.on_epoch_end if extra else [])],
        )
        # Each stage gets its own seed so reordering stages never reuses a shuffle order.
        seed = self.seed + 1000 * (self.stage_index + 1)
        return train(model, self.task, epochs=epochs, lr=lr, seed=seed, hooks=hooks)


def handler_for(stage: StageConfig) -> StageHandler[Any]:
    """The registered handler of ``stage``'s kind (one line if none is)."""
    try:
        return registry.handler_for(stage)
    except RegistryError as exc:
        raise AutoslimError(str(exc)) from None


def apply_recipe(
    recipe: Recipe,
    *,
    task: Task | None = None,
    model: nn.Module | None = None,
    hooks: TrainHooks | None = None,
    dry_run: bool = False,
    records: dict[str, Any] | None = None,
    first_stage: int = 0,
) -> nn.Module:
    """Apply every stage in order to the task's trained fp32 model (or ``model``).

    With the same recipe, seed and thread count this is deterministic on CPU, which is
    what lets an exported recipe rebuild the artifact the search measured. ``records``,
    when given, receives what the stages decided (see :func:`realised_recipe`).
    ``first_stage`` skips the stages before it (``model`` has been through them), keeping
    every later stage's index, and so its seeds, as in the full recipe.
    """
    from autoslim.baseline import load_baseline

    task = task or load_task(recipe.task)
    model = model if model is not None else load_baseline(recipe.task, task).model
    ctx = ApplyContext(
        task=task,
        seed=recipe.seed,
        hooks=hooks or TrainHooks(),
        skip_training=dry_run,
        target=recipe.target,
        records=records if records is not None else {},
        recipe=recipe,
    )
    with tracing_example(task):
        for index, stage in enumerate(recipe.stages):
            if index < first_stage:
                continue
            ctx.stage_index = ctx.records[CURRENT_STAGE] = index
            model = handler_for(stage).apply(model, stage, ctx)
    return model.eval()


def realised_recipe(recipe: Recipe, records: dict[str, Any]) -> Recipe:
    """``recipe`` with each stage that settled itself at apply time replaced by its settled
    form: the recipe to store with the artifact, so replay repeats those decisions."""
    settled = records.get(REALISED, {})
    if not settled:
        return recipe
    stages = [settled.get(i, stage) for i, stage in enumerate(recipe.stages)]
    return recipe.model_copy(update={"stages": stages})


def prepare_runtime(model: nn.Module, recipe: Recipe) -> nn.Module:
    """After the weights are loaded: move layers onto the kernels the target really has
    (each handler's ``runtime`` hook; most leave the model as it is)."""
    for stage in recipe.stages:
        model = handler_for(stage).runtime(model, stage, recipe.target)
    return model


def deploy_runtime(model: nn.Module, recipe: Recipe, example: Example = None) -> nn.Module:
    """A loaded model as it runs when shipped: each stage's kernels, then pruned Linear
    layers on the sparse kernel where the measured crossover says it wins, timed at the
    rows each layer multiplies on ``example`` (the task's example batch; none: at
    ``target.batch_size`` rows, see :mod:`autoslim.sparse.runtime`)."""
    return sparse_runtime(prepare_runtime(model, recipe), recipe.target, example)


def rebuild_structure(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Reshape a fresh model so the artifact's weights load into it."""
    for stage in recipe.stages:
        model = handler_for(stage).rebuild(model, stage)
    return model
