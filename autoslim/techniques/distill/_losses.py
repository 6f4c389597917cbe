"""Knowledge-distillation losses and loss-weight schedules, as pure tensor functions.

Kept apart from the stage in :mod:`autoslim.techniques.distill` so each formula can be
checked against hand-computed values on tiny tensors, with no model, hook or data.
Conventions follow the papers' reference code, so numbers are comparable:

- response KD (Hinton et al. 2015): ``T² · KL(p_t^T ‖ p_s^T)``, the T² keeping the soft
  term's gradient scale independent of the temperature, plus hard-label CE;
- feature KD (FitNets, Romero et al. 2015): MSE after a learned projection;
- attention transfer (Zagoruyko & Komodakis 2017, their ``at``/``at_loss``): the
  L2-normalised channel mean of |F|^p, compared by mean squared error;
- attention-map KD for transformers (MiniLM-style): KL between head-averaged
  attention distributions, which is independent of how many heads pruning left;
- relation KD (Park et al. 2019, their ``RkdDistance``/``RKdAngle``): smooth-L1 between
  mean-normalised pairwise distances and between triplet angle cosines;
- contrastive (CRD-style InfoNCE with in-batch negatives, Tian et al. 2020).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator
from torch.nn import functional as F

from autoslim.errors import AutoslimError
from autoslim.registry import StrictModel

TERMS = ("response", "feature", "attention", "relation", "contrastive")


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(softmax(t/T) ‖ softmax(s/T))``, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def response_kd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Hinton's loss: ``α · T² · KL + (1 − α) · CE(student, labels)``."""
    hard = F.cross_entropy(student_logits, targets)
    return alpha * soft_kl(student_logits, teacher_logits, temperature) + (1.0 - alpha) * hard


def feature_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between (already projected) student and teacher features."""
    if student.shape != teacher.shape:
        raise AutoslimError(
            f"feature KD needs equal shapes after projection: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )
    return F.mse_loss(student, teacher)


def activation_attention(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko's activation attention: mean over channels of |F|^p, flattened, L2-normalised.

    The channel mean makes maps of a pruned (narrower) student comparable to the teacher's.
    """
    if features.dim() < 3:
        raise AutoslimError(
            f"attention transfer needs (batch, channels, spatial...) features, got {tuple(features.shape)}"
        )
    return F.normalize(features.abs().pow(p).mean(dim=1).flatten(1), dim=1)


def attention_transfer(
    student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0
) -> torch.Tensor:
    """``mean((at(s) − at(t))²)`` as in the authors' code."""
    a_s, a_t = activation_attention(student, p), activation_attention(teacher, p)
    if a_s.shape != a_t.shape:
        raise AutoslimError(
            f"attention maps differ in size: {tuple(a_s.shape)} vs {tuple(a_t.shape)}"
        )
    return (a_s - a_t).pow(2).mean()


def head_averaged_probs(
    q: torch.Tensor,
    k: torch.Tensor,
    num_heads: int,
    *,
    scale: float | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(q·kᵀ·scale + bias)`` averaged over heads: (batch, Lq, Lk).

    ``q`` and ``k`` are projected, (batch, L, heads·head_dim); ``scale`` defaults to
    ``head_dim^-½`` and ``bias`` is an additive mask broadcastable to (batch, heads, Lq,
    Lk). Scores are taken in float32 so a mask's large negatives cannot overflow a half
    dtype, and masked keys underflow to exactly 0 in every row that keeps a key.
    """
    b, lq, inner = q.shape
    head_dim = inner // num_heads
    q = q.reshape(b, lq, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(b, k.shape[1], num_heads, head_dim).transpose(1, 2)
    scale = head_dim**-0.5 if scale is None else scale
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    return scores.softmax(dim=-1).mean(dim=1)


def mask_bias(mask: torch.Tensor) -> torch.Tensor:
    """An attention mask as a float32 additive bias. A bool mask attends where True and
    gives the others float32's minimum, as Hugging Face's own float masks do; a float
    mask is additive already."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(
            ~mask, torch.finfo(torch.float32).min
        )
    return mask.float()


def attention_probs(
    query: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, num_heads: int
) -> torch.Tensor:
    """Head-averaged self-attention probabilities (batch, L, L) from packed q/k/v weights.

    Recomputed from the layer's input because ``nn.TransformerEncoderLayer`` asks its
    attention for no weights; ``weight`` is the (3·inner, embed) in-projection.
    """
    inner = weight.shape[0] // 3
    bq, bk = (bias[:inner], bias[inner : 2 * inner]) if bias is not None else (None, None)
    q = F.linear(query, weight[:inner], bq)
    k = F.linear(query, weight[inner : 2 * inner], bk)
    return head_averaged_probs(q, k, num_heads)


def projected_attention_probs(
    hidden: torch.Tensor,
    query: tuple[torch.Tensor, torch.Tensor | None],
    key: tuple[torch.Tensor, torch.Tensor | None],
    num_heads: int,
    *,
    scale: float | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head-averaged self-attention probabilities (batch, L, L) of a layer with separate
    query and key projections, given as (weight, bias), as Hugging Face's layers have.

    Recomputed from the layer's input because SDPA and other fused kernels never
    materialise the probabilities. ``mask``: bool (True = attend) or additive float,
    broadcastable to (batch, heads, L, L).
    """
    q, k = F.linear(hidden, *query), F.linear(hidden, *key)
    bias = None if mask is None else mask_bias(mask)
    return head_averaged_probs(q, k, num_heads, scale=scale, bias=bias)


def attention_map_kd(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """KL(teacher row ‖ student row) averaged over every query position of the batch."""
    kl = teacher_probs * ((teacher_probs + eps).log() - (student_probs + eps).log())
    return kl.sum(dim=-1).mean()


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distance matrix with an exact-zero diagonal (Park et al.'s ``pdist``)."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between each model's distances divided by its own mean non-zero distance.

    Each model is normalised in its own space, so widths may differ: no adapter needed.
    """
    s, t = pairwise_distances(student.flatten(1)), pairwise_distances(teacher.flatten(1)).detach()
    s = s / s[s > 0].mean()
    t = t / t[t > 0].mean()
    return F.smooth_l1_loss(s, t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).reshape(-1)


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between the cosines of every triplet's angle (all i, j, k of the batch)."""
    return F.smooth_l1_loss(_angles(student.flatten(1)), _angles(teacher.flatten(1)).detach())


def info_nce(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE with in-batch negatives: sample i's student embedding must pick teacher i.

    Inputs are projected embeddings; both are L2-normalised here.
    """
    logits = F.normalize(student, dim=1) @ F.normalize(teacher, dim=1).t() / temperature
    return F.cross_entropy(logits, torch.arange(len(student), device=logits.device))


# ---- loss-weight schedules: multipliers per term, as a function of the KD epoch ----


def constant_weights() -> dict[str, float]:
    return dict.fromkeys(TERMS, 1.0)


def phase_weights(
    epoch: int,
    *,
    early_until: int,
    late_from: int,
    early: dict[str, float],
    middle: dict[str, float],
    late: dict[str, float],
) -> dict[str, float]:
    """Early epochs ``[0, early_until)``, middle ``[early_until, late_from)``, late after.

    Terms a phase does not name keep weight 1.
    """
    phase = early if epoch < early_until else middle if epoch < late_from else late
    return constant_weights() | phase


def linear_ramp(epoch: int, *, start: float, end: float, ramp_epochs: int) -> dict[str, float]:
    """Every KD term weighted ``start → end`` linearly over ``ramp_epochs``, then ``end``."""
    frac = 1.0 if ramp_epochs <= 0 else min(epoch / ramp_epochs, 1.0)
    return dict.fromkeys(TERMS, start + (end - start) * frac)


# ---- schedule configs (recipe data): which of the functions above, with what numbers ----


class ConstantSchedule(StrictModel):
    kind: Literal["constant"] = "constant"

    def weights(self, epoch: int) -> dict[str, float]:
        return constant_weights()


class PhaseSchedule(StrictModel):
    """Early/middle/late multipliers per term. The defaults are our reading of the seed
    article: align representations first (feature, attention), match outputs last."""

    kind: Literal["phases"] = "phases"
    early_until: int = Field(default=2, ge=0)
    late_from: int = Field(default=5, ge=0)
    early: dict[str, float] = Field(
        default_factory=lambda: {"response": 0.5, "feature": 2.0, "attention": 2.0}
    )
    middle: dict[str, float] = Field(default_factory=dict)
    late: dict[str, float] = Field(
        default_factory=lambda: {"response": 1.5, "feature": 0.5, "attention": 0.5}
    )

    @model_validator(mode="after")
    def _check(self) -> PhaseSchedule:
        if self.late_from < self.early_until:
            raise ValueError(f"late_from {self.late_from} is before early_until {self.early_until}")
        unknown = sorted({k for p in (self.early, self.middle, self.late) for k in p} - set(TERMS))
        if unknown:
            raise ValueError(f"unknown loss terms {unknown} (known: {', '.join(TERMS)})")
        return self

    def weights(self, epoch: int) -> dict[str, float]:
        return phase_weights(
            epoch,
            early_until=self.early_until,
            late_from=self.late_from,
            early=self.early,
            middle=self.middle,
            late=self.late,
        )


class LinearSchedule(StrictModel):
    kind: Literal["linear"] = "linear"
    start: float = Field(default=0.0, ge=0.0)
    end: float = Field(default=1.0, ge=0.0)
    ramp_epochs: int = Field(default=3, ge=0)

    def weights(self, epoch: int) -> dict[str, float]:
        return linear_ramp(epoch, start=self.start, end=self.end, ramp_epochs=self.ramp_epochs)


Schedule = Annotated[ConstantSchedule | PhaseSchedule | LinearSchedule, Field(discriminator="kind")]
