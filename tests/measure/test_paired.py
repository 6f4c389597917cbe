"""Paired latency statistics on synthetic timings: no test here times anything real."""

from __future__ import annotations

import itertools
import math

import pytest
from scipy.stats import binom

from autoslim.measure.paired import (
    inside,
    median_interval,
    objective_latency,
    objective_ratio,
    paired_latency,
    relative_half_width,
    summarise,
    time_rounds,
    verdict_of,
)


def test_the_median_interval_uses_the_binomial_ranks():
    values = list(range(1, 11))  # n = 10: P(Bin(10, 1/2) <= 1) = 11/1024 <= 0.025 < 56/1024
    assert median_interval(values) == (2, 9)
    assert median_interval(list(range(1, 31))) == (10, 21)  # n = 30: the textbook ranks 10 and 21


@pytest.mark.parametrize("n", [6, 10, 17, 30, 101])
def test_the_median_interval_covers_at_least_the_confidence(n):
    lo, hi = median_interval(list(range(n)))
    k = lo + 1  # the rank of the lower end
    assert hi == n - k
    assert 1 - 2 * binom.cdf(k - 1, n, 0.5) >= 0.95
    assert 1 - 2 * binom.cdf(k, n, 0.5) < 0.95  # one rank narrower would not cover


def test_too_few_values_give_the_full_range():
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)
    with pytest.raises(ValueError):
        median_interval([])


def test_a_steady_half_time_candidate_is_faster_with_a_tight_interval():
    cand = [5.0, 5.1, 4.9, 5.0, 5.2, 4.8, 5.0, 5.1, 4.9, 5.0]
    ref = [c * 2 for c in cand]
    result = summarise(cand, ref)
    assert result.ratio == pytest.approx(0.5)
    assert result.ratio_lo == pytest.approx(0.5) and result.ratio_hi == pytest.approx(0.5)
    assert result.verdict == "faster" and not result.noisy
    assert result.latency_ms == 5.0 and result.reference_ms == 10.0


def test_load_that_drifts_during_a_measurement_cancels_out_of_the_ratio():
    load = [1, 1, 3, 3, 6, 6, 2, 2, 8, 1]  # the machine gets busy, then quiet, then busy
    cand = [4.0 * f for f in load]
    ref = [5.0 * f for f in load]
    result = summarise(cand, ref)
    assert result.ratio == pytest.approx(0.8) and result.verdict == "faster"
    assert statistics_spread(cand) > 1.5  # the plain median would have moved with the load


def statistics_spread(values):
    return max(values) / min(values)


def test_an_interval_that_contains_one_is_no_gain():
    ratios = [0.9, 1.05, 0.97, 1.02, 0.95, 1.08, 0.99, 1.01, 0.96, 1.04]
    result = summarise(ratios, [1.0] * len(ratios))
    assert result.ratio_lo < 1.0 < result.ratio_hi
    assert result.verdict == "no gain" and not result.noisy


def test_a_wide_interval_is_noisy_and_never_a_gain():
    ratios = [0.3, 1.6, 0.5, 1.9, 0.4, 1.2, 0.35, 2.0, 0.6, 1.1]
    result = summarise(ratios, [1.0] * len(ratios))
    assert relative_half_width(result.ratio, result.ratio_lo, result.ratio_hi) > 0.15
    assert result.noisy and result.verdict == "noisy"


def test_slower_needs_the_whole_interval_above_one():
    result = summarise([1.3, 1.25, 1.35, 1.3, 1.28, 1.32, 1.3, 1.31, 1.29, 1.3], [1.0] * 10)
    assert result.verdict == "slower"


def test_rounds_alternate_which_side_runs_first():
    calls = []
    cand, ref = time_rounds(
        lambda: calls.append("c"), lambda: calls.append("r"), 4, clock=itertools.count().__next__
    )
    assert calls == ["c", "r", "r", "c", "c", "r", "r", "c"]
    assert len(cand) == len(ref) == 4


class ScriptedMachine:
    """Candidate and reference 'run' by advancing a fake clock by scripted durations."""

    def __init__(self, candidate_ms, reference_ms):
        self.now = 0.0
        self.cand = iter(candidate_ms)
        self.ref = iter(reference_ms)

    def clock(self):
        return self.now

    def candidate(self):
        self.now += next(self.cand) / 1e3

    def reference(self):
        self.now += next(self.ref) / 1e3


def test_a_wide_measurement_is_remeasured_with_twice_the_rounds_until_it_narrows():
    noisy = [0.3, 2.0] * 5  # first 10 rounds: ratios all over the place
    steady = [1.0] * 1000
    machine = ScriptedMachine(noisy + steady, [1.0] * 2000)
    result = paired_latency(
        machine.candidate,
        machine.reference,
        warmup=0,
        rounds=10,
        time_cap_s=60,
        clock=machine.clock,
    )
    # 10 rounds: ratios 0.3 and 2.0, wide; 20 rounds: ranks 6 and 15 of 20 are both 1.0, narrow
    assert result.rounds == 20
    assert not result.noisy and result.ratio == pytest.approx(1.0)


def test_a_measurement_that_stays_wide_stops_at_the_time_cap_and_is_noisy():
    machine = ScriptedMachine([0.3, 2.0] * 10_000, [1.0] * 20_000)
    result = paired_latency(
        machine.candidate,
        machine.reference,
        warmup=0,
        rounds=10,
        time_cap_s=0.1,
        clock=machine.clock,
    )
    assert result.noisy and result.verdict == "noisy"
    assert machine.now <= 0.1 + 1e-9
    assert result.rounds in (10, 20, 40)


def test_a_tight_measurement_takes_no_more_rounds():
    machine = ScriptedMachine([1.0] * 100, [2.0] * 100)
    result = paired_latency(
        machine.candidate,
        machine.reference,
        warmup=2,
        rounds=10,
        time_cap_s=60,
        clock=machine.clock,
    )
    assert result.rounds == 10 and result.ratio == 0.5 and not math.isnan(result.ratio_lo)


def values(ratio, lo, hi, noisy=False):
    return {
        "latency_ratio": ratio,
        "latency_ratio_lo": lo,
        "latency_ratio_hi": hi,
        "latency_noisy": noisy,
    }


def test_the_search_objective_claims_a_gain_only_where_the_interval_excludes_one():
    assert objective_ratio(values(0.4, 0.38, 0.43)) == 0.4  # int8-like: a real gain
    assert objective_ratio(values(1.3, 1.2, 1.4)) == 1.3  # a real loss
    assert objective_ratio(values(0.93, 0.85, 1.02)) == 1.0  # 4-bit decoded: no gain claimed
    assert objective_ratio(values(0.5, 0.2, 1.9, noisy=True)) == 1.9  # noisy: its worst case
    assert objective_latency(values(0.4, 0.38, 0.43), 10.0) == pytest.approx(4.0)
    assert inside(0.41, 0.38, 0.43) and not inside(0.5, 0.38, 0.43)


def test_an_interval_within_three_per_cent_of_one_is_no_gain():
    # two runs of one model, tight but a little apart: not a speed-up or a slow-down
    assert verdict_of(1.009, 1.029) == "no gain" and verdict_of(0.975, 0.99) == "no gain"
    assert verdict_of(0.5, 0.96) == "faster" and verdict_of(1.04, 1.2) == "slower"
    assert objective_ratio(values(1.02, 1.009, 1.029)) == 1.0


def test_a_measurement_that_stays_wide_stops_after_three_doublings():
    machine = ScriptedMachine([0.3, 2.0] * 10_000, [1.0] * 20_000)
    result = paired_latency(
        machine.candidate,
        machine.reference,
        warmup=0,
        rounds=10,
        time_cap_s=3600,
        clock=machine.clock,
    )
    assert result.noisy and result.rounds == 80
