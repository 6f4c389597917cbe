"""Switching policies on hand-made ladders: each rule's step, its hysteresis, bad input."""

import pytest

from autoslim.bundle import LatencyBudget, Manual, PowerBudget, QueueLength, Signals
from autoslim.bundle.module import Point
from autoslim.errors import AutoslimError

# most accurate first: 10 ms, 5 ms, 2 ms per request as measured
LADDER = [
    Point(0, "accurate", 0.99, 10.0, 4.0),
    Point(1, "knee", 0.97, 5.0, 2.0),
    Point(2, "fast", 0.90, 2.0, 1.0),
]


def signals(p90: float, n: int = 40, **kw) -> Signals:
    return Signals(latencies_ms=[p90] * n, since_switch=n, **kw)


def test_latency_budget_steps_faster_over_budget_and_holds_in_the_band():
    policy = LatencyBudget(budget=20.0, margin=0.2, min_dwell=32)
    assert policy.choose(0, LADDER, signals(25.0)) == 1
    assert policy.choose(2, LADDER, signals(25.0)) == 2  # nothing faster to go to
    # knee at 9 ms: the accurate point would read 9 * 10/5 = 18 ms > 16 (budget less margin)
    assert policy.choose(1, LADDER, signals(9.0)) == 1
    # knee at 7 ms: predicted 14 ms < 16: climb back
    assert policy.choose(1, LADDER, signals(7.0)) == 0


def test_latency_budget_waits_for_a_full_window_after_a_switch():
    policy = LatencyBudget(budget=20.0, min_dwell=32)
    assert policy.choose(0, LADDER, signals(100.0, n=31)) == 0
    assert policy.choose(0, LADDER, signals(100.0, n=32)) == 1


def test_a_reading_that_alternates_around_the_budget_does_not_flap():
    policy = LatencyBudget(budget=20.0, margin=0.2, min_dwell=1)
    current, moves = 1, 0
    for reading in [19.0, 21.0] * 50:  # the knee hovering at the budget
        chosen = policy.choose(current, LADDER, signals(reading, n=1))
        moves += chosen != current
        current = chosen
    # the first reading over budget steps to the fast point; there the knee's prediction
    # (x 5/2) is 47-52 ms, never under 16 ms: it stays
    assert current == 2 and moves == 1


def test_power_budget_estimates_from_rate_and_measured_energy_when_nothing_measures():
    policy = PowerBudget(budget=0.5, min_dwell=1)  # watts
    # 200 requests/s x 4 mJ = 0.8 W on the accurate point: over
    assert policy.choose(0, LADDER, Signals(arrival_rate=200.0, since_switch=5)) == 1
    # measured power wins over the estimate
    assert policy.choose(0, LADDER, Signals(arrival_rate=200.0, power_w=0.1, since_switch=5)) == 0


def test_queue_length_band():
    policy = QueueLength(high=8, low=1, min_dwell=1)
    assert policy.choose(0, LADDER, Signals(queue_length=9, since_switch=1)) == 1
    assert policy.choose(1, LADDER, Signals(queue_length=4, since_switch=1)) == 1
    assert policy.choose(1, LADDER, Signals(queue_length=0, since_switch=1)) == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: LatencyBudget(budget=-5.0), "must be a positive number of milliseconds, not -5.0"),
        (lambda: LatencyBudget(budget=float("nan")), "positive number"),
        (lambda: PowerBudget(budget=0), "must be a positive number of watts"),
        (lambda: LatencyBudget(budget=5.0, margin=1.5), "margin must be in [0, 1)"),
        (lambda: QueueLength(high=1, low=3), "0 <= low < high"),
    ],
)
def test_bad_policy_settings_are_one_line(make, message):
    with pytest.raises(AutoslimError, match=message.replace("[", r"\[").replace(")", r"\)")):
        make()


def test_manual_names_a_ladder_index():
    assert Manual(2).choose(0, LADDER, Signals()) == 2
    with pytest.raises(AutoslimError, match="points 0..2, not 3"):
        Manual(3).choose(0, LADDER, Signals())


def test_no_climb_onto_a_point_the_load_would_overwhelm():
    policy = LatencyBudget(budget=20.0, margin=0.2, min_dwell=32)
    # latency alone says climb (7 ms x 10/5 = 14 < 16), but the knee is 45 % busy and
    # the accurate point costs twice as much: 90 % busy there, over 1 - margin
    assert policy.choose(1, LADDER, signals(7.0, utilization=0.45)) == 1
    assert policy.choose(1, LADDER, signals(7.0, utilization=0.35)) == 0


def test_over_budget_steps_past_a_point_that_is_no_cheaper():
    ladder = [LADDER[0], Point(1, "as slow", 0.98, 10.0, 4.0), LADDER[2]]
    assert LatencyBudget(budget=20.0, min_dwell=1).choose(0, ladder, signals(25.0, n=1)) == 2
