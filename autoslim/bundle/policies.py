"""Switching policies: runtime signals in, the point to run out.

A policy sees the bundle's ladder (points ordered most accurate first, fastest last,
each with its measured latency, metric and energy) and the latest :class:`Signals`, and
returns the ladder index to run next. All the budget policies follow one rule, the
runtime controller of the "dynamic precision adjustment" kind: step to a cheaper point
when a reading is over budget, and step back to a more accurate one only when the
reading *predicted* for it stays under the budget by a margin. The prediction scales
the current reading, and the server's utilization where the loop reports it, by the two
points' measured costs, so a policy never climbs onto a point that would put it straight
back over budget; with a minimum dwell between switches, that is the hysteresis that
keeps the choice from flapping.

Write your own by subclassing :class:`Policy` (one method, :meth:`Policy.choose`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from autoslim.bundle.module import Point
from autoslim.errors import AutoslimError


@dataclass
class Signals:
    """What the serving loop knows when it picks the next point.

    ``latencies_ms`` are recent request latencies (queueing included) on the point now
    active; ``power_w`` is measured power (NVML) or None where nothing measures it."""

    latencies_ms: Sequence[float] = ()
    queue_length: int = 0
    arrival_rate: float | None = None  # requests per second
    power_w: float | None = None
    since_switch: int = 0  # requests served since the last switch
    utilization: float | None = None  # arrival rate over the active point's throughput


class Policy(ABC):
    """Picks a point of the ladder from the signals."""

    @abstractmethod
    def choose(self, current: int, ladder: Sequence[Point], signals: Signals) -> int:
        """The ladder index to run next (``current`` to stay)."""


@dataclass
class Manual(Policy):
    """Always the point the operator set (``point``: a ladder index)."""

    point: int = 0

    def choose(self, current: int, ladder: Sequence[Point], signals: Signals) -> int:
        if not 0 <= self.point < len(ladder):
            raise AutoslimError(f"the bundle has points 0..{len(ladder) - 1}, not {self.point}")
        return self.point


def _positive(name: str, value: float, unit: str) -> float:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise AutoslimError(f"{name} must be a positive number of {unit}, not {value}")
    return float(value)


def _fraction(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise AutoslimError(f"{name} must be in [0, 1), not {value}")
    return float(value)


@dataclass
class BudgetLadder(Policy):
    """Over budget: the next cheaper point down the ladder. Under it with room: one step
    more accurate, when the reading predicted there is below ``budget × (1 - margin)``.
    Subclasses say what the reading is and what a point costs."""

    budget: float
    margin: float = 0.2
    min_dwell: int = 32  # requests on a point before it is judged (a fresh window)
    unit = "units"

    def __post_init__(self) -> None:
        self.budget = _positive(f"{type(self).__name__}'s budget", self.budget, self.unit)
        self.margin = _fraction("margin", self.margin)
        if self.min_dwell < 1:
            raise AutoslimError(f"min_dwell must be at least 1 request, not {self.min_dwell}")

    @abstractmethod
    def reading(self, point: Point, signals: Signals) -> float | None:
        """The signal compared with the budget (None: nothing to judge by yet)."""

    @abstractmethod
    def cost(self, point: Point) -> float | None:
        """The point's measured cost in the reading's terms, for predicting."""

    def choose(self, current: int, ladder: Sequence[Point], signals: Signals) -> int:
        if signals.since_switch < self.min_dwell:
            return current
        value = self.reading(ladder[current], signals)
        if value is None:
            return current
        if value > self.budget:
            return self._cheaper(current, ladder)
        up = ladder[current - 1] if current > 0 else None
        if up is not None and self._fits(value, ladder[current], up, signals.utilization):
            return current - 1
        return current

    def _cheaper(self, current: int, ladder: Sequence[Point]) -> int:
        """The next point down the ladder that costs less (a point as costly as this one
        buys nothing here); one step down where costs are unmeasured."""
        here = self.cost(ladder[current])
        for point in ladder[current + 1 :]:
            cost = self.cost(point)
            if here is None or cost is None or cost < here:
                return point.index
        return current

    def _fits(self, value: float, here: Point, up: Point, utilization: float | None) -> bool:
        cost_here, cost_up = self.cost(here), self.cost(up)
        if not cost_here or cost_up is None:
            return False  # unmeasured: never climb blind
        scale = cost_up / cost_here
        # A queue's latency grows without bound as the server's utilization nears 1, so
        # a reading scaled by cost alone would climb onto a point the load overwhelms.
        if utilization is not None and utilization * scale >= 1 - self.margin:
            return False
        return value * scale < self.budget * (1 - self.margin)


@dataclass
class LatencyBudget(BudgetLadder):
    """A latency budget on a quantile (p90) of the recent request latencies."""

    quantile: float = 0.9
    unit = "milliseconds"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.quantile <= 1:
            raise AutoslimError(f"quantile must be in (0, 1], not {self.quantile}")

    def reading(self, point: Point, signals: Signals) -> float | None:
        if len(signals.latencies_ms) < self.min_dwell:
            return None
        return float(np.quantile(np.asarray(signals.latencies_ms), self.quantile))

    def cost(self, point: Point) -> float | None:
        return point.latency_ms


@dataclass
class PowerBudget(BudgetLadder):
    """A power budget in watts: measured power where the loop reads it (NVML on a GPU),
    else estimated as arrival rate × the point's measured energy per request (the
    search's energy per call, divided by the rows it was timed at)."""

    unit = "watts"

    def reading(self, point: Point, signals: Signals) -> float | None:
        if signals.power_w is not None:
            return signals.power_w
        if signals.arrival_rate is None or point.energy_mj is None:
            return None
        return signals.arrival_rate * point.energy_mj / 1e3

    def cost(self, point: Point) -> float | None:
        return point.energy_mj


@dataclass
class QueueLength(Policy):
    """Requests waiting: at or above ``high``, one step faster; at or below ``low``, one
    step more accurate. The band between them is the hysteresis."""

    high: int = 8
    low: int = 1
    min_dwell: int = 32

    def __post_init__(self) -> None:
        if self.low < 0 or self.high <= self.low:
            raise AutoslimError(
                f"queue bounds need 0 <= low < high, not low={self.low} high={self.high}"
            )

    def choose(self, current: int, ladder: Sequence[Point], signals: Signals) -> int:
        if signals.since_switch < self.min_dwell:
            return current
        if signals.queue_length >= self.high:
            return min(current + 1, len(ladder) - 1)
        if signals.queue_length <= self.low and current > 0:
            return current - 1
        return current


class LatencyWindow:
    """The recent request latencies of the active point: emptied on each switch, since
    the previous point's latencies say nothing about the new one."""

    def __init__(self, size: int = 64) -> None:
        self.values: deque[float] = deque(maxlen=size)
        self.since_switch = 0

    def add(self, latency_ms: float) -> None:
        self.values.append(latency_ms)
        self.since_switch += 1

    def reset(self) -> None:
        self.values.clear()
        self.since_switch = 0


__all__ = [
    "BudgetLadder",
    "LatencyBudget",
    "LatencyWindow",
    "Manual",
    "Policy",
    "PowerBudget",
    "QueueLength",
    "Signals",
]
