"""Pareto-aware early stopping of fine-tuning trials (several objectives).

Optuna's pruners refuse several objectives and Ray's schedulers compare one metric. The
rule here uses what a compression trial knows early:

1. Its **costs** (size, latency, memory, energy) depend on the recipe, not on the trained
   weights, so they are measured on a dry-run artifact built with every fine-tune
   skipped, before any training.
2. After each fine-tune epoch ``e`` it reports the validation metric ``m_e``.
3. From the completed trials' curves, the optimistic gain still to come after epoch
   ``e`` is the ``quantile`` (default 0.9) of ``final − m_e`` over those trials; the
   final metric includes what later stages (quantization) cost.
4. If even ``m_e + gain`` is dominated by a point of the current front (at most the
   trial's costs on every cost objective and at least the projected metric, one of them
   strictly), the trial cannot reach the front: stop it.

Nothing is stopped until ``min_curves`` completed curves exist for that epoch, so the
projection is calibrated on this study, not guessed: the median-stopping idea, made
Pareto-aware. A stopped trial is recorded as PRUNED with its reason and epochs used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


class StopTrial(Exception):  # noqa: N818 — a control-flow signal, not an error
    """Raised from the per-epoch hook to end a hopeless trial's fine-tuning."""


@dataclass(frozen=True)
class Curve:
    """A completed trial's per-epoch validation metric and its final measured metric."""

    epochs: tuple[float, ...]
    final: float


@dataclass(frozen=True)
class FrontPoint:
    metric: float
    costs: Mapping[str, float]


def optimistic_gain(curves: Sequence[Curve], epoch: int, *, quantile: float, maximize: bool) -> float | None:
    """Quantile of the improvement still to come after ``epoch`` (None: too little data)."""
    gains = [(c.final - c.epochs[epoch]) if maximize else (c.epochs[epoch] - c.final)
             for c in curves if len(c.epochs) > epoch]
    if not gains:
        return None
    return float(np.quantile(gains, quantile))


def dominated(metric: float, costs: Mapping[str, float], front: Sequence[FrontPoint], *, maximize: bool) -> bool:
    """Whether a front point is at least as good everywhere and strictly better somewhere."""
    for point in front:
        metric_ok = point.metric >= metric if maximize else point.metric <= metric
        metric_strict = point.metric > metric if maximize else point.metric < metric
        costs_ok = all(point.costs[name] <= value for name, value in costs.items())
        costs_strict = any(point.costs[name] < value for name, value in costs.items())
        if metric_ok and costs_ok and (metric_strict or costs_strict):
            return True
    return False


@dataclass(frozen=True)
class ParetoStopper:
    """The stopping rule, fed by the study's completed trials."""

    curves: tuple[Curve, ...]
    front: tuple[FrontPoint, ...]
    maximize: bool = True
    quantile: float = 0.9
    min_curves: int = 3

    def decide(self, epoch: int, metric: float, costs: Mapping[str, float]) -> str | None:
        """A reason to stop at ``epoch`` with validation ``metric``, or None to go on."""
        usable = [c for c in self.curves if len(c.epochs) > epoch]
        if len(usable) < self.min_curves or not self.front:
            return None
        gain = optimistic_gain(usable, epoch, quantile=self.quantile, maximize=self.maximize)
        projected = metric + gain if self.maximize else metric - gain
        if dominated(projected, costs, self.front, maximize=self.maximize):
            return (f"early-stopped after epoch {epoch + 1}: metric {metric:.4g}, optimistic final "
                    f"{projected:.4g} is dominated by the front at these costs")
        return None
