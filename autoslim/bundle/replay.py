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
    """Per request: arrival, finish (seconds), the point that served it and its score
    (``correct``: its metric value, 0/1 for top-1)."""

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
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> Trace:
    """Serve every arrival (request ``i`` reads row ``i % len(targets)`` of ``inputs``)
    on the point ``policy`` picks before each batch; see the module docstring.
    ``power_w`` reads the device's power for power budgets (:func:`nvml_power`);
    ``score(outputs, targets)`` gives each request its metric value (default: top-1
    correct, for classifiers)."""
    count = len(arrivals)
    finish = np.zeros(count)
    point = np.zeros(count, dtype=int)
    correct = np.zeros(count)
    recent = LatencyWindow(window)
    load = FullBatchLoad(max_batch)
    switch_ms: list[float] = []
    clock, served = 0.0, 0
    with torch.inference_mode():
        while served < count:
            clock = max(clock, arrivals[served])
            waiting = int(np.searchsorted(arrivals, clock, side="right")) - served
            rate = _rate(arrivals, served, clock)
            signals = Signals(
                latencies_ms=tuple(recent.values),
                queue_length=waiting,
                arrival_rate=rate,
                power_w=power_w() if power_w else None,
                since_switch=recent.since_switch,
                utilization=load.utilization(bundle.active, rate),
            )
            chosen = policy.choose(bundle.active, bundle.ladder, signals)
            if chosen != bundle.active:
                start = time.perf_counter()
                bundle.select(chosen)
                switch_ms.append((time.perf_counter() - start) * 1e3)
                recent.reset()
            batch = np.arange(served, served + min(waiting, max_batch))
            seconds = _serve(bundle, inputs, targets, batch, correct, score or top1)
            clock += seconds
            load.observe(bundle.active, len(batch), seconds)
            finish[batch], point[batch] = clock, bundle.active
            for i in batch:
                recent.add((clock - arrivals[i]) * 1e3)
            served += len(batch)
    return Trace(arrivals, finish, point, correct, switch_ms)


class FullBatchLoad:
    """The active point's load: arrival rate × its seconds per request at full batches,
    as measured in this replay. A server that batches is busy at any load (a small batch
    costs nearly what a full one does), so its busy share says nothing of headroom; the
    arrival rate against its full-batch throughput does."""

    def __init__(self, max_batch: int) -> None:
        self.max_batch = max_batch
        self.seconds: dict[int, float] = {}  # point -> smoothed seconds of a full batch

    def observe(self, point: int, rows: int, seconds: float) -> None:
        if rows == self.max_batch:
            old = self.seconds.get(point)
            self.seconds[point] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def utilization(self, point: int, rate: float) -> float | None:
        full = self.seconds.get(point)
        return None if full is None else rate * full / self.max_batch


def top1(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 where the highest logit is the target's class."""
    return (outputs.argmax(-1) == targets).float()


def _serve(bundle, inputs, targets, batch: np.ndarray, correct: np.ndarray, score) -> float:
    """Run the batch's rows on the active point; the seconds it took."""
    index = torch.as_tensor(batch % len(targets))
    x = map_tensors(inputs, lambda t: t[index])
    start = time.perf_counter()
    out = call_model(bundle, x)
    if out.is_cuda:
        torch.cuda.synchronize(out.device)
    seconds = time.perf_counter() - start
    correct[batch] = score(out.float().cpu(), targets[index]).numpy()
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
