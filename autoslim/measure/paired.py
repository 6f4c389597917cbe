"""Latency as a paired ratio against a reference, with an interval and a noise verdict.

A plain median of one model's timings moves with whatever else the machine runs: on a
shared 2-core box plain medians moved by up to 71 % between a quiet and a loaded machine.
Timing the candidate and a reference (the fp32 baseline) alternately, round by round, on
the same batch, threads and process, makes load that drifts during a measurement hit
both sides of each round alike, so it cancels out of their ratio.

- Each round times the candidate and the reference once each, in alternating order
  (AB, BA, ...), so neither always runs on caches the other just warmed.
- The ratio is the median of the per-round ratios. Its interval is the distribution-free
  order-statistic interval for a median (the binomial rule), so it assumes nothing about
  the shape of the noise.
- A measurement whose interval is wider than :data:`WIDE` is re-measured with twice the
  rounds, until a time cap; if it stays wide, it is ``noisy``: its latency is recorded
  as unknown (the interval's upper end), never as a gain.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from scipy.stats import binom

# The interval's half-width, relative to the ratio, beyond which a measurement is wide
# (the load test, benchmarks/latency_noise.py, shows what quiet and loaded machines give).
WIDE = 0.15
# Two runs of the same model differ by up to a few per cent in one process (memory
# layout, which side runs first): artifacts running the baseline's own kernels gave quiet
# paired ratios of 0.984-1.024 (benchmarks/latency_noise.py). An interval
# reaching into 1 ± SAME is no gain.
SAME = 0.03
# Re-measuring a wide interval stops once another doubling would pass this many seconds,
# or after this many doublings (8× the rounds): a sub-millisecond model on a busy box
# would otherwise double for the whole time cap.
TIME_CAP_S = 20.0
MAX_DOUBLINGS = 3
CONFIDENCE = 0.95
MIN_ROUNDS = 10


@dataclass(frozen=True)
class PairedLatency:
    """One paired measurement. Times are medians in ms; the ratio is candidate/reference."""

    latency_ms: float
    p10_ms: float
    p90_ms: float
    reference_ms: float
    ratio: float
    ratio_lo: float
    ratio_hi: float
    rounds: int
    noisy: bool

    @property
    def verdict(self) -> str:
        """``faster``/``slower`` only where the whole interval clears 1 ± :data:`SAME`."""
        return verdict_of(self.ratio_lo, self.ratio_hi, self.noisy)

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def verdict_of(lo: float, hi: float, noisy: bool = False) -> str:
    if noisy:
        return "noisy"
    if hi < 1.0 - SAME:
        return "faster"
    if lo > 1.0 + SAME:
        return "slower"
    return "no gain"


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Distribution-free interval for the median: order statistics ``k`` and ``n+1-k``
    where ``k`` is the largest rank with P(Binomial(n, 1/2) < k) <= (1-confidence)/2.
    Below 6 values no rank qualifies at 95 %, and the interval is the full range."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        raise ValueError("no values")
    k = int(binom.ppf((1 - confidence) / 2, n, 0.5))  # P(X <= k-1) <= alpha/2 once k is this rank
    while k > 0 and binom.cdf(k - 1, n, 0.5) > (1 - confidence) / 2:
        k -= 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def relative_half_width(ratio: float, lo: float, hi: float) -> float:
    """How far the interval reaches from the ratio, as a fraction of it (the larger side)."""
    if ratio <= 0 or not math.isfinite(ratio):
        return math.inf
    return max(hi / ratio - 1.0, 1.0 - lo / ratio)


def summarise(
    candidate_ms: Sequence[float],
    reference_ms: Sequence[float],
    *,
    wide: float = WIDE,
    confidence: float = CONFIDENCE,
) -> PairedLatency:
    """The paired statistics of rounds already timed (one candidate and one reference
    time per round); ``noisy`` if the interval is wider than ``wide``."""
    if len(candidate_ms) != len(reference_ms) or not candidate_ms:
        raise ValueError("need the same number of candidate and reference rounds, at least one")
    ratios = [c / r for c, r in zip(candidate_ms, reference_ms, strict=True)]
    ratio = statistics.median(ratios)
    lo, hi = median_interval(ratios, confidence)
    deciles = (
        statistics.quantiles(candidate_ms, n=10, method="inclusive")
        if len(candidate_ms) > 1
        else [candidate_ms[0]] * 9
    )
    return PairedLatency(
        latency_ms=statistics.median(candidate_ms),
        p10_ms=deciles[0],
        p90_ms=deciles[-1],
        reference_ms=statistics.median(reference_ms),
        ratio=ratio,
        ratio_lo=lo,
        ratio_hi=hi,
        rounds=len(ratios),
        noisy=relative_half_width(ratio, lo, hi) > wide,
    )


def time_rounds(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    rounds: int,
    *,
    first_round: int = 0,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[float], list[float]]:
    """``rounds`` interleaved rounds: (candidate ms, reference ms) per round, the order
    alternating with the round number."""
    sync = sync or (lambda: None)

    def timed(fn: Callable[[], object]) -> float:
        start = clock()
        fn()
        sync()
        return (clock() - start) * 1e3

    cand, ref = [], []
    for index in range(first_round, first_round + rounds):
        if index % 2 == 0:
            cand.append(timed(candidate))
            ref.append(timed(reference))
        else:
            ref.append(timed(reference))
            cand.append(timed(candidate))
    return cand, ref


def paired_latency(
    candidate: Callable[[], object],
    reference: Callable[[], object],
    *,
    warmup: int,
    rounds: int,
    time_cap_s: float = TIME_CAP_S,
    wide: float = WIDE,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> PairedLatency:
    """Measure, then re-measure with twice the rounds while the interval is wide, at most
    :data:`MAX_DOUBLINGS` times and while the next batch of rounds still fits in
    ``time_cap_s`` (judged by the time taken so far)."""
    for _ in range(warmup):
        candidate()
        reference()
    rounds = max(rounds, MIN_ROUNDS)
    started = clock()
    cand, ref = time_rounds(candidate, reference, rounds, sync=sync, clock=clock)
    result = summarise(cand, ref, wide=wide)
    for _ in range(MAX_DOUBLINGS):
        spent = clock() - started
        more = len(cand)  # doubling the rounds
        if not result.noisy or spent * 2 > time_cap_s:
            break
        extra_cand, extra_ref = time_rounds(
            candidate, reference, more, first_round=len(cand), sync=sync, clock=clock
        )
        cand += extra_cand
        ref += extra_ref
        result = summarise(cand, ref, wide=wide)
    return result


def time_rounds_many(
    candidates: Sequence[Callable[[], object]],
    reference: Callable[[], object],
    rounds: int,
    *,
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[list[list[float]], list[float]]:
    """Rounds in which the reference and every candidate run once, in an order that
    rotates round by round; per candidate its times, and the reference's, in ms. Each
    candidate's ratio is then taken against the reference of the same round."""
    sync = sync or (lambda: None)
    fns = [reference, *candidates]
    times: list[list[float]] = [[] for _ in fns]
    for index in range(rounds):
        shift = index % len(fns)
        for position in [*range(shift, len(fns)), *range(shift)]:
            start = clock()
            fns[position]()
            sync()
            times[position].append((clock() - start) * 1e3)
    return times[1:], times[0]


def objective_ratio(values: dict) -> float:
    """The ratio a search compares trials by: 1.0 where the verdict is no gain (no
    measurable difference from the baseline, so neither a gain nor a loss is claimed),
    the interval's upper end where the measurement stayed noisy (unknown, never a gain),
    and the paired ratio otherwise."""
    verdict = verdict_of(
        values["latency_ratio_lo"], values["latency_ratio_hi"], bool(values.get("latency_noisy"))
    )
    if verdict == "noisy":
        return float(values["latency_ratio_hi"])
    return 1.0 if verdict == "no gain" else float(values["latency_ratio"])


def objective_latency(values: dict, baseline_latency_ms: float) -> float:
    """:func:`objective_ratio` times the baseline's latency measured when the search
    began. Load during one trial's measurement cancels out of its ratio, and a constant
    scale changes no Pareto comparison."""
    return objective_ratio(values) * baseline_latency_ms


def inside(value: float, lo: float, hi: float) -> bool:
    """Whether a re-measured ratio lies in a recorded interval."""
    return lo <= value <= hi
