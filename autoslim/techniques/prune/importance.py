"""Importance criteria: a score per weight, summed into a score per channel or head.

Each criterion is one small element-wise function of a weight, its mean gradient and its
mean squared per-sample gradient, so unstructured pruning (rank weights) and structured
pruning (rank channels, heads) share it:

- ``l1`` |w| and ``l2`` w² (a channel's sum of w² ranks like its L2 norm);
- ``taylor`` |w · ∂L/∂w|, the first-order estimate of the loss change when w is zeroed
  (Molchanov et al. 2019);
- ``fisher`` ½ · w² · E[g²], Optimal Brain Damage's saliency ½·w²·H_ww with the Hessian
  diagonal replaced by the empirical Fisher diagonal (per-sample squared gradients), which
  needs no second backward pass;
- ``hutchinson`` ½ · w² · diag(H), the same saliency with the true Hessian diagonal,
  estimated by Hutchinson's E[z ⊙ Hz] over seeded Rademacher probes (double backward, see
  :mod:`autoslim.techniques._hessian`). Costlier than ``fisher``; noisy estimates can come
  out negative, which ranks a weight as cheap to remove, as the second-order model says;
- ``bn_scale`` |γ| of BatchNorm (network slimming, Liu et al. 2017): a channel score
  only, so it is rejected for unstructured pruning;
- ``random``, a seeded control: a criterion that cannot beat it is not worth its cost.

Gradient statistics come from :func:`calibrate` (and the Hessian diagonal from
:func:`hessian_diagonal`) on a few training samples, in eval mode so BatchNorm running
statistics and dropout stay untouched (replay must be exact).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from autoslim.data import batch_len, call_model, rows, to_device
from autoslim.errors import AutoslimError
from autoslim.techniques._hessian import hutchinson_diagonal, rademacher

# Structured pruning accepts these; ``hutchinson`` is for unstructured pruning until the
# structured handler gathers its statistics through :func:`collect_stats`.
CriterionName = Literal["l1", "l2", "taylor", "fisher", "bn_scale", "random"]


@dataclass
class GradStats:
    """Mean gradient, mean squared per-sample gradient and Hessian diagonal, keyed by
    parameter object."""

    grad: dict[torch.Tensor, torch.Tensor] = field(default_factory=dict)
    sq_grad: dict[torch.Tensor, torch.Tensor] = field(default_factory=dict)
    generator: torch.Generator | None = None
    hess_diag: dict[torch.Tensor, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> GradStats:
        """The same statistics with every tensor on ``device`` (keys stay the parameters)."""

        def moved(values: dict) -> dict:
            return {p: v.to(device) for p, v in values.items()}

        return GradStats(
            moved(self.grad), moved(self.sq_grad), self.generator, moved(self.hess_diag)
        )


ElementScore = Callable[..., torch.Tensor]


def l1_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    return w.detach().abs()


def l2_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    return w.detach().pow(2)


def taylor_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    return (w.detach() * _need(g, "gradients", w)).abs()


def fisher_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    return 0.5 * w.detach().pow(2) * _need(g2, "squared gradients", w)


def hutchinson_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    return 0.5 * w.detach().pow(2) * _need(h, "a Hessian diagonal", w)


def random_score(
    w: torch.Tensor,
    g: torch.Tensor | None = None,
    g2: torch.Tensor | None = None,
    gen: torch.Generator | None = None,
    h: torch.Tensor | None = None,
) -> torch.Tensor:
    # Drawn on the CPU from the seeded generator (the same on every device), then moved.
    return torch.rand(w.shape, generator=_need(gen, "a seeded generator", w)).to(w.device)


def _need(value, what: str, w: torch.Tensor):
    if value is None:
        raise AutoslimError(
            f"criterion needs {what} for a weight of shape {tuple(w.shape)}: calibrate first"
        )
    return value


@dataclass(frozen=True)
class Criterion:
    name: str
    score: ElementScore
    needs_grad: bool = False
    needs_hessian: bool = False
    bn_only: bool = False  # scores only BatchNorm scales (structured pruning only)


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion("l1", l1_score),
    "l2": Criterion("l2", l2_score),
    "taylor": Criterion("taylor", taylor_score, needs_grad=True),
    "fisher": Criterion("fisher", fisher_score, needs_grad=True),
    "bn_scale": Criterion("bn_scale", l1_score, bn_only=True),
    "random": Criterion("random", random_score),
    "hutchinson": Criterion("hutchinson", hutchinson_score, needs_hessian=True),
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        raise AutoslimError(
            f"unknown importance criterion {name!r} (known: {', '.join(CRITERIA)})"
        ) from None


def element_scores(
    weight: torch.Tensor, criterion: Criterion, stats: GradStats, param: torch.Tensor | None = None
) -> torch.Tensor:
    """Scores of ``weight``; gradients are looked up by ``param`` (the trained parameter,
    e.g. ``weight_orig`` under a pruning mask) or by ``weight`` itself."""
    key = weight if param is None else param
    return criterion.score(
        weight,
        stats.grad.get(key),
        stats.sq_grad.get(key),
        stats.generator,
        stats.hess_diag.get(key),
    )


def channel_scores(
    weight: torch.Tensor, criterion: Criterion, stats: GradStats, *, dim: int = 0
) -> torch.Tensor:
    """Per-slice sums of element scores along ``dim`` (0: output channels, 1: inputs)."""
    scores = element_scores(weight, criterion, stats)
    return scores.transpose(0, dim).reshape(weight.shape[dim], -1).sum(dim=1)


def calibration_batch(split: Any, n: int) -> tuple[Any, torch.Tensor]:
    """The first ``n`` samples of a split (in memory or streamed) as one batch: what
    :func:`collect_stats` reads. Only ``n`` samples are read from a streamed split."""
    return split.take(n)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _backward_in_eval(model: nn.Module, device: torch.device):
    """A context in which an eval-mode model can be differentiated (twice): cuDNN's RNN
    kernels refuse backward outside training mode and double backward always, so on CUDA
    a model with a GRU or LSTM is calibrated without cuDNN."""
    recurrent = any(isinstance(m, nn.RNNBase) for m in model.modules())
    return torch.backends.cudnn.flags(enabled=not (recurrent and device.type == "cuda"))


def calibrate(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> GradStats:
    """Mean and mean-squared per-sample gradients of ``loss`` over the given samples.

    ``inputs`` is a tensor, tuple or dict of tensors (:mod:`autoslim.data`); samples run
    on the model's device. One backward per sample is what makes E[g²] a Fisher diagonal
    rather than the square of a batch mean (which shrinks with batch size).
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    inputs, targets = to_device(inputs, device), to_device(targets, device)
    params = [p for p in model.parameters() if p.requires_grad]
    total = {p: torch.zeros_like(p) for p in params}
    total_sq = {p: torch.zeros_like(p) for p in params}
    if batch_len(inputs) != len(targets):
        raise AutoslimError(
            f"calibration has {batch_len(inputs)} input rows but {len(targets)} targets"
        )
    with _backward_in_eval(model, device):
        for i in range(len(targets)):
            model.zero_grad(set_to_none=True)
            loss(call_model(model, rows(inputs, i, i + 1)), targets[i : i + 1]).backward()
            for p in params:
                if p.grad is not None:
                    total[p] += p.grad
                    total_sq[p] += p.grad.pow(2)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    n = max(len(targets), 1)
    return GradStats({p: g / n for p, g in total.items()}, {p: g / n for p, g in total_sq.items()})


def hessian_diagonal(
    model: nn.Module,
    inputs: Any,
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    samples: int,
    generator: torch.Generator,
    batch_size: int,
) -> dict[torch.Tensor, torch.Tensor]:
    """Hutchinson diag(H) of the mean ``loss`` over the samples, per trainable parameter.

    Batches are weighted by their size, so with a batch-mean loss the result estimates the
    Hessian of the mean over all samples whatever the batch split.
    """
    was_training = model.training
    model.eval()
    device = _model_device(model)
    inputs, targets = to_device(inputs, device), to_device(targets, device)
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    shapes = [p.shape for p in params]
    with _backward_in_eval(model, device):
        for start in range(0, len(targets), batch_size):
            x, y = rows(inputs, start, start + batch_size), targets[start : start + batch_size]
            # Probes are drawn on the CPU in the order hutchinson_diagonal draws them, so
            # the estimate is the same on every device; only their copies move.
            probes = ([v.to(device) for v in rademacher(shapes, generator)] for _ in range(samples))
            diag = hutchinson_diagonal(loss(call_model(model, x), y), params, probes=probes)
            for acc, d in zip(total, diag, strict=True):
                acc += d * (len(y) / len(targets))
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return dict(zip(params, total, strict=True))


def collect_stats(
    model: nn.Module,
    criterion: Criterion,
    inputs: Any,
    targets: torch.Tensor | None,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    hessian_samples: int = 16,
    batch_size: int = 64,
) -> GradStats:
    """Whatever ``criterion`` reads, computed on the calibration samples, plus a generator
    seeded by ``seed`` (for ``random``); criteria that read nothing cost nothing.
    ``inputs`` (a tensor, tuple or dict) and ``targets`` are read only by criteria that
    need data; others accept None for both.
    """
    stats = calibrate(model, inputs, targets, loss) if criterion.needs_grad else GradStats()
    if criterion.needs_hessian:
        probes = torch.Generator().manual_seed(seed + 1)  # its own stream: random's is untouched
        stats.hess_diag = hessian_diagonal(
            model,
            inputs,
            targets,
            loss,
            samples=hessian_samples,
            generator=probes,
            batch_size=batch_size,
        )
    stats.generator = torch.Generator().manual_seed(seed)
    return stats
