"""Knowledge distillation as a stage that configures every later fine-tune of a recipe.

A ``distill`` stage trains nothing by itself (unless ``epochs`` > 0): it installs a KD
loss into the recipe's shared :class:`~autoslim.train.TrainHooks`, so the pruning
fine-tune, QAT and a final ``recover`` stage after it all learn from the teacher. Hence
it must come first: its default teacher is the trained fp32 model it receives, which is
also why rebuilding an artifact never needs the teacher.

What lives outside the student, and so never reaches the artifact: the frozen teacher,
the learned projection adapters (feature KD across pruned widths, contrastive heads) and
their own Adam optimiser, stepped by an ``after_step`` hook because ``train()`` only
optimises ``model.parameters()``. Adapters are created lazily at the first loss call
that sees a width mismatch, so a student pruned *after* this stage gets them too.

Loss-weight schedules count KD epochs across the whole recipe (an ``on_epoch_end``
hook), so "early" means the first fine-tune epochs after distillation began.

The teacher's probes and its per-sample output cache are in
:mod:`autoslim.techniques.distill._teacher`; the math is in
:mod:`autoslim.techniques.distill._losses`.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import optuna
import torch
from pydantic import Field, model_validator
from torch import nn

from autoslim.data import call_model, first_tensor, map_tensors
from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext, apply_recipe
from autoslim.recipe import Recipe, TaskRef
from autoslim.registry import (
    ComponentSpec,
    StageConfig,
    StageHandler,
    StrictModel,
    register_handler,
)
from autoslim.space import FloatRange, IntRange, ModelInfo, compressible_layers
from autoslim.task import Task
from autoslim.techniques.distill import _losses as L
from autoslim.techniques.distill import _teacher
from autoslim.techniques.distill._losses import (
    ConstantSchedule,
    LinearSchedule,
    PhaseSchedule,
    Schedule,
)
from autoslim.techniques.distill._teacher import (
    INPUT_SUFFIX,
    TeacherCache,
    _is_attention,
    capture,
    teacher_forward,
)
from autoslim.train import TrainHooks

__all__ = [
    "DistillConfig",
    "DistillHandler",
    "DistillSpace",
    "Distiller",
    "RecoverConfig",
    "RecoverHandler",
    "RecoverSpace",
    "TeacherRef",
    "intermediate_recipe",
    "resolve_teacher",
]


class TeacherRef(StrictModel):
    """Another teacher: a task entry's fp32 baseline, or a saved artifact directory."""

    entry: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    params: dict[str, Any] = Field(default_factory=dict)
    artifact: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TeacherRef:
        if (self.entry is None) == (self.artifact is None):
            raise ValueError(
                "a teacher names exactly one of entry (a task) or artifact (a directory)"
            )
        return self


class DistillConfig(StageConfig):
    """KD loss for every later fine-tune: ``(1−α)·CE + α·T²·KL`` plus weighted feature,
    attention, relation (RKD distance + angle) and contrastive terms. Layer names are
    the student's; ``layer_map`` translates them for a teacher with other names."""

    kind: Literal["distill"] = "distill"
    shipped: ClassVar[bool] = False  # how the weights were trained, not what they are
    alpha: float = Field(default=0.5, ge=0.0, le=1.0)
    temperature: float = Field(default=4.0, gt=0.0)
    feature_weight: float = Field(default=0.0, ge=0.0)
    feature_layers: list[str] = Field(default_factory=list)
    attention_weight: float = Field(default=0.0, ge=0.0)
    attention_layers: list[str] = Field(default_factory=list)
    attention_p: float = Field(default=2.0, gt=0.0)
    relation_distance_weight: float = Field(default=0.0, ge=0.0)
    relation_angle_weight: float = Field(default=0.0, ge=0.0)
    contrastive_weight: float = Field(default=0.0, ge=0.0)
    contrastive_dim: int = Field(default=32, ge=2)
    contrastive_temperature: float = Field(default=0.1, gt=0.0)
    embedding_layer: str | None = None
    layer_map: dict[str, str] = Field(default_factory=dict)
    schedule: Schedule = Field(default_factory=ConstantSchedule)
    adapter_lr: float = Field(default=1e-3, gt=0.0)
    epochs: int = Field(default=0, ge=0)
    lr: float = Field(default=1e-3, gt=0.0)
    teacher: TeacherRef | None = None
    cache_teacher: bool = True
    # Function matching (Beyer et al. 2022, "a good teacher is patient and consistent"):
    # each batch is mixed with a shuffled copy of itself, x' = λx + (1−λ)x[perm] with one
    # λ ~ Beta(mixup, mixup) per batch, and the teacher labels x' itself. KD can match the
    # teacher's function off the data's support, which hard labels cannot; the CE term
    # uses the mixed labels (mixup). 0 turns it off; float inputs only.
    mixup: float = Field(default=0.0, ge=0.0)
    # Progressive distillation (teacher → intermediate → final student): > 0 first builds
    # an intermediate student, the rest of this recipe with every compression scaled by
    # this fraction (StageConfig.milder) and distilled from the teacher, and lets it teach
    # the final student. A smaller capacity gap per step is the point (Mirzadeh et al. 2020,
    # teacher assistants). It doubles the trial's training. 0 = off.
    progressive: float = Field(default=0.0, ge=0.0, lt=1.0)


class RecoverConfig(StageConfig):
    """A recovery fine-tune with the recipe's loss (the KD loss when a distill stage came
    first, the task loss otherwise), after the pruning stages and before quantize."""

    kind: Literal["recover"] = "recover"
    shipped: ClassVar[bool] = False
    epochs: int = Field(default=1, ge=0)
    lr: float = Field(default=1e-3, gt=0.0)


def default_probes(model: nn.Module, config: DistillConfig) -> dict[str, tuple[str, str]]:
    """Student probes: ``emb`` (input of the last compressible layer unless named),
    ``feat:<layer>`` (default: the embedding) and ``att:<layer>`` (default: every
    attention module, else every convolution's output). Attention modules are
    ``nn.MultiheadAttention`` and Hugging Face self-attention (one per layer: the module
    holding the query/key projections, not its wrapper)."""
    layers = compressible_layers(model)
    if not layers:
        raise AutoslimError("distill needs a model with at least one Linear or Conv layer")

    def parse(name: str) -> tuple[str, str]:
        return (
            (name.removesuffix(INPUT_SUFFIX), "input")
            if name.endswith(INPUT_SUFFIX)
            else (name, "output")
        )

    emb = config.embedding_layer or list(layers)[-1] + INPUT_SUFFIX
    probes = {"emb": parse(emb)}
    if config.feature_weight:
        for name in config.feature_layers or [emb]:
            probes[f"feat:{name}"] = parse(name)
    if config.attention_weight:
        attention = [n for n, m in model.named_modules() if _is_attention(m)]
        convs = [n for n, m in layers.items() if isinstance(m, (nn.Conv1d, nn.Conv2d))]
        if not (config.attention_layers or attention or convs):
            raise AutoslimError(
                "distill attention_weight needs attention layers (nn.MultiheadAttention, or "
                "Hugging Face self-attention with query/key projections) or Conv layers to "
                f"take attention maps from, and {type(model).__name__} has neither: set "
                "attention_weight to 0 or name attention_layers"
            )
        for name in config.attention_layers or attention or convs:
            mode = "attention" if _is_attention(model.get_submodule(name)) else "output"
            probes[f"att:{name}"] = (name, mode)
    return probes


# ---- teacher outputs, cached per sample ----


# ---- the loss installed into the recipe's hooks ----


class ProjectionAdapter(nn.Module):
    """A learned linear map on one axis: a Linear on the last axis, a 1×1 conv on axis 1."""

    def __init__(self, dim: int, width_in: int, width_out: int, generator: torch.Generator) -> None:
        super().__init__()
        self.dim = dim
        self.weight = nn.Parameter(torch.empty(width_out, width_in))
        nn.init.kaiming_uniform_(
            self.weight, a=math.sqrt(5), generator=generator
        )  # nn.Linear's init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.movedim(self.dim, -1) @ self.weight.t()).movedim(-1, self.dim)


def _mismatched_axis(student: torch.Tensor, teacher: torch.Tensor, what: str) -> int | None:
    if student.shape == teacher.shape:
        return None
    axes = [i for i, (a, b) in enumerate(zip(student.shape, teacher.shape, strict=False)) if a != b]
    if student.dim() != teacher.dim() or len(axes) != 1 or axes[0] == 0:
        raise AutoslimError(
            f"distill {what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "must differ in one width only"
        )
    return axes[0]


class Distiller:
    """The KD loss (a ``TrainHooks.loss``) with its teacher, adapters and epoch count."""

    def __init__(self, config: DistillConfig, teacher: nn.Module, task: Task, *, seed: int) -> None:
        self.config, self.teacher, self.task = config, teacher.eval().requires_grad_(False), task
        self.adapters = nn.ModuleDict()
        self.optimizer: torch.optim.Optimizer | None = None
        self.generator = torch.Generator().manual_seed(seed + 4099)
        self.epoch = 0
        self.student_probes: dict[str, tuple[str, str]] | None = None
        self.teacher_probes: dict[str, tuple[str, str]] = {}
        self.cache: TeacherCache | None = None
        self.mix_rng = torch.Generator().manual_seed(seed + 8191)
        self.beta_rng = np.random.default_rng(seed + 8191)

    def _setup(self, model: nn.Module) -> None:
        self.student_probes = default_probes(model, self.config)
        m = self.config.layer_map
        self.teacher_probes = {
            k: (m.get(name, name), mode) for k, (name, mode) in self.student_probes.items()
        }
        if self.config.cache_teacher:
            # Read at setup, so a test can lower the module's cap.
            self.cache = TeacherCache(max_bytes=_teacher.MAX_CACHE_BYTES)

    def teacher_outputs(self, inputs: Any) -> dict[str, torch.Tensor]:
        """The teacher's logits and probe values on ``inputs``, on their device: from the
        cache for rows it holds, from the teacher for the others."""
        if self.cache is None:
            return teacher_forward(self.teacher, inputs, self.teacher_probes)
        return self.cache.outputs(self.teacher, inputs, self.teacher_probes)

    def adapter(
        self,
        key: str,
        dim: int,
        width_in: int,
        width_out: int,
        device: torch.device | str = "cpu",
    ) -> ProjectionAdapter:
        """The adapter for ``key`` at these widths, created (seeded) and optimised on first use."""
        name = f"{key}|{dim}|{width_in}>{width_out}".replace(".", "_")
        if name not in self.adapters:
            # Initialised on the CPU from the seeded generator, then moved to the features.
            adapter = ProjectionAdapter(dim, width_in, width_out, self.generator)
            self.adapters[name] = adapter.to(device)
            params = list(self.adapters[name].parameters())
            if self.optimizer is None:
                self.optimizer = torch.optim.Adam(params, lr=self.config.adapter_lr)
            else:
                self.optimizer.add_param_group({"params": params})
        return self.adapters[name]

    def project(self, key: str, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        axis = _mismatched_axis(student, teacher, key)
        if axis is None:
            return student
        adapter = self.adapter(key, axis, student.shape[axis], teacher.shape[axis], student.device)
        return adapter(student)

    def __call__(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> torch.Tensor:
        if self.student_probes is None:
            self._setup(model)
        if self.config.mixup:
            return self.mixed_loss(model, inputs, targets)
        t = self.teacher_outputs(inputs)
        with capture(model, self.student_probes) as s:
            logits = call_model(model, inputs)
        return self.combine(logits, s, t, self.task.loss(logits, targets))

    def mix_plan(self, batch: int) -> tuple[float, torch.Tensor]:
        """This batch's λ ~ Beta(m, m) and partner permutation, both from the trial's seed
        (torch's Beta sampler takes no generator, NumPy's does)."""
        m = self.config.mixup
        return float(self.beta_rng.beta(m, m)), torch.randperm(batch, generator=self.mix_rng)

    def mixed_loss(self, model: nn.Module, inputs: Any, targets: torch.Tensor) -> torch.Tensor:
        kinds = []
        map_tensors(inputs, lambda x: kinds.append(x.dtype) or x)
        if not all(dtype.is_floating_point for dtype in kinds):
            names = ", ".join(sorted({str(d) for d in kinds if not d.is_floating_point}))
            raise AutoslimError(
                f"distill mixup needs floating-point inputs; this task's include {names} "
                "(token ids and masks cannot be mixed): set mixup to 0"
            )
        lam, perm = self.mix_plan(len(targets))
        perm = perm.to(first_tensor(inputs).device)
        mixed = map_tensors(inputs, lambda x: lam * x + (1 - lam) * x[perm])
        t = teacher_forward(self.teacher, mixed, self.teacher_probes)
        with capture(model, self.student_probes) as s:
            logits = call_model(model, mixed)
        hard = lam * self.task.loss(logits, targets) + (1 - lam) * self.task.loss(
            logits, targets[perm]
        )
        return self.combine(logits, s, t, hard)

    def combine(self, logits: torch.Tensor, s: dict, t: dict, hard: torch.Tensor) -> torch.Tensor:
        """The weighted sum of the hard-label loss ``hard`` and every enabled KD term."""
        c, w = self.config, self.config.schedule.weights(self.epoch)
        loss = (1 - c.alpha) * hard
        if c.alpha:
            loss = loss + c.alpha * w["response"] * L.soft_kl(logits, t["logits"], c.temperature)
        for key in s:
            if key.startswith("feat:"):
                loss = loss + c.feature_weight * w["feature"] * L.feature_kd(
                    self.project(key, s[key], t[key]), t[key]
                )
            elif key.startswith("att:"):
                term = (
                    L.attention_map_kd(s[key], t[key])
                    if self.student_probes[key][1] == "attention"
                    else L.attention_transfer(s[key], t[key], c.attention_p)
                )
                loss = loss + c.attention_weight * w["attention"] * term
        emb_s, emb_t = s["emb"].flatten(1), t["emb"].flatten(1)
        if c.relation_distance_weight or c.relation_angle_weight:
            rel = c.relation_distance_weight * L.rkd_distance(
                emb_s, emb_t
            ) + c.relation_angle_weight * L.rkd_angle(emb_s, emb_t)
            loss = loss + w["relation"] * rel
        if c.contrastive_weight:
            ps = self.adapter("con:s", 1, emb_s.shape[1], c.contrastive_dim, emb_s.device)(emb_s)
            pt = self.adapter("con:t", 1, emb_t.shape[1], c.contrastive_dim, emb_t.device)(emb_t)
            loss = loss + c.contrastive_weight * w["contrastive"] * L.info_nce(
                ps, pt, c.contrastive_temperature
            )
        return loss

    def after_step(self, model: nn.Module, step: int) -> None:
        """Step the adapters with the gradients the fine-tune's backward pass left."""
        if self.optimizer is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        self.epoch += 1


# ---- stages and search components ----


def resolve_teacher(config: DistillConfig, model: nn.Module, ctx: ApplyContext) -> nn.Module:
    """The frozen teacher: a copy of the fp32 model this first stage receives, a task's
    fp32 baseline, or an artifact (loaded without runtime kernels, so hooks see plain layers)."""
    ref = config.teacher
    if ref is None:
        if ctx.stage_index != 0:
            raise AutoslimError(
                f"the distill stage must be the first stage of a recipe (it is stage {ctx.stage_index}): "
                "its default teacher is the fp32 model it receives; or name a teacher"
            )
        return copy.deepcopy(model)
    if ref.artifact is not None:
        from autoslim.artifact import load_artifact

        return load_artifact(Path(ref.artifact), runtime=False).model
    from autoslim.baseline import load_baseline
    from autoslim.task import load_task

    task_ref = TaskRef(entry=ref.entry, params=ref.params)
    return load_baseline(task_ref, load_task(task_ref)).model


def intermediate_recipe(config: DistillConfig, ctx: ApplyContext) -> Recipe:
    """Progressive distillation's middle link: this distill stage (not progressive, same
    teacher) followed by every later stage of the recipe made milder by
    ``config.progressive``. Applied to the model this stage receives, it gives a student
    between the teacher and the final one, which then teaches the final one."""
    if ctx.recipe is None:
        raise AutoslimError(
            "progressive distillation needs the recipe it belongs to (apply it with apply_recipe)"
        )
    later = [stage.milder(config.progressive) for stage in ctx.recipe.stages[ctx.stage_index + 1 :]]
    first = config.model_copy(update={"progressive": 0.0})
    return ctx.recipe.model_copy(update={"stages": [first, *(s for s in later if s is not None)]})


@register_handler(DistillConfig)
class DistillHandler(StageHandler[DistillConfig]):
    def apply(self, model: nn.Module, config: DistillConfig, ctx: ApplyContext) -> nn.Module:
        if isinstance(ctx.hooks.loss, Distiller):
            raise AutoslimError(
                "a recipe takes one distill stage (it sets the loss of every later fine-tune)"
            )
        teacher = resolve_teacher(config, model, ctx)
        if config.progressive > 0 and not ctx.skip_training:  # a dry run only needs the structure
            teacher = apply_recipe(
                intermediate_recipe(config, ctx), task=ctx.task, model=copy.deepcopy(model)
            )
        distiller = Distiller(config, teacher, ctx.task, seed=ctx.seed)
        ctx.hooks.loss = distiller
        ctx.hooks.after_step.append(distiller.after_step)
        ctx.hooks.on_epoch_end.append(distiller.on_epoch_end)
        ctx.fine_tune(model, epochs=config.epochs, lr=config.lr)
        return model

    def rebuild(self, model: nn.Module, config: DistillConfig) -> nn.Module:
        return model  # the teacher and adapters never touch the student's structure


@register_handler(RecoverConfig)
class RecoverHandler(StageHandler[RecoverConfig]):
    """Fine-tune that keeps every exact zero (pruned weights stay pruned). It refuses a
    quantized model: training would move weights off their grid; QAT is that recovery."""

    def apply(self, model: nn.Module, config: RecoverConfig, ctx: ApplyContext) -> nn.Module:
        from autoslim.techniques.quantize import float_width_of, grid_of

        layers = compressible_layers(model)
        if any(grid_of(m) is not None or float_width_of(m) is not None for m in layers.values()):
            raise AutoslimError(
                "recover must come before quantize (it would move weights off their grid); "
                "use the quantize stage's qat_epochs as the final recovery"
            )
        masks = {
            n: m.weight.detach() != 0 for n, m in layers.items() if bool((m.weight == 0).any())
        }

        @torch.no_grad()
        def keep_zeros(m: nn.Module, step: int) -> None:
            for name, mask in masks.items():
                weight = m.get_submodule(name).weight
                if mask.device != weight.device:  # the fine-tune runs on its own device
                    masks[name] = mask = mask.to(weight.device)
                weight.mul_(mask)

        return ctx.fine_tune(
            model, epochs=config.epochs, lr=config.lr, extra=TrainHooks(after_step=[keep_zeros])
        )

    def rebuild(self, model: nn.Module, config: RecoverConfig) -> nn.Module:
        return model


Zero = FloatRange(low=0.0, high=0.0)


class DistillSpace(ComponentSpec):
    """Search dimensions: α, temperature, the feature/attention/relation/contrastive
    weights and the mixup concentration (a 0–0 range keeps a term off without a
    parameter), the schedule and the stage's own fine-tune. Put it first in the space;
    ``relation_weight`` sets RKD's distance weight and twice that for the angle, Park
    et al.'s 1:2."""

    type: Literal["distill"] = "distill"
    name: str = "distill"
    alpha: FloatRange = FloatRange(low=0.3, high=0.95)
    temperature: FloatRange = FloatRange(low=1.0, high=8.0, log=True)
    feature_weight: FloatRange = Zero
    attention_weight: FloatRange = Zero
    relation_weight: FloatRange = Zero
    contrastive_weight: FloatRange = Zero
    mixup: FloatRange = Zero  # Beta concentration of function-matching mixup; 0 = off
    progressive: FloatRange = Zero  # the intermediate student's share of the compression; 0 = off
    schedules: list[Literal["constant", "phases", "linear"]] = Field(
        default=["constant"], min_length=1
    )
    phases: PhaseSchedule = Field(default_factory=PhaseSchedule)
    linear: LinearSchedule = Field(default_factory=LinearSchedule)
    epochs: IntRange = IntRange(low=0, high=0)
    lr: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)
    fixed: dict[str, Any] = Field(
        default_factory=dict
    )  # other DistillConfig fields, e.g. feature_layers, teacher

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> DistillConfig | None:
        if not self.enabled(trial):
            return None
        n = self.name
        kind = (
            self.schedules[0]
            if len(self.schedules) == 1
            else trial.suggest_categorical(f"{n}.schedule", self.schedules)
        )
        schedule = {"constant": ConstantSchedule(), "phases": self.phases, "linear": self.linear}[
            kind
        ]
        relation = self.relation_weight.suggest(trial, f"{n}.relation_weight")
        epochs = self.epochs.suggest(trial, f"{n}.epochs")
        values = dict(
            alpha=self.alpha.suggest(trial, f"{n}.alpha"),
            temperature=self.temperature.suggest(trial, f"{n}.temperature"),
            feature_weight=self.feature_weight.suggest(trial, f"{n}.feature_weight"),
            attention_weight=self.attention_weight.suggest(trial, f"{n}.attention_weight"),
            relation_distance_weight=relation,
            relation_angle_weight=2 * relation,
            contrastive_weight=self.contrastive_weight.suggest(trial, f"{n}.contrastive_weight"),
            mixup=self.mixup.suggest(trial, f"{n}.mixup"),
            progressive=self.progressive.suggest(trial, f"{n}.progressive"),
            schedule=schedule,
            epochs=epochs,
            **self.fixed,
        )
        if epochs:
            values["lr"] = self.lr.suggest(trial, f"{n}.lr")
        try:
            return DistillConfig(**values)
        except ValueError as exc:
            raise AutoslimError(f"component {n!r}: {str(exc).splitlines()[0]}") from None


class RecoverSpace(ComponentSpec):
    """A final recovery fine-tune (epochs, lr); put it last in the space."""

    type: Literal["recover"] = "recover"
    name: str = "recover"
    optional: bool = False
    epochs: IntRange = IntRange(low=1, high=3)
    lr: FloatRange = FloatRange(low=1e-4, high=3e-3, log=True)

    def suggest(self, trial: optuna.Trial, info: ModelInfo) -> RecoverConfig | None:
        if not self.enabled(trial):
            return None
        epochs = self.epochs.suggest(trial, f"{self.name}.epochs")
        if epochs == 0:
            return None
        return RecoverConfig(epochs=epochs, lr=self.lr.suggest(trial, f"{self.name}.lr"))
