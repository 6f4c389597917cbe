"""Replaying a request trace: arrivals, service, scoring and the trace's summaries."""

import numpy as np
import pytest
import torch
from torch import nn

from autoslim.bundle import BundleModule, Manifest, Manual, Policy, poisson_arrivals, replay
from autoslim.bundle.replay import Trace, sine_rate, step_rate
from autoslim.bundle.store import PointEntry


def two_point_bundle() -> BundleModule:
    torch.manual_seed(0)
    manifest = Manifest(
        task={"entry": "x:y"},
        points=[
            PointEntry(name="accurate", values={"accuracy": 0.9, "latency_ms": 2.0}, bytes_alone=1),
            PointEntry(name="fast", values={"accuracy": 0.8, "latency_ms": 1.0}, bytes_alone=1),
        ],
        tensors_sha256="0" * 64,
    )
    return BundleModule({"accurate": nn.Linear(4, 3), "fast": nn.Linear(4, 3)}, manifest)


def test_poisson_arrivals_are_reproducible_and_follow_the_rate():
    rate = step_rate(100.0, 400.0, at=1.0)
    first = poisson_arrivals(rate, 2.0, peak=400.0, seed=3)
    assert np.array_equal(first, poisson_arrivals(rate, 2.0, peak=400.0, seed=3))
    assert np.all(np.diff(first) >= 0) and first[0] >= 0 and first[-1] <= 2.0
    before, after = np.sum(first < 1.0), np.sum(first >= 1.0)
    assert 60 < before < 140 and 320 < after < 480  # Poisson around 100 and 400
    swing = sine_rate(10.0, 5.0, period=4.0)
    assert swing(1.0) == pytest.approx(15.0) and swing(3.0) == pytest.approx(5.0)


def test_every_request_is_served_once_by_the_chosen_point_and_scored():
    bundle = two_point_bundle()
    inputs, targets = torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    arrivals = np.linspace(0.0, 0.01, 20)
    trace = replay(bundle, Manual(1), arrivals, inputs, targets, max_batch=4)
    assert len(trace.finish) == 20 and np.all(trace.finish >= trace.arrival)
    assert np.all(np.diff(trace.finish) >= 0) and np.all(trace.point == 1)
    assert trace.switches == 0 and len(trace.switch_ms) == 1  # onto point 1, before serving
    with torch.inference_mode():
        expected = (bundle.points["fast"](inputs).argmax(-1) == targets).numpy()
    assert np.array_equal(trace.correct, expected[np.arange(20) % 7])
    assert trace.mean_metric() == pytest.approx(expected[np.arange(20) % 7].mean())


class Alternate(Policy):
    def choose(self, current, ladder, signals):
        return 1 - current


def test_switches_are_counted_and_timed():
    bundle = two_point_bundle()
    trace = replay(
        bundle,
        Alternate(),
        np.linspace(0, 1, 10),
        torch.randn(3, 4),
        torch.zeros(3, dtype=torch.long),
        max_batch=1,
    )
    assert list(trace.point) == [1, 0] * 5
    assert trace.switches == 9 and len(trace.switch_ms) == 10  # the first is from point 0


def test_violation_share_is_the_share_of_windows_over_budget():
    trace = Trace(
        arrival=np.array([0.0, 0.1, 1.0, 1.2, 2.0]),
        finish=np.array([0.05, 0.3, 1.01, 1.9, 2.5]),  # windows of 1 s: [0,1) [1,2) [2,3)
        point=np.zeros(5, dtype=int),
        correct=np.array([1, 1, 0, 1, 1], dtype=bool),
    )
    # p90 per window: 0.2 s, 0.7 s (of 10 ms and 700 ms), 0.5 s; budget 400 ms
    assert trace.violation_share(400.0, 1.0) == pytest.approx(2 / 3)
    assert trace.violation_share(800.0, 1.0) == 0.0
    assert trace.mean_metric() == pytest.approx(0.8)


def test_load_is_the_arrival_rate_over_the_full_batch_throughput():
    from autoslim.bundle import FullBatchLoad

    load = FullBatchLoad(max_batch=16)
    load.observe(0, rows=3, seconds=0.009)  # a partial batch says nothing of throughput
    assert load.utilization(0, rate=100.0) is None
    load.observe(0, rows=16, seconds=0.010)
    load.observe(0, rows=16, seconds=0.020)  # smoothed: 0.8 x 10 ms + 0.2 x 20 ms
    assert load.utilization(0, rate=800.0) == pytest.approx(800 * 0.012 / 16)
