"""Trial selection rules checked against a hand-made results table."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from autoslim.errors import AutoslimError
from autoslim.results.select import (
    Condition,
    Rule,
    compromise_point,
    knee_point,
    parse_rule,
    select_named_points,
    select_trial,
)

DIRECTIONS = {"accuracy": "maximize", "size_bytes": "minimize", "latency_ms": "minimize"}
BASELINE = {"accuracy": 0.90, "size_bytes": 1000.0, "latency_ms": 10.0}


@pytest.fixture
def table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3, 4, 5, 6, 7],
            "feasible": [True, True, True, True, False, True, True, True],
            "accuracy": [0.89, 0.88, 0.80, 0.895, 0.99, 0.70, np.nan, 0.89],
            "size_bytes": [500.0, 250.0, 100.0, 900.0, 10.0, 50.0, 1.0, 500.0],
            "latency_ms": [6.0, 5.0, 3.0, 9.0, 1.0, 2.0, 0.1, 6.0],
        }
    )


def test_knee_point_on_hand_made_front() -> None:
    # Normalised: (0,1), (0.1,0.2), (1,0), (0.5,0.5) -> row 1 is closest to (0,0).
    values = np.array([[0.0, 10.0], [1.0, 2.0], [10.0, 0.0], [5.0, 5.0]])
    assert knee_point(values, ["minimize", "minimize"]) == 1
    # Maximising the first objective flips it: row 2 becomes (0, 0), the ideal itself.
    assert knee_point(values, {"a": "maximize", "b": "minimize"}) == 2


def test_knee_point_constant_column_and_ties() -> None:
    values = np.array([[1.0, 3.0], [0.0, 3.0], [0.0, 3.0]])
    assert knee_point(values, ["minimize", "minimize"]) == 1
    with pytest.raises(AutoslimError):
        knee_point(np.empty((0, 2)), ["minimize", "minimize"])


def test_parse_rule_valid() -> None:
    assert parse_rule("  knee ") == Rule(kind="knee", text="knee")
    rule = parse_rule("max accuracy   where accuracy_drop<=0.01 and size_bytes_ratio < 5e-1")
    assert rule.kind == "max"
    assert rule.target == "accuracy"
    assert rule.conditions == (
        Condition("accuracy_drop", "<=", 0.01),
        Condition("size_bytes_ratio", "<", 0.5),
    )
    rule = parse_rule("min latency_ms where accuracy >= .85 and size_bytes == 1e5 and x > -2")
    assert [c.op for c in rule.conditions] == [">=", "==", ">"]
    assert [c.value for c in rule.conditions] == [0.85, 100000.0, -2.0]
    assert parse_rule("min Size").target == "Size"


@pytest.mark.parametrize(
    ("text", "quoted"),
    [
        ("", "''"),
        ("best accuracy", "'best accuracy'"),
        ("max", "'max'"),
        ("max accuracy where", "'max accuracy where'"),
        ("max accuracy where accuracy_drop =< 0.01", "'accuracy_drop =< 0.01'"),
        ("max accuracy where accuracy_drop <= abc", "'accuracy_drop <= abc'"),
        ("max accuracy where a < 1 and", "'max accuracy where a < 1 and'"),
        ("max accuracy where a < 1 and and b > 2", "'and b > 2'"),
        ("max accuracy where a < 1 or b > 2", "'a < 1 or b > 2'"),
        ("Knee", "'Knee'"),
        ("knee where a < 1", "'knee where a < 1'"),
    ],
)
def test_parse_rule_invalid(text: str, quoted: str) -> None:
    with pytest.raises(AutoslimError) as info:
        parse_rule(text)
    message = str(info.value)
    assert quoted in message
    assert "\n" not in message


def test_select_min_max_with_drop_and_ratio(table: pd.DataFrame) -> None:
    # Trial 3 (0.895) is the most accurate feasible one; 4 is infeasible, 6 is NaN.
    assert select_trial(table, DIRECTIONS, BASELINE, "max accuracy") == 3
    # Drop <= 0.01 keeps 0 (0.89, exactly 0.01 despite float rounding), 3 and 7.
    assert (
        select_trial(table, DIRECTIONS, BASELINE, "min size_bytes where accuracy_drop <= 0.01") == 0
    )
    # Ties on size between 0 and 7 go to the smaller trial number.
    rule = "max accuracy where size_bytes_ratio <= 0.5"
    assert select_trial(table, DIRECTIONS, BASELINE, rule) == 0
    rule = "max accuracy where size_bytes_ratio < 0.5 and latency_ms_drop <= -5"
    assert select_trial(table, DIRECTIONS, BASELINE, rule) == 1
    assert select_trial(table, DIRECTIONS, BASELINE, "min size_bytes") == 5
    assert select_trial(table, DIRECTIONS, BASELINE, "min size_bytes where accuracy > 0.75") == 2
    assert select_trial(table, DIRECTIONS, BASELINE, parse_rule("min latency_ms_ratio")) == 5


def test_select_knee_and_compromise_use_the_feasible_front(table: pd.DataFrame) -> None:
    # Feasible finite front: trials 0, 1, 2, 3, 5 and 7 (a duplicate of 0); 4 would
    # dominate all but is infeasible. Normalised over the front (accuracy, size, latency):
    # 0 (0.026, 0.529, 0.571), 1 (0.077, 0.235, 0.429), 2 (0.487, 0.059, 0.143),
    # 3 (0, 1, 1), 5 (1, 0, 0).
    # Compromise: squared distances to the ideal 0: 0.607, 1: 0.245, 2: 0.261, 3: 2, 5: 1.
    assert select_trial(table, DIRECTIONS, BASELINE, "compromise") == 1
    # Knee: trial 5 is the extreme of both size and latency, so the extremes do not span
    # a plane and x + y + z = 1 stands in; 1 - sum is 0: -0.126, 1: 0.259, 2: 0.311.
    assert select_trial(table, DIRECTIONS, BASELINE, "knee") == 2


def test_the_knee_is_the_point_farthest_below_the_line_joining_the_ends() -> None:
    # Already normalised. The line through (0, 1) and (1, 0) is x + y = 1: the knee
    # minimises x + y (B: 0.52 against C: 0.6); the compromise minimises x² + y²
    # (B: 0.2504 against C: 0.18). They differ on this front.
    values = np.array([[0.0, 1.0], [0.02, 0.5], [0.3, 0.3], [1.0, 0.0]])
    assert knee_point(values, ["minimize", "minimize"]) == 1
    assert compromise_point(values, ["minimize", "minimize"]) == 2


def test_the_knee_in_three_objectives_uses_the_plane_through_the_extremes() -> None:
    # Extremes (0, 1, 1), (1, 0, 1), (1, 1, 0) span the plane x + y + z = 2 (w = 1/2 each):
    # P (0.4, 0.4, 0.4) lies 1 - 0.6 = 0.4 below it, Q (0.1, 0.1, 0.9) 1 - 0.55 = 0.45:
    # Q is the knee. Nearest the ideal is P (0.48 against 0.83).
    values = np.array(
        [[0, 1, 1], [1, 0, 1], [1, 1, 0], [0.4, 0.4, 0.4], [0.1, 0.1, 0.9]], dtype=float
    )
    directions = ["minimize"] * 3
    assert knee_point(values, directions) == 4
    assert compromise_point(values, directions) == 3


def test_select_errors(table: pd.DataFrame) -> None:
    with pytest.raises(
        AutoslimError, match=r"unknown name 'acc'.*accuracy, size_bytes, latency_ms"
    ):
        select_trial(table, DIRECTIONS, BASELINE, "max acc")
    with pytest.raises(AutoslimError, match="unknown name 'flops_drop'"):
        select_trial(table, DIRECTIONS, BASELINE, "max accuracy where flops_drop < 1")
    with pytest.raises(AutoslimError, match="baseline value for 'latency_ms'"):
        select_trial(
            table, DIRECTIONS, {"accuracy": 0.9}, "max accuracy where latency_ms_ratio < 1"
        )
    rule = "max accuracy where accuracy > 0.9"
    with pytest.raises(AutoslimError, match=re.escape(f"no trial satisfies {rule!r}")):
        select_trial(table, DIRECTIONS, BASELINE, rule)
    with pytest.raises(AutoslimError, match="missing column"):
        select_trial(table.drop(columns="feasible"), DIRECTIONS, BASELINE, "knee")
    with pytest.raises(AutoslimError, match="no trial satisfies 'knee'"):
        select_trial(table.assign(feasible=False), DIRECTIONS, BASELINE, "knee")


def test_select_named_points(table: pd.DataFrame) -> None:
    points = select_named_points(table, DIRECTIONS, BASELINE, "accuracy")
    assert points == {
        "knee": 2,
        "compromise": 1,
        "most_accurate_within_1pt": 3,
        "smallest": 5,
        "fastest": 5,
    }
    two = {"accuracy": "maximize", "size_bytes": "minimize"}
    # Baseline 0.99: nobody is within 1 pt, so that entry is omitted, not an error.
    # Two objectives: compromise by squared distances 0: 0.281, 1: 0.061, 2: 0.241; knee
    # by 1 - (x + y) below the line through trials 3 and 5: 0: 0.445, 1: 0.688, 2: 0.454.
    points = select_named_points(table, two, {"accuracy": 0.99}, "accuracy")
    assert points == {"knee": 1, "compromise": 1, "smallest": 5}
    assert select_named_points(table, two, {}, "accuracy") == points
