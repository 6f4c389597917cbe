"""Unstructured pruning, layer-wise or global, one-shot or on a schedule, with a masked fine-tune.

Masks live in ``torch.nn.utils.prune``'s reparametrisation (``weight_orig`` × ``weight_mask``,
re-applied by a forward pre-hook), so a fine-tune never revives a pruned weight; this
module decides *which* weights (an importance criterion, see
:mod:`autoslim.techniques.prune.importance`) and *when*:

- ``oneshot``: prune to the target, then fine-tune;
- ``cubic`` / ``polynomial``: Zhu & Gupta's gradual schedule, applied after optimiser
  steps of the fine-tune through ``TrainHooks.after_step``;
- ``iterative``: ``rounds`` of prune → fine-tune, each removing the same share of survivors;
- ``lottery``: iterative magnitude pruning with rewinding (Frankle et al. 2019): the
  surviving weights go back to an early checkpoint of a fresh model trained for
  ``rewind_epochs``, then retrain;
- ``adaptive``: phases of prune → fine-tune whose steps a controller adjusts from the
  validation metric and the latency proxy (:mod:`autoslim.techniques.prune._adaptive`); the
  phases it ran are recorded in the stage (``phases``), and a stage with phases replays
  them without the controller.

A weight pruned once stays pruned (its score is −inf at later events). Everything depends
only on the recipe, seed and data, so replay is exact; an adaptive stage not yet settled
also reads the metric and the measured crossover, which is why its phases are recorded.
Zeros only become bytes and time through the artifact's sparse encoding, never by
assumption.

The layers pruned are the compressible ones (Linear, Conv1d, Conv2d) whose weight no
other module shares (:func:`prunable_layers`): a head tied to an embedding table is left
out, so tied weights stay tied and embedding tables stay whole. Masks are made on each
weight's device, so a schedule's masks can be updated while the fine-tune runs on CUDA.
Calibration data (for gradient criteria) is the first ``calibration_samples`` rows of the
train split, read through ``Split.take`` and only when the criterion needs it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import ClassVar, Literal

import optuna
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext
from autoslim.recipe import resolve_layer_map
from autoslim.registry import (
    ComponentSpec,
    RuntimeForms,
    StageConfig,
    StageHandler,
    register_handler,
)
from autoslim.space import FloatRange, IntRange, ModelInfo, compressible_layers
from autoslim.sparse.runtime import layer_rows
from autoslim.task import Task
from autoslim.techniques.prune._adaptive import (
    AdaptiveController,
    Phase,
    csr_reachable,
    metric_drop,
    sparse_layers,
)
from autoslim.techniques.prune._schedules import (
    is_pruning_step,
    iterative_sparsities,
    polynomial_sparsity,
)
from autoslim.techniques.prune.importance import (
    GradStats,
    calibration_batch,
    collect_stats,
    element_scores,
    get_criterion,
)
from autoslim.train import TrainHooks, on_training_device

__all__ = [
    "MagnitudePruneHandler",
    "MagnitudePruneSpace",
    "PruneConfig",
    "apply_masks",
    "fold_pruning_masks",
    "planned_fine_tunes",
    "prunable_layers",
    "prune_count",
]

Sparsity = float
Schedule = Literal["oneshot", "cubic", "polynomial", "iterative", "lottery", "adaptive"]
UnstructuredCriterion = Literal["l1", "l2", "taylor", "fisher", "hutchinson", "random"]


class PruneConfig(StageConfig):
    """Zero the least important weights: ``global`` ranks all targeted layers together,
    ``layer`` prunes each layer to its own sparsity (``layers`` overrides ``sparsity``)."""

    kind: Literal["prune"] = "prune"
    scope: Literal["global", "layer"] = "global"
    sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    layers: dict[str, float] = Field(default_factory=dict)
    fine_tune_epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0.0)
    criterion: UnstructuredCriterion = "l1"
    calibration_samples: int = Field(default=64, ge=1)
    hutchinson_samples: int = Field(default=16, ge=1)  # Rademacher probes per calibration batch
    schedule: Schedule = "oneshot"
    initial_sparsity: float = Field(default=0.0, ge=0.0, lt=1.0)
    start_step: int = Field(default=0, ge=0)
    end_step: int | None = Field(default=None, ge=1)
    frequency: int = Field(default=10, ge=1)
    power: float = Field(default=3.0, gt=0.0)
    rounds: int = Field(default=3, ge=1)
    rewind_epochs: int = Field(default=1, ge=0)
    # adaptive: planned phases, the largest tolerated val-metric drop per phase, and the
    # phases the controller ran (filled in after apply; given phases are replayed as-is)
    phase_count: int = Field(default=4, ge=1)
    threshold: float = Field(default=0.01, gt=0.0)
    phases: list[Phase] = Field(default_factory=list)

    # Zeros are in the stored weights; which were chosen, and how the rest were trained, is
    # not needed to load them.
    training_fields: ClassVar[frozenset[str]] = frozenset(
        {
            "fine_tune_epochs",
            "lr",
            "criterion",
            "calibration_samples",
            "hutchinson_samples",
            "schedule",
            "initial_sparsity",
            "start_step",
            "end_step",
            "frequency",
            "power",
            "rounds",
            "rewind_epochs",
            "phase_count",
            "threshold",
            "phases",
        }
    )

    def milder(self, fraction: float) -> PruneConfig:
        """Every sparsity scaled by ``fraction``; an adaptive schedule decides its phases again."""
        return self.model_validate(
            {
                **self.model_dump(),
                "sparsity": self.sparsity * fraction,
                "initial_sparsity": self.initial_sparsity * fraction,
                "phases": [],
                "layers": {name: value * fraction for name, value in self.layers.items()},
            }
        )

    @model_validator(mode="after")
    def _check_layers(self) -> PruneConfig:
        if self.scope == "global" and self.layers:
            raise ValueError(
                "per-layer 'layers' needs scope: layer (global ranks all layers together)"
            )
        for name, value in self.layers.items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"sparsity for {name!r} must be in [0, 1), got {value}")
        if self.schedule == "cubic" and self.power != 3.0:
            raise ValueError(
                "schedule cubic has power 3; use schedule polynomial for another power"
            )
        if self.schedule != "oneshot" and self.fine_tune_epochs == 0:
            raise ValueError(f"schedule {self.schedule} needs fine_tune_epochs >= 1")
        if self.schedule == "adaptive":
            self._check_phases()
        elif self.phases:
            raise ValueError("phases are the adaptive schedule's record; set schedule: adaptive")
        return self

    def _check_phases(self) -> None:
        if self.scope != "global":
            raise ValueError("schedule adaptive needs scope: global (phases are global sparsities)")
        steps = [p.sparsity for p in self.phases]
        if steps != sorted(steps):
            raise ValueError(
                f"phase sparsities must not decrease (pruned weights stay pruned), got {steps}"
            )
        if steps and steps[-1] != self.sparsity:
            raise ValueError(f"the last phase must reach sparsity {self.sparsity}, got {steps[-1]}")


def tied_layers(model: nn.Module) -> dict[str, list[str]]:
    """Compressible layers whose weight another module also holds (a language-model head
    tied to its embedding table), with the names of those other modules."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        for param in module._parameters.values():
            if param is not None:
                owners.setdefault(id(param), []).append(name)
    tied = {}
    for name, module in compressible_layers(model).items():
        _, param = _effective(module)
        others = [o for o in owners.get(id(param), []) if o != name]
        if others:
            tied[name] = others
    return tied


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers unstructured pruning acts on: compressible layers whose weight is theirs
    alone. A weight shared with another module (tied to an embedding, or between layers)
    is left out: masking it in one place would let the other revive it during a fine-tune,
    and would prune the embedding table, which techniques keep whole."""
    tied = tied_layers(model)
    return {n: m for n, m in compressible_layers(model).items() if n not in tied}


def prune_count(numel: int, sparsity: float) -> int:
    """The exact number of weights a sparsity removes (round half to even, like Python)."""
    return round(numel * sparsity)


def _effective(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked weight, trained parameter): under a mask the parameter is ``weight_orig``."""
    if hasattr(module, "weight_mask"):
        return module.weight_orig.detach() * module.weight_mask, module.weight_orig
    return module.weight.detach(), module.weight


def _scores(module: nn.Module, config: PruneConfig, stats: GradStats) -> torch.Tensor:
    weight, param = _effective(module)
    scores = element_scores(weight, get_criterion(config.criterion), stats, param).float()
    if hasattr(module, "weight_mask"):
        scores = scores.masked_fill(module.weight_mask == 0, float("-inf"))  # pruned stays pruned
    return scores


def _lowest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Ones except the ``count`` lowest scores (torch's L1Unstructured picks the same),
    on the scores' device."""
    mask = torch.ones(scores.numel(), device=scores.device)
    if count > 0:
        mask[torch.topk(scores.reshape(-1), k=count, largest=False).indices] = 0
    return mask.reshape(scores.shape)


def _set_mask(module: nn.Module, mask: torch.Tensor) -> None:
    weight, _ = _effective(module)
    mask = mask.to(device=weight.device, dtype=weight.dtype)
    if hasattr(module, "weight_mask"):
        module.weight_mask.copy_(mask)
    else:
        torch_prune.custom_from_mask(module, "weight", mask)


@torch.no_grad()
def apply_masks(
    model: nn.Module,
    config: PruneConfig,
    *,
    target: Callable[[float], float] | None = None,
    stats: GradStats | None = None,
) -> list[nn.Module]:
    """Mask every targeted layer; returns the masked modules.

    ``target`` maps a final sparsity (global, or a layer's own) to the one in force now,
    which is how schedules walk towards the recipe's target; by default it is the final.
    """
    stats = stats or GradStats()
    target = target or (lambda final: final)
    layers = prunable_layers(model)
    if not layers:
        return []
    if config.scope == "global":
        sizes = [m.weight.numel() for m in layers.values()]
        count = prune_count(sum(sizes), target(config.sparsity))
        device = _effective(next(iter(layers.values())))[0].device
        flat = (
            torch.cat([_scores(m, config, stats).reshape(-1).to(device) for m in layers.values()])
            if count
            else torch.zeros(sum(sizes), device=device)
        )
        for module, piece in zip(
            layers.values(), _lowest_mask(flat, count).split(sizes), strict=True
        ):
            _set_mask(module, piece.reshape(module.weight.shape))
        return list(layers.values())
    # Names resolve against every compressible layer, so a recipe naming a tied one stays
    # valid; tied layers are then left out (see prunable_layers).
    per_layer = resolve_layer_map(config.layers, compressible_layers(model))
    for name, module in layers.items():
        count = prune_count(module.weight.numel(), target(per_layer.get(name, config.sparsity)))
        scores = (
            _scores(module, config, stats)
            if count
            else torch.zeros(module.weight.shape, device=_effective(module)[0].device)
        )
        _set_mask(module, _lowest_mask(scores, count))
    return list(layers.values())


def _stats(model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> GradStats:
    """What the criterion reads (gradients, Hessian diagonal), and the seeded generator.

    Calibration rows are read from the train split only for criteria that need data, once
    per stage application (a gradual schedule recalibrates on the same rows)."""
    criterion = get_criterion(config.criterion)
    inputs = targets = None
    if criterion.needs_grad or criterion.needs_hessian:
        inputs, targets = _calibration(ctx.task, config.calibration_samples)
    original = next(model.parameters(), torch.empty(0)).device
    with on_training_device(model, ctx.task):
        stats = collect_stats(
            model,
            criterion,
            inputs,
            targets,
            ctx.task.loss,
            seed=ctx.seed + 7919 * ctx.stage_index,
            hessian_samples=config.hutchinson_samples,
            batch_size=ctx.task.train.batch_size,
        )
    return stats.to(original)


_CALIBRATION: weakref.WeakKeyDictionary[Task, dict[int, tuple]] = weakref.WeakKeyDictionary()


def _calibration(task: Task, n: int) -> tuple:
    """The first ``n`` train rows, read once per task and ``n`` (a gradual schedule
    recalibrates on the same rows); a streamed split is read ``n`` rows deep, never whole."""
    per_task = _CALIBRATION.setdefault(task, {})
    if n not in per_task:
        per_task[n] = calibration_batch(task.data.train, n)
    return per_task[n]


def _steps_per_epoch(task: Task) -> int | None:
    """Optimiser steps in one fine-tune epoch (the loader's batches), None if unknown."""
    try:
        return len(task.data.train.loader(task.train.batch_size, shuffle=True, seed=0))
    except (TypeError, AutoslimError):
        return None  # an IterableDataset of unknown length


@torch.no_grad()
def _fold(module: nn.Module, name: str) -> None:
    """Fold ``name``'s mask into a plain tensor whose pruned entries are ``+0.0``.

    torch folds ``orig * mask``, which makes every pruned negative weight ``-0.0``; equal
    in value, but its bit pattern is not zero, and anything that reads bits (a sparse
    encoder) would keep it as a non-zero.
    """
    torch_prune.remove(module, name)
    tensor = getattr(module, name)
    tensor.masked_fill_(tensor == 0, 0.0)


def fold_pruning_masks(model: nn.Module) -> None:
    """Fold every ``torch.nn.utils.prune`` mask in ``model`` into a plain weight with exact zeros."""
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                _fold(module, hook._tensor_name)


def _remove(modules: list[nn.Module]) -> None:
    for module in modules:
        # Folds weight_orig * weight_mask into a plain weight with exact (+0.0) zeros.
        _fold(module, "weight")


@register_handler(PruneConfig)
class MagnitudePruneHandler(StageHandler[PruneConfig]):
    def storage_only(self, config: PruneConfig, forms: RuntimeForms) -> list[str]:
        pruned = config.sparsity > 0 or any(v > 0 for v in config.layers.values())
        return ["unstructured sparsity"] if pruned and not forms.sparse else []

    def apply(self, model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> nn.Module:
        if ctx.skip_training and config.schedule != "oneshot":
            # A dry run builds only the final structure, which every schedule reaches.
            masked = apply_masks(model, config, stats=_stats(model, config, ctx))
            ctx.plan_fine_tunes(planned_fine_tunes(config))
        elif config.schedule in ("cubic", "polynomial"):
            masked = self._gradual(model, config, ctx)
        elif config.schedule in ("iterative", "lottery"):
            masked = self._rounds(model, config, ctx)
        elif config.schedule == "adaptive":
            masked = self._phased(model, config, ctx)
        else:
            masked = apply_masks(model, config, stats=_stats(model, config, ctx))
            ctx.fine_tune(model, epochs=config.fine_tune_epochs, lr=config.lr)
        _remove(masked)
        return model

    def _gradual(self, model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> list[nn.Module]:
        per_epoch = _steps_per_epoch(ctx.task)
        start = config.start_step
        if per_epoch is None:
            if config.end_step is None:
                raise AutoslimError(
                    "gradual pruning: the train split streams data of unknown length; "
                    "give the stage an end_step"
                )
            end = config.end_step
        else:
            steps = config.fine_tune_epochs * per_epoch
            end = min(config.end_step or max(start + 1, int(0.7 * steps)), steps - 1)
        if end <= start:
            raise AutoslimError(
                f"gradual pruning: start_step {start} is not before the end step {end}"
            )
        masked = apply_masks(model, config, target=lambda final: 0.0)

        def after_step(m: nn.Module, step: int) -> None:
            if is_pruning_step(step, start=start, end=end, frequency=config.frequency):

                def now(final: float) -> float:
                    return polynomial_sparsity(
                        step,
                        final=final,
                        initial=min(config.initial_sparsity, final),
                        start=start,
                        end=end,
                        frequency=config.frequency,
                        power=config.power,
                    )

                apply_masks(m, config, target=now, stats=_stats(m, config, ctx))

        ctx.fine_tune(
            model,
            epochs=config.fine_tune_epochs,
            lr=config.lr,
            extra=TrainHooks(after_step=[after_step]),
        )
        return masked

    def _rounds(self, model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> list[nn.Module]:
        checkpoint = _rewind_point(model, config, ctx) if config.schedule == "lottery" else None
        masked: list[nn.Module] = []
        for i in range(config.rounds):

            def now(final: float, i: int = i) -> float:
                return iterative_sparsities(final, config.rounds)[i]

            masked = apply_masks(model, config, target=now, stats=_stats(model, config, ctx))
            if checkpoint is not None:
                _rewind(model, checkpoint)
            ctx.fine_tune(model, epochs=config.fine_tune_epochs, lr=config.lr)
        return masked

    def _phased(self, model: nn.Module, config: PruneConfig, ctx: ApplyContext) -> list[nn.Module]:
        """Replay the recorded phases, or let the controller choose them and record them."""
        if config.phases:
            masked: list[nn.Module] = []
            for phase in config.phases:
                masked = _run_phase(model, config, ctx, phase)
            return masked
        controller = AdaptiveController(
            final=config.sparsity,
            phase_count=config.phase_count,
            threshold=config.threshold,
            epochs=config.fine_tune_epochs,
            lr=config.lr,
        )
        metric = ctx.task.evaluate(model, "val")
        # The rows each Linear multiplies (batch × tokens in a transformer), as the runtime times them.
        rows = layer_rows(model, ctx.task.example_batch(ctx.target.batch_size))
        fast = sparse_layers(model, ctx.target, rows=rows)
        phase: Phase | None = controller.first()
        while phase is not None:
            masked = _run_phase(model, config, ctx, phase)
            now_metric = ctx.task.evaluate(model, "val")
            now_fast = sparse_layers(model, ctx.target, rows=rows)
            drop = metric_drop(metric, now_metric, ctx.task.metric_direction)
            can_move = bool(csr_reachable(model, ctx.target, rows=rows) - now_fast)
            phase = controller.observe(drop, latency_moved=now_fast != fast, can_move=can_move)
            metric, fast = now_metric, now_fast
        ctx.realise(PruneConfig.model_validate(config.model_dump() | {"phases": controller.phases}))
        return masked

    def rebuild(self, model: nn.Module, config: PruneConfig) -> nn.Module:
        return model  # unstructured zeros keep every shape


def planned_fine_tunes(config: PruneConfig) -> list[int] | None:
    """The fine-tunes a schedule runs, in order (None: the adaptive controller decides them)."""
    if config.schedule in ("cubic", "polynomial"):
        return [config.fine_tune_epochs]
    if config.schedule == "iterative":
        return [config.fine_tune_epochs] * config.rounds
    if config.schedule == "lottery":
        return [config.rewind_epochs] + [config.fine_tune_epochs] * config.rounds
    if config.schedule == "adaptive":
        return [phase.epochs for phase in config.phases] if config.phases else None
    return [config.fine_tune_epochs]


def _run_phase(
    model: nn.Module, config: PruneConfig, ctx: ApplyContext, phase: Phase
) -> list[nn.Module]:
    """Prune to the phase's global sparsity, then fine-tune at its epochs and lr."""
    masked = apply_masks(
        model, config, target=lambda final: phase.sparsity, stats=_stats(model, config, ctx)
    )
    ctx.fine_tune(model, epochs=phase.epochs, lr=phase.lr)
    return masked


def _rewind_point(
    model: nn.Module, config: PruneConfig, ctx: ApplyContext
) -> dict[str, torch.Tensor]:
    """The early checkpoint: a fresh model (seeded init) trained for ``rewind_epochs``."""
    torch.manual_seed(ctx.seed)
    fresh = ctx.task.build_model()
    ctx.fine_tune(fresh, epochs=config.rewind_epochs, lr=ctx.task.train.lr)
    state = {k: v.detach().clone() for k, v in fresh.state_dict().items()}
    current = {
        k.replace("weight_orig", "weight"): v.shape
        for k, v in model.state_dict().items()
        if not k.endswith("_mask")
    }
    if {k: v.shape for k, v in state.items()} != current:
        raise AutoslimError(
            "lottery rewinding needs the task's own architecture: put it before structural stages"
        )
    return state


@torch.no_grad()
def _rewind(model: nn.Module, checkpoint: dict[str, torch.Tensor]) -> None:
    """Load the checkpoint into every parameter and buffer, keeping the masks."""
    for name, tensor in model.state_dict().items():
        if name.endswith("_mask"):
            continue
        tensor.copy_(checkpoint[name.replace("weight_orig", "weight")])


class MagnitudePruneSpace(ComponentSpec):
    """Search dimensions: scope, sparsity (global or per layer; the final target of a
    schedule), schedule, criterion, fine-tune epochs (per phase or round) and lr, and for
    the adaptive schedule its threshold and phase count. One-element choice lists and
    one-point ranges add no trial parameter."""

    type: Literal["prune.magnitude"] = "prune.magnitude"
    scopes: list[Literal["global", "layer"]] = Field(default=["global", "layer"], min_length=1)
    sparsity: FloatRange = FloatRange(low=0.0, high=0.95)
    layers: str = ".*"
    fine_tune_epochs: IntRange = IntRange(low=0, high=3)
    lr: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)
    schedules: list[Schedule] = Field(default=["oneshot"], min_length=1)
    criteria: list[UnstructuredCriterion] = Field(default=["l1"], min_length=1)
    # adaptive only: tolerated val-metric drop per phase, and planned phases
    threshold: FloatRange = FloatRange(low=0.005, high=0.05, log=True)
    phase_count: IntRange = IntRange(low=2, high=6)

    @model_validator(mode="after")
    def _sparsity_in_range(self) -> MagnitudePruneSpace:
        if self.sparsity.low < 0.0 or self.sparsity.high >= 1.0:
            raise ValueError(
                f"sparsity range must lie in [0, 1), got [{self.sparsity.low}, {self.sparsity.high}]"
            )
        if "adaptive" in self.schedules and "layer" in self.scopes:
            raise ValueError(
                "schedule adaptive needs scopes: [global] (its phases are global sparsities)"
            )
        if self.threshold.low <= 0.0 or self.phase_count.low < 1:
            raise ValueError("adaptive threshold must be > 0 and phase_count >= 1")
        return self

    def _pick(self, trial: optuna.Trial, key: str, choices: list) -> str:
        return (
            choices[0]
            if len(choices) == 1
            else trial.suggest_categorical(f"{self.name}.{key}", choices)
        )

    def for_runtime(self, forms: RuntimeForms) -> tuple[ComponentSpec | None, list[str]]:
        if forms.sparse or forms.storage_ships:
            return self, []
        return None, [
            f"{self.name}: dropped; unstructured sparsity neither runs faster nor ships "
            f"smaller on {forms.runtime} (its file stores the zeros densely)"
        ]

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> PruneConfig | None:
        if not self.enabled(trial):
            return None
        n = self.name
        scope = self._pick(trial, "scope", self.scopes)
        if scope == "global":
            kwargs = {"sparsity": self.sparsity.suggest(trial, f"{n}.sparsity")}
        else:
            # A layer tied to another module's weight is never pruned (prunable_layers);
            # ModelInfo names such layers once it knows them.
            tied = set(getattr(info, "tied", ()))
            targets = [name for name in info.matching(self.layers) if name not in tied]
            kwargs = {
                "layers": {
                    name: self.sparsity.suggest(trial, f"{n}.sparsity.{name}") for name in targets
                }
            }
        schedule = self._pick(trial, "schedule", self.schedules)
        criterion = self._pick(trial, "criterion", self.criteria)
        epochs = self.fine_tune_epochs.suggest(trial, f"{n}.fine_tune_epochs")
        epochs = max(epochs, 1) if schedule != "oneshot" else epochs
        lr = self.lr.suggest(trial, f"{n}.lr") if epochs > 0 else PruneConfig().lr
        if schedule == "adaptive":  # its parameters exist only in trials that pick it
            kwargs |= {
                "threshold": self.threshold.suggest(trial, f"{n}.threshold"),
                "phase_count": self.phase_count.suggest(trial, f"{n}.phase_count"),
            }
        return PruneConfig(
            scope=scope,
            fine_tune_epochs=epochs,
            lr=lr,
            schedule=schedule,
            criterion=criterion,
            **kwargs,
        )
