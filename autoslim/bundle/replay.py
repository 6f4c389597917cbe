"""Replay a request trace through a bundle: what a policy would have done under load.

Arrivals follow a trace in virtual time; one server takes the waiting requests (up to
``max_batch``) and runs them on the active point for real, and the virtual clock moves
on by the measured wall time of that call. So service times are the model's, measured
on this machine, while the queue is simulated exactly: a trace of minutes replays in
the time its requests take to compute. Each request is scored with the point that
served it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from autoslim.bundle.module import BundleModule
from autoslim.bundle.policies import LatencyWindow, Policy, Signals
from autoslim.data import call_model, map_tensors


def step_rate(low: float, high: float, at: float) -> Callable[[float], float]:
    """``low`` requests per second, then ``high`` from time ``at`` on."""
    return lambda t: high if t >= at else low


def sine_rate(mean: float, amplitude: float, period: float) -> Callable[[float], float]:
    """A rate swinging between ``mean ± amplitude`` every ``period`` seconds."""
    return lambda t: mean + amplitude * np.sin(2 * np.pi * t / period)


def poisson_arrivals(
    rate: Callable[[float], float], duration: float, peak: float, seed: int = 0
) -> np.ndarray:
    """Arrival times of a Poisson process of time-varying ``rate`` (thinning; ``peak``
    bounds the rate) over ``duration`` seconds, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    count = rng.poisson(peak * duration)
    times = np.sort(rng.uniform(0.0, duration, count))
    keep = rng.uniform(0.0, peak, count) < np.array([rate(t) for t in times])
    return times[keep]


@dataclass
class Trace:
    """Per request: arrival, finish (seconds), the point that served it and its score."""

    arrival: np.ndarray
    finish: np.ndarray
    point: np.ndarray
    correct: np.ndarray
    switch_ms: list[float] = field(default_factory=list)

    @property
    def latency_ms(self) -> np.ndarray:
        return (self.finish - self.arrival) * 1e3

    @property
    def switches(self) -> int:
        return int(np.count_nonzero(np.diff(self.point)))

    def violation_share(self, budget_ms: float, window_s: float, quantile: float = 0.9) -> float:
        """Share of time windows (by finish time) whose latency quantile is over budget."""
        bins = np.floor(self.finish / window_s).astype(int)
        latency = self.latency_ms
        over = [np.quantile(latency[bins == b], quantile) > budget_ms for b in np.unique(bins)]
        return float(np.mean(over)) if over else 0.0

    def mean_metric(self) -> float:
        return float(np.mean(self.correct)) if len(self.correct) else float("nan")


def replay(
    bundle: BundleModule,
    policy: Policy,
    arrivals: np.ndarray,
    inputs,
    targets: torch.Tensor,
    *,
    max_batch: int = 16,
    window: int = 64,
    power_w: Callable[[], float] | None = None,
) -> Trace:
    """Serve every arrival (request ``i`` reads row ``i % len(targets)`` of ``inputs``)
    on the point ``policy`` picks before each batch; see the module docstring.
    ``power_w`` reads the device's power for power budgets (:func:`nvml_power`)."""
    count = len(arrivals)
    finish = np.zeros(count)
    point = np.zeros(count, dtype=int)
    correct = np.zeros(count, dtype=bool)
    recent = LatencyWindow(window)
    busy = BusyTime()
    switch_ms: list[float] = []
    clock, served = 0.0, 0
    with torch.inference_mode():
        while served < count:
            clock = max(clock, arrivals[served])
            waiting = int(np.searchsorted(arrivals, clock, side="right")) - served
            signals = Signals(
                latencies_ms=tuple(recent.values),
                queue_length=waiting,
                arrival_rate=_rate(arrivals, served, clock),
                power_w=power_w() if power_w else None,
                since_switch=recent.since_switch,
                utilization=busy.share(clock),
            )
            chosen = policy.choose(bundle.active, bundle.ladder, signals)
            if chosen != bundle.active:
                start = time.perf_counter()
                bundle.select(chosen)
                switch_ms.append((time.perf_counter() - start) * 1e3)
                recent.reset()
            batch = np.arange(served, served + min(waiting, max_batch))
            seconds = _serve(bundle, inputs, targets, batch, correct)
            clock += seconds
            busy.add(clock, seconds)
            finish[batch], point[batch] = clock, bundle.active
            for i in batch:
                recent.add((clock - arrivals[i]) * 1e3)
            served += len(batch)
    return Trace(arrivals, finish, point, correct, switch_ms)


class BusyTime:
    """The share of the last ``span`` seconds the server spent serving."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self.batches: deque[tuple[float, float]] = deque()  # (finish, seconds)

    def add(self, finish: float, seconds: float) -> None:
        self.batches.append((finish, seconds))

    def share(self, now: float) -> float | None:
        while self.batches and self.batches[0][0] < now - self.span:
            self.batches.popleft()
        if now < self.span:
            return None  # not a full span yet
        return sum(seconds for _, seconds in self.batches) / self.span


def _serve(bundle, inputs, targets, batch: np.ndarray, correct: np.ndarray) -> float:
    """Run the batch's rows on the active point; the seconds it took."""
    index = torch.as_tensor(batch % len(targets))
    x = map_tensors(inputs, lambda t: t[index])
    start = time.perf_counter()
    out = call_model(bundle, x)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    seconds = time.perf_counter() - start
    correct[batch] = (out.argmax(-1).cpu() == targets[index]).numpy()
    return seconds


def nvml_power(device_index: int = 0) -> Callable[[], float]:
    """A reader of the GPU's power draw in watts (NVML), for :class:`PowerBudget`."""
    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
    return lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3


def _rate(arrivals: np.ndarray, served: int, clock: float, span: float = 1.0) -> float:
    """Arrivals per second over the last ``span`` seconds of virtual time."""
    start = np.searchsorted(arrivals, clock - span, side="left")
    end = np.searchsorted(arrivals, clock, side="right")
    return float(end - start) / span
