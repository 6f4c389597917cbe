from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.measure.energy import PJ_DRAM_PER_BYTE, PJ_SRAM_PER_BYTE, estimate_energy_mj
from autoslim.measure.latency import time_calls
from autoslim.measure.memory import can_measure_rss_peak, peak_memory_bytes


def test_energy_estimate_matches_hand_count_for_a_linear_layer():
    layer = nn.Linear(10, 4)
    x = torch.randn(3, 10)
    macs = 3 * 4 * 10
    weights = 40 * 4  # bytes
    moved = (30 + 12) * 4
    expected_pj = macs * (3.7 + 0.9) + weights * PJ_DRAM_PER_BYTE + moved * PJ_SRAM_PER_BYTE
    assert estimate_energy_mj(layer, x) == pytest.approx(expected_pj * 1e-9)


def test_energy_estimate_counts_conv_macs_per_output_element():
    conv = nn.Conv2d(2, 3, 3, bias=False)
    x = torch.randn(1, 2, 5, 5)
    out_elems = 3 * 3 * 3
    macs = out_elems * 2 * 3 * 3
    expected_pj = macs * 4.6 + 54 * 4 * PJ_DRAM_PER_BYTE + (50 + out_elems) * 4 * PJ_SRAM_PER_BYTE
    assert estimate_energy_mj(conv, x) == pytest.approx(expected_pj * 1e-9)


def test_time_calls_reports_median_and_spread_of_each_call(monkeypatch):
    """A fake clock makes the timed durations exact: no assertion on real wall time."""
    from types import SimpleNamespace

    from autoslim.measure import latency

    clock = {"now": 0.0}
    durations = iter([0.5] * 2 + [0.001 * k for k in range(1, 12)])  # warm-up calls are not timed

    def work():
        clock["now"] += next(durations)

    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))
    stats = time_calls(work, warmup=2, repeats=11)
    assert stats.repeats == 11
    assert stats.median_ms == pytest.approx(6.0)  # the 6th of 1..11 ms
    assert stats.p10_ms == pytest.approx(2.0) and stats.p90_ms == pytest.approx(10.0)


@pytest.mark.skipif(not can_measure_rss_peak(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_sees_a_large_temporary_allocation():
    size = 64 * 1024 * 1024

    def allocate():
        buf = torch.ones(size // 4)
        return float(buf[0])

    measured = peak_memory_bytes(allocate)
    assert size * 0.9 <= measured <= size * 1.5
