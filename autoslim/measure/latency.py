"""Wall-clock latency: warm-up, repeated timed runs, median and spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from autoslim.data import call_model, first_tensor


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int


def time_calls(
    fn: Callable[[], object], *, warmup: int, repeats: int, sync: Callable[[], None] | None = None
) -> LatencyStats:
    """Time ``fn`` ``repeats`` times after ``warmup`` untimed calls.

    The median resists the scheduler noise of shared machines; p10/p90 show the spread.
    ``sync`` (e.g. ``torch.cuda.synchronize``) makes asynchronous devices finish each call.
    """
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - start) * 1e3)
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return LatencyStats(statistics.median(samples), deciles[0], deciles[-1], repeats)


def model_latency(
    model: torch.nn.Module, batch: torch.Tensor, *, warmup: int, repeats: int
) -> LatencyStats:
    """Latency of one forward pass of ``batch`` (threads are set by the caller)."""
    sync = torch.cuda.synchronize if first_tensor(batch).is_cuda else None
    with torch.inference_mode():
        return time_calls(
            lambda: call_model(model, batch), warmup=warmup, repeats=repeats, sync=sync
        )
