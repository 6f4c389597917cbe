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
   cannot (:func:`autoslim.searching.evaluate.shipped_metric`).
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

Why the horizon (3): each curve's whole remaining gain, whatever its length, would judge
a trial with a few epochs to go partly by curves that have none left (a gain of 0), and
so stop trials that would reach the front. Over the same horizon, every curve answers the
question the trial asks: how much can ``r`` more epochs bring from here?

Two guards keep the projection calibrated on this study, not guessed (the median-stopping
idea, made Pareto-aware):

- nothing is stopped at epoch ``e`` until ``min_curves`` completed curves reach it;
- nothing is stopped at a metric worse than every calibration curve at that epoch. The
  gains seen say nothing about a trial outside their range, and a trial that starts
  lower has more to recover: a heavily pruned trial far below every calibration curve
  after one epoch can still recover most of the way, while curves that started near the
  baseline gained little.

**Own-curve bound** where those guards leave the calibration silent: once the trial's
last planned fine-tune has run ``own_curve_from`` epochs (default 2, one step seen), its
best step so far, repeated for every epoch still to come, is its optimistic final. Only
the last fine-tune counts: a later one (QAT after pruning, the next round of an
iterative schedule) can recover more than any step seen before it. A fine-tune under a
constant learning rate recovers fastest early, so this over-states what it can still gain.

**Error-fraction bound**, also where the calibration is silent, for the constraint only:
each calibration curve's share of its own error (best value − metric) removed over the
trial's horizon, the largest share applied to the trial's error (:func:`error_fraction_bound`).
It stops the heavily pruned trials that start far below every calibration curve and could
not reach the constraint even recovering as well as the best of them did. It needs a
calibration curve that was itself at or below the bound at that epoch. It never replaces
the projection of the front test: a share of the headroom can under-state what a trial
close to the front still gains, and stop it.

**Hypervolume budget** (``hv_budget``, default 0.02). Certainty alone cannot stop a
knife-edge trial, one that ends just below the front: its optimistic projection reaches
the front by a hair. Stopping it gives up at most the hypervolume that projection would
add. So a trial whose projected point would add no more than what is left of a budget,
``hv_budget`` × the front's hypervolume (reference: the constraint bound and the fp32
baseline's costs) minus what earlier stops gave up, is stopped and its contribution
charged (:class:`Stop`, recorded on the trial as ``stop_hv_charge``). If every projection
is at least the trial's true final, the search loses at most that share of its
hypervolume, since a point's exclusive contribution only shrinks as the front grows. A
trial that plans no fine-tune is never stopped under the budget: that saves no epoch.

**Defaults** (quantile 0.9, ``min_curves`` 3, own curve from 2, error-fraction bound on,
budget 0.02): the setting that saves the most fine-tune epochs while every search it was
calibrated on keeps at least 98 % of its hypervolume. ``benchmarks/early_stopping.py``
replays the rule on recorded searches to check a change against that goal.

A stopped trial is recorded as PRUNED with its reason and epochs used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoslim.results.pareto import hypervolume

# The trial attribute holding the hypervolume a stop gave up (the budget's ledger).
HV_CHARGE_ATTR = "stop_hv_charge"


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


@dataclass(frozen=True)
class Stop:
    """The rule's verdict: why the trial stops, and the hypervolume it gives up.

    ``hv_charge`` is nonzero only for a stop under the hypervolume budget: the exclusive
    hypervolume the trial's optimistic projection would add to the front. The study sums
    the charges of its stopped trials (``HV_CHARGE_ATTR``) so the budget holds overall."""

    reason: str
    hv_charge: float = 0.0

    def __str__(self) -> str:
        return self.reason


def gains_to_come(
    curves: Sequence[Curve], epoch: int, *, maximize: bool, remaining: int | None = None
) -> list[float]:
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


def optimistic_gain(
    curves: Sequence[Curve],
    epoch: int,
    *,
    quantile: float,
    maximize: bool,
    remaining: int | None = None,
    min_count: int = 1,
) -> float | None:
    """Quantile of :func:`gains_to_come` (None: fewer than ``min_count`` curves say anything)."""
    gains = gains_to_come(curves, epoch, maximize=maximize, remaining=remaining)
    return float(np.quantile(gains, quantile)) if len(gains) >= max(min_count, 1) else None


@dataclass(frozen=True)
class Horizon:
    """Where a trial stands against its planned fine-tunes after ``done`` epochs."""

    remaining: int | None  # epochs still to come (None: unknown)
    last_started: (
        int | None
    )  # curve index where the fine-tune now running began, if no other follows


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


def dominated(
    metric: float, costs: Mapping[str, float], front: Sequence[FrontPoint], *, maximize: bool
) -> bool:
    """Whether a front point is at least as good everywhere and strictly better somewhere."""
    for point in front:
        metric_ok = point.metric >= metric if maximize else point.metric <= metric
        metric_strict = point.metric > metric if maximize else point.metric < metric
        costs_ok = all(point.costs[name] <= value for name, value in costs.items())
        costs_strict = any(point.costs[name] < value for name, value in costs.items())
        if metric_ok and costs_ok and (metric_strict or costs_strict):
            return True
    return False


def error_fraction_bound(
    curves: Sequence[Curve],
    epoch: int,
    metric: float,
    remaining: int,
    *,
    top: float,
    min_curves: int,
) -> float | None:
    """The most any calibration curve's recovery would bring this trial to over ``remaining``
    epochs, as a share of the error it still has (maximised metric with best value ``top``).

    Each curve's share is the fraction of its own error (``top`` − metric) it removed from
    its epoch ``epoch`` over the same horizon; a curve that ended sooner compounds its share
    to the horizon. The largest share, applied to the trial's error, is its optimistic
    final. Unlike an additive gain this grows with the error left, so a trial far below
    every calibration curve is judged by what they recovered relatively. None: fewer than
    ``min_curves`` curves say anything.
    """
    shares = []
    for c in curves:
        left = len(c.epochs) - 1 - epoch
        if left <= 0 or top - c.epochs[epoch] <= 0:
            continue
        span = min(remaining, left)
        end = c.final if span == left else c.epochs[epoch + span]
        share = min(1.0, max(0.0, 1 - (top - end) / (top - c.epochs[epoch])))
        shares.append(1 - (1 - share) ** (remaining / span) if span < remaining else share)
    if len(shares) < max(min_curves, 1):
        return None
    return metric + max(shares) * max(0.0, top - metric)


def metric_bound(
    constraints: Iterable[Any], metric: str, baseline: float, *, maximize: bool
) -> float | None:
    """The worst final metric the experiment's constraints on ``metric`` accept (None: no bound).

    ``constraints`` are :class:`autoslim.searching.experiment.Constraint`-like (``objective``
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
    None leaves only the front test. ``reference_costs`` (the fp32 baseline's costs) and
    ``bound`` are the hypervolume's reference point; the budget test needs both.
    """

    curves: tuple[Curve, ...]
    front: tuple[FrontPoint, ...]
    maximize: bool = True
    quantile: float = 0.9
    min_curves: int = 3
    bound: float | None = None
    best_possible: float | None = None  # the metric's best value, when it has one
    own_curve_from: int | None = (
        2  # epochs a trial runs before its own curve bounds it (None: never)
    )
    error_fraction: bool = (
        True  # where the calibration abstains, test the bound on :func:`error_fraction_bound`
    )
    hv_budget: float = (
        0.0  # share of the front's hypervolume that stops may give up in all (0: off)
    )
    hv_spent: float = 0.0  # hypervolume the study's earlier stops gave up (sum of their charges)
    reference_costs: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.own_curve_from is not None and self.own_curve_from < 2:
            raise ValueError(
                f"own_curve_from must be at least 2 (a step needs two epochs), got {self.own_curve_from}"
            )

    def decide_before_training(
        self, costs: Mapping[str, float], fine_tunes: bool = True
    ) -> Stop | None:
        """A reason to skip the trial's training: even a perfect metric at its costs is
        dominated, or (``fine_tunes``, so stopping saves epochs) adds less hypervolume than
        the budget has left."""
        if self.best_possible is None or not self.front:
            return None
        head = f"early-stopped before training: even a metric of {self.best_possible:.4g}"
        return self._judge(self.best_possible, costs, head, budget=fine_tunes)

    def _covered(self, usable: Sequence[Curve], epoch: int, metric: float) -> bool:
        """Whether some calibration curve was at least as bad at this epoch (no extrapolation)."""
        return any(
            (c.epochs[epoch] <= metric) if self.maximize else (c.epochs[epoch] >= metric)
            for c in usable
        )

    def decide(
        self,
        epoch: int,
        metric: float,
        costs: Mapping[str, float],
        remaining: int | None = None,
        curve: Sequence[float] | None = None,
    ) -> Stop | None:
        """Why to stop at ``epoch`` with validation ``metric``, or None to go on.

        ``remaining``: the trial's planned epochs after this one (None: unknown, and each
        calibration curve's whole remaining gain counts). ``curve``: the trial's metric
        after each epoch of the fine-tune now running, for the own-curve bound; pass it
        only when no later fine-tune follows (:func:`horizon`)."""
        if remaining == 0:
            return None  # the last epoch: stopping saves nothing and loses the result
        projection = self._calibrated(epoch, metric, remaining)
        if projection is None:
            relative = self._error_fraction(epoch, metric, remaining)
            if relative is not None and self._misses_bound(relative):
                return Stop(
                    f"early-stopped after epoch {epoch + 1}: metric {metric:.4g}, error-fraction bound "
                    f"{relative:.4g} misses the constraint bound {self.bound:.4g}"
                )
            projection = self._own_curve(metric, remaining, curve)
        if projection is None:
            return None
        projected, how = projection
        return self._judge(
            projected,
            costs,
            f"early-stopped after epoch {epoch + 1}: metric {metric:.4g}, {how} {projected:.4g}",
        )

    def _misses_bound(self, projected: float) -> bool:
        return self.bound is not None and (
            projected < self.bound if self.maximize else projected > self.bound
        )

    def _judge(
        self, projected: float, costs: Mapping[str, float], head: str, budget: bool = True
    ) -> Stop | None:
        """Stop a trial whose optimistic ``projected`` metric misses the bound, is dominated,
        or (``budget``) would add no more hypervolume than the budget has left.

        The budget: stops may give up ``hv_budget`` of the front's hypervolume in all. If
        every projection is at least the trial's true final, the hypervolume lost is at most
        that share, since a point's exclusive contribution only shrinks as the front grows.
        It takes the knife-edge trials that end just below the front, which certainty
        cannot tell from the ones that reach it."""
        if self._misses_bound(projected):
            return Stop(f"{head} misses the constraint bound {self.bound:.4g}")
        if not self.front:
            return None
        if dominated(projected, costs, self.front, maximize=self.maximize):
            return Stop(f"{head} is dominated by the front at these costs")
        if not budget or self.hv_budget <= 0 or self.reference_costs is None or self.bound is None:
            return None
        front_hv = self.front_hypervolume()
        charge = max(0.0, self.front_hypervolume(self._point(projected, costs)) - front_hv)
        if (
            self.hv_spent + charge <= self.hv_budget * front_hv
        ):  # a point adding nothing always fits
            share = (
                f"{charge / front_hv:.2%} of the front's hypervolume"
                if front_hv > 0
                else "no hypervolume"
            )
            return Stop(f"{head} would add {share}, within the stopping budget", charge)
        return None

    def _point(self, metric: float, costs: Mapping[str, float]) -> list[float]:
        """A point in minimisation space: the metric (negated if maximised), then the costs."""
        return [
            -metric if self.maximize else metric,
            *(costs[name] for name in sorted(self.reference_costs)),
        ]

    def front_hypervolume(self, extra: Sequence[float] | None = None) -> float:
        """Exact hypervolume of the front (plus ``extra``), from (bound, fp32 baseline costs)."""
        points = [self._point(p.metric, p.costs) for p in self.front] + (
            [list(extra)] if extra is not None else []
        )
        return hypervolume(
            np.array(points, dtype=float), np.array(self._point(self.bound, self.reference_costs))
        )

    def hv_contribution(self, metric: float, costs: Mapping[str, float]) -> float:
        """The hypervolume a point at ``metric`` and ``costs`` would add to the front."""
        return max(
            0.0, self.front_hypervolume(self._point(metric, costs)) - self.front_hypervolume()
        )

    def _error_fraction(self, epoch: int, metric: float, remaining: int | None) -> float | None:
        """:func:`error_fraction_bound`, where it may speak: a maximised metric with a best
        value, a known horizon, and some calibration curve that was at or below the
        constraint bound at this epoch (one that had to recover from where the trial is)."""
        if (
            not (self.error_fraction and self.maximize)
            or self.best_possible is None
            or self.bound is None
            or not remaining
        ):
            return None
        if not any(len(c.epochs) > epoch and c.epochs[epoch] <= self.bound for c in self.curves):
            return None
        return error_fraction_bound(
            self.curves,
            epoch,
            metric,
            remaining,
            top=self.best_possible,
            min_curves=self.min_curves,
        )

    def _calibrated(
        self, epoch: int, metric: float, remaining: int | None
    ) -> tuple[float, str] | None:
        """The projection from the completed trials' curves, or None where they say nothing."""
        usable = [c for c in self.curves if len(c.epochs) > epoch]
        if len(usable) < self.min_curves or not self._covered(usable, epoch, metric):
            return None
        gain = optimistic_gain(
            usable,
            epoch,
            quantile=self.quantile,
            maximize=self.maximize,
            remaining=remaining,
            min_count=self.min_curves,
        )
        if gain is None:
            return None
        return (metric + gain if self.maximize else metric - gain), "optimistic final"

    def _own_curve(
        self, metric: float, remaining: int | None, curve: Sequence[float] | None
    ) -> tuple[float, str] | None:
        """The trial's best step so far, repeated for every epoch to come (None: too early).

        ``curve`` is the metric after each epoch of the fine-tune now running, given only
        when no later fine-tune follows (:func:`horizon`)."""
        if (
            self.own_curve_from is None
            or not remaining
            or curve is None
            or len(curve) < self.own_curve_from
        ):
            return None
        steps = [
            (b - a) if self.maximize else (a - b)
            for a, b in zip(curve[:-1], curve[1:], strict=True)
        ]
        gain = remaining * max([0.0, *steps])
        return (metric + gain if self.maximize else metric - gain), "own-curve bound"
