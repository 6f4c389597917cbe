"""Pareto-aware early stopping of fine-tuning trials (several objectives).

Optuna's pruners refuse several objectives and Ray's schedulers compare one metric. The
rule here uses what a compression trial knows early:

1. Its **costs** (size, latency, memory, energy) depend on the recipe, not on the trained
   weights, so they are measured on a dry-run artifact built with every fine-tune
   skipped, before any training. The same dry run records the fine-tunes the recipe
   plans (each one's epochs), so after each epoch the trial knows how many ``r`` are
   still to come (:func:`horizon`; unknown where a stage decides them while training).
2. After each fine-tune epoch ``e`` it reports the validation metric ``m_e`` **of the model
   as it would ship**: a copy goes through the recipe's later stages (e.g. quantization)
   first, so the curve sees what they cost, which a curve of the fp32 model in training
   cannot (:func:`autoslim.search.evaluate.shipped_metric`).
3. From the completed trials' curves, the optimistic gain still to come is the
   ``quantile`` (default 0.9) of what each curve gained **over the same horizon**: from
   its epoch ``e`` to its epoch ``e + r``. A curve that ended sooner contributes its gain
   to its end scaled up linearly to ``r`` epochs, which over-states the gain of the
   concave curves fine-tunes have (constant learning rate, ``autoslim.train``).
4. If even ``m_e + gain`` is dominated by a point of the current front (at most the
   trial's costs on every cost objective and at least the projected metric, one of them
   strictly), the trial cannot reach the front: stop it.
5. Before any training: if even the best value the metric can take (accuracy 1.0) at the
   trial's costs is dominated by the front, the trial is stopped at zero epochs. This
   needs no projection, so it cannot cost hypervolume.
6. If even ``m_e + gain`` misses the experiment's constraint on the metric (``bound``,
   e.g. baseline − max_drop), the trial can never be on the feasible front, whatever it
   costs: stop it. This is the only way to stop a trial cheaper than every front point.
7. Nothing is stopped after its last planned epoch: that saves nothing and would throw
   away a finished result.

Why the horizon (3): an earlier rule took each curve's whole remaining gain, whatever
its length, so a trial with 4 epochs to go was judged partly by curves that had none
left (a gain of 0). On the MNIST-1D searches without ``bn_scale`` it stopped front trials
and kept only 84 % of the hypervolume (BENCHMARKS.md, "Early stopping").

Two guards keep the projection calibrated on this study, not guessed (the median-stopping
idea, made Pareto-aware):

- nothing is stopped at epoch ``e`` until ``min_curves`` completed curves reach it;
- nothing is stopped at a metric worse than every calibration curve at that epoch. The
  gains seen say nothing about a trial outside their range, and a trial that starts
  lower has more to recover. Measured on digits: a 91 %-sparse trial at 0.38 after one
  epoch recovered to 0.975, while every calibration curve had started above 0.98 and
  their quantile gain was under a point. With the bound and without this guard,
  stopping such trials lost up to 9 % of the front's hypervolume (BENCHMARKS.md, "Early
  stopping").

**Own-curve bound** where those guards leave the calibration silent: once the trial's
last planned fine-tune has run ``own_curve_from`` epochs (default 3, so two steps are
seen), its best step so far, repeated for every epoch still to come, is its optimistic
final. Only the last fine-tune counts: a later one (QAT after pruning, the next round of
an iterative schedule) can recover more than any step seen before it. A fine-tune under a
constant learning rate recovers fastest early, so this over-states what it can still
gain. It stops mostly the heavily pruned trials that start below every calibration curve
and can never reach the constraint. From the second epoch (one step seen), one
calibration search lost 2.6 % of its hypervolume, so the default waits for two.

The default quantile was chosen by replaying rules on calibration searches (seeds 10-13)
as the lowest that kept at least 98 % of every calibration search's hypervolume, then
measured on other seeds (BENCHMARKS.md, "Early stopping"). A rule that projected a share
of the headroom below the study's best instead of an additive gain saved more on the
calibration seeds but lost 44 % of one test search's hypervolume, so it was dropped.

A stopped trial is recorded as PRUNED with its reason and epochs used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


def gains_to_come(curves: Sequence[Curve], epoch: int, *, maximize: bool, remaining: int | None = None) -> list[float]:
    """Each calibration curve's improvement after ``epoch`` (positive is better).

    With ``remaining`` (the trial's epochs still to come), a curve's gain is taken over that
    horizon: from its ``epoch`` to its ``epoch + remaining`` (its measured final if that is
    its last epoch), or, for a curve that ended sooner, its gain to its end scaled by
    ``remaining / epochs it had left``. A curve that ended at ``epoch`` says nothing about
    later epochs and is left out. Without ``remaining``: each curve's gain to its final.
    """
    gains = []
    for c in curves:
        left = len(c.epochs) - 1 - epoch
        if left < 0 or (remaining and left == 0):
            continue
        horizon = left if not remaining else min(remaining, left)
        scale = 1.0 if not remaining else remaining / horizon
        end = c.final if horizon == left else c.epochs[epoch + horizon]
        gains.append(scale * ((end - c.epochs[epoch]) if maximize else (c.epochs[epoch] - end)))
    return gains


def optimistic_gain(curves: Sequence[Curve], epoch: int, *, quantile: float, maximize: bool,
                    remaining: int | None = None, min_count: int = 1) -> float | None:
    """Quantile of :func:`gains_to_come` (None: fewer than ``min_count`` curves say anything)."""
    gains = gains_to_come(curves, epoch, maximize=maximize, remaining=remaining)
    return float(np.quantile(gains, quantile)) if len(gains) >= max(min_count, 1) else None


@dataclass(frozen=True)
class Horizon:
    """Where a trial stands against its planned fine-tunes after ``done`` epochs."""

    remaining: int | None  # epochs still to come (None: unknown)
    last_started: int | None  # curve index where the fine-tune now running began, if no other follows


def horizon(planned: Sequence[int] | None, done: int) -> Horizon:
    """The trial's horizon from its planned fine-tunes (each one's epochs, in order).

    The own-curve bound may only read the fine-tune now running, and only when no later
    one follows: a later fine-tune (QAT after pruning, the next round of a schedule) can
    recover more than any step seen so far.
    """
    total = sum(planned) if planned is not None else None
    if total is None or done > total:
        return Horizon(None, None)  # unknown, or the plan was wrong: no horizon to trust
    start = 0
    for epochs in planned:
        if epochs > 0 and done <= start + epochs:  # the fine-tune whose epoch just ended
            return Horizon(total - done, start if start + epochs == total else None)
        start += epochs
    return Horizon(0, None)  # nothing planned is running (a dry run saw no fine-tune)


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


def metric_bound(constraints: Iterable[Any], metric: str, baseline: float, *, maximize: bool) -> float | None:
    """The worst final metric the experiment's constraints on ``metric`` accept (None: no bound).

    ``constraints`` are :class:`autoslim.search.experiment.Constraint`-like (``objective``
    and one of ``min``, ``max``, ``max_drop``, ``max_ratio``); only bounds on the bad side
    of the metric count, and the tightest wins.
    """
    bounds = []
    for c in constraints:
        if c.objective != metric:
            continue
        if maximize:
            bounds += [c.min] if c.min is not None else []
            bounds += [baseline - c.max_drop] if c.max_drop is not None else []
        else:
            bounds += [c.max] if c.max is not None else []
            bounds += [baseline + c.max_drop] if c.max_drop is not None else []
            bounds += [baseline * c.max_ratio] if c.max_ratio is not None else []
    if not bounds:
        return None
    return max(bounds) if maximize else min(bounds)


@dataclass(frozen=True)
class ParetoStopper:
    """The stopping rule, fed by the study's completed trials.

    ``bound`` is the worst final metric a feasible trial may have (see :func:`metric_bound`);
    None leaves only the front test.
    """

    curves: tuple[Curve, ...]
    front: tuple[FrontPoint, ...]
    maximize: bool = True
    quantile: float = 0.9
    min_curves: int = 3
    bound: float | None = None
    best_possible: float | None = None  # the metric's best value, when it has one
    own_curve_from: int | None = 3  # epochs a trial runs before its own curve bounds it (None: never)

    def __post_init__(self) -> None:
        if self.own_curve_from is not None and self.own_curve_from < 2:
            raise ValueError(f"own_curve_from must be at least 2 (a step needs two epochs), got {self.own_curve_from}")

    def decide_before_training(self, costs: Mapping[str, float]) -> str | None:
        """A reason to skip the trial's training: even a perfect metric at its costs is dominated."""
        if self.best_possible is None or not self.front:
            return None
        if dominated(self.best_possible, costs, self.front, maximize=self.maximize):
            return (f"early-stopped before training: even a metric of {self.best_possible:.4g} "
                    "is dominated by the front at these costs")
        return None

    def _covered(self, usable: Sequence[Curve], epoch: int, metric: float) -> bool:
        """Whether some calibration curve was at least as bad at this epoch (no extrapolation)."""
        return any((c.epochs[epoch] <= metric) if self.maximize else (c.epochs[epoch] >= metric) for c in usable)

    def decide(self, epoch: int, metric: float, costs: Mapping[str, float],
               remaining: int | None = None, curve: Sequence[float] | None = None) -> str | None:
        """A reason to stop at ``epoch`` with validation ``metric``, or None to go on.

        ``remaining``: the trial's planned epochs after this one (None: unknown, and each
        calibration curve's whole remaining gain counts). ``curve``: the trial's metric
        after each epoch of the fine-tune now running, for the own-curve bound; pass it
        only when no later fine-tune follows (:func:`horizon`)."""
        if remaining == 0:
            return None  # the last epoch: stopping saves nothing and loses the result
        projection = self._calibrated(epoch, metric, remaining)
        if projection is None:
            projection = self._own_curve(metric, remaining, curve)
        if projection is None:
            return None
        projected, how = projection
        head = f"early-stopped after epoch {epoch + 1}: metric {metric:.4g}, {how} {projected:.4g}"
        if self.bound is not None and (projected < self.bound if self.maximize else projected > self.bound):
            return f"{head} misses the constraint bound {self.bound:.4g}"
        if self.front and dominated(projected, costs, self.front, maximize=self.maximize):
            return f"{head} is dominated by the front at these costs"
        return None

    def _calibrated(self, epoch: int, metric: float, remaining: int | None) -> tuple[float, str] | None:
        """The projection from the completed trials' curves, or None where they say nothing."""
        usable = [c for c in self.curves if len(c.epochs) > epoch]
        if len(usable) < self.min_curves or not self._covered(usable, epoch, metric):
            return None
        gain = optimistic_gain(usable, epoch, quantile=self.quantile, maximize=self.maximize, remaining=remaining,
                               min_count=self.min_curves)
        if gain is None:
            return None
        return (metric + gain if self.maximize else metric - gain), "optimistic final"

    def _own_curve(self, metric: float, remaining: int | None,
                   curve: Sequence[float] | None) -> tuple[float, str] | None:
        """The trial's best step so far, repeated for every epoch to come (None: too early).

        ``curve`` is the metric after each epoch of the fine-tune now running, given only
        when no later fine-tune follows (:func:`horizon`)."""
        if self.own_curve_from is None or not remaining or curve is None or len(curve) < self.own_curve_from:
            return None
        steps = [(b - a) if self.maximize else (a - b) for a, b in zip(curve[:-1], curve[1:], strict=True)]
        gain = remaining * max([0.0, *steps])
        return (metric + gain if self.maximize else metric - gain), "own-curve bound"
