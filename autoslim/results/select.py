"""Pick one trial out of a finished study with a tiny, explicit rule language.

A Pareto front is a set of trade-offs, but a user usually ships one model.
Rules such as ``max accuracy where accuracy_drop <= 0.01`` state that choice
in a line that can live in a config file or a CLI flag, and the result is
reproducible from the saved results table alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from autoslim.errors import AutoslimError
from autoslim.results.pareto import pareto_front, to_minimization

_NAME = r"[A-Za-z_][A-Za-z0-9_.]*"
_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_OPS = ("<=", ">=", "==", "<", ">")
_RULE_RE = re.compile(rf"^(min|max)\s+({_NAME})(?:\s+where\s+(.*))?$", re.DOTALL)
_COND_RE = re.compile(rf"^({_NAME})\s*(<=|>=|==|<|>)\s*({_NUMBER})$")
_AND_RE = re.compile(r"\s+and\s+")
# Relative slack for comparisons: 0.90 - 0.89 is 0.010000000000000009 in
# floating point, and "drop <= 0.01" must still accept it.
_REL_TOL = 1e-9


class NoTrialSatisfies(AutoslimError):
    """No candidate trial meets a rule; reports skip such named points."""


@dataclass(frozen=True)
class Condition:
    """``term op value``: one filter of a ``where`` clause."""

    term: str
    op: str
    value: float


@dataclass(frozen=True)
class Rule:
    """A parsed selection rule: ``knee``, ``compromise``, or ``min``/``max`` of a term
    with conditions."""

    kind: str
    target: str | None = None
    conditions: tuple[Condition, ...] = ()
    text: str = ""


def parse_rule(text: str) -> Rule:
    """Parse ``knee``, ``compromise`` or ``min|max TERM [where TERM OP NUMBER [and ...]]``.

    Names are resolved later against a table, so parsing needs no study and a
    typo in the grammar is reported before any work is done.
    """
    stripped = text.strip()
    if stripped in FRONT_RULES:
        return Rule(kind=stripped, text=stripped)
    match = _RULE_RE.match(stripped)
    if match is None:
        raise AutoslimError(
            f"bad selection rule {text!r}: expected 'knee', 'compromise' or "
            "'min|max NAME [where COND and ...]'"
        )
    kind, target, where = match.groups()
    conditions: tuple[Condition, ...] = ()
    if where is not None:
        conditions = tuple(_parse_condition(part, text) for part in _AND_RE.split(where.strip()))
    return Rule(kind=kind, target=target, conditions=conditions, text=stripped)


def _parse_condition(part: str, text: str) -> Condition:
    match = _COND_RE.match(part.strip())
    if match is None:
        raise AutoslimError(
            f"bad condition {part.strip()!r} in rule {text!r}: expected TERM OP NUMBER "
            f"with OP one of {', '.join(_OPS)}"
        )
    term, op, number = match.groups()
    return Condition(term=term, op=op, value=float(number))


def _direction_list(directions: Sequence[str] | Mapping[str, str]) -> list[str]:
    if isinstance(directions, Mapping):
        return list(directions.values())
    return list(directions)


def _normalised(values: np.ndarray, directions: Sequence[str] | Mapping[str, str]) -> np.ndarray:
    """Every objective as a minimisation rescaled to [0, 1] over the rows (bytes, ms and
    accuracy have wildly different units); a constant column becomes 0 and does not
    influence a choice."""
    mins = to_minimization(values, _direction_list(directions))
    if len(mins) == 0:
        raise AutoslimError("cannot pick a point among zero trials")
    low = mins.min(axis=0)
    span = mins.max(axis=0) - low
    return np.where(span > 0, (mins - low) / np.where(span > 0, span, 1.0), 0.0)


def compromise_point(values: np.ndarray, directions: Sequence[str] | Mapping[str, str]) -> int:
    """Row index of the compromise-programming point: the one nearest (Euclidean) to the
    ideal point after normalisation. Ties go to the lowest row."""
    scaled = _normalised(values, directions)
    return int(np.argmin(np.sqrt(np.sum(scaled**2, axis=1))))


def knee_point(values: np.ndarray, directions: Sequence[str] | Mapping[str, str]) -> int:
    """Row index of the knee of a front: after normalisation, the point farthest on the
    ideal's side of the hyperplane through the front's extreme points (in 2-D, the line
    joining the two ends), where giving up a little of one objective buys the most of
    the others (Das, 1999; Deb and Gupta's distance-based knee).

    The extreme point of an objective is the row that is best in it. Where those rows
    do not span a hyperplane (a front of fewer distinct points than objectives), the
    plane ``sum(x) = 1`` through the unit corners stands in. Ties go to the lowest row.
    """
    scaled = _normalised(values, directions)
    extremes = scaled[np.argmin(scaled, axis=0)]
    normal = _plane_through(extremes)
    return int(np.argmax(1.0 - scaled @ normal))


def _plane_through(points: np.ndarray) -> np.ndarray:
    """``w`` with ``w · p = 1`` for each of the m points in m dimensions (the plane through
    them), or all ones where they are degenerate."""
    dims = points.shape[1]
    if np.linalg.matrix_rank(points) == dims:
        normal = np.linalg.solve(points, np.ones(dims))
        if np.all(np.isfinite(normal)) and np.all(normal > 0):
            return normal
    return np.ones(dims)


# Rules that pick one point of the feasible front by its shape alone.
FRONT_RULES = {"knee": knee_point, "compromise": compromise_point}


def validate_table(table: pd.DataFrame, objectives: Sequence[str]) -> None:
    """Raise AutoslimError if ``table`` lacks ``trial``, ``feasible`` or an objective column."""
    missing = [c for c in ("trial", "feasible", *objectives) if c not in table.columns]
    if missing:
        raise AutoslimError(f"results table is missing column(s): {', '.join(missing)}")


def _candidates(table: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    """Feasible rows whose objective values are all finite."""
    feasible = table["feasible"].to_numpy(dtype=bool, na_value=False)
    finite = np.ones(len(table), dtype=bool)
    for name in objectives:
        finite &= np.isfinite(table[name].to_numpy(dtype=float, na_value=np.nan))
    return table.loc[feasible & finite]


def _term_values(
    term: str,
    rows: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
) -> np.ndarray:
    """Evaluate an objective name, ``NAME_drop`` or ``NAME_ratio`` on ``rows``."""
    if term in directions:
        return rows[term].to_numpy(dtype=float)
    for suffix in ("_drop", "_ratio"):
        name = term.removesuffix(suffix)
        if term.endswith(suffix) and name in directions:
            base = float(baseline.get(name, math.nan))
            if not math.isfinite(base):
                raise AutoslimError(f"{term!r} needs a baseline value for {name!r}, none given")
            values = rows[name].to_numpy(dtype=float)
            if suffix == "_ratio":
                if base == 0.0:
                    raise AutoslimError(f"{term!r} is undefined: baseline {name!r} is 0")
                return values / base
            return base - values if directions[name] == "maximize" else values - base
    known = ", ".join(directions)
    raise AutoslimError(
        f"unknown name {term!r}; known objectives: {known} (plus NAME_drop, NAME_ratio)"
    )


def _compare(values: np.ndarray, op: str, limit: float) -> np.ndarray:
    tol = _REL_TOL * max(1.0, abs(limit))
    if op == "<=":
        return values <= limit + tol
    if op == "<":
        return values < limit - tol
    if op == ">=":
        return values >= limit - tol
    if op == ">":
        return values > limit + tol
    return np.abs(values - limit) <= tol


def _select_on_front(kind: str, rows: pd.DataFrame, directions: Mapping[str, str]) -> int:
    names = list(directions)
    values = rows[names].to_numpy(dtype=float)
    dirs = list(directions.values())
    front = pareto_front(values, dirs)
    return int(rows["trial"].iloc[front[FRONT_RULES[kind](values[front], dirs)]])


def _select_extreme(
    rule: Rule,
    rows: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
) -> int:
    target = _term_values(rule.target or "", rows, directions, baseline)
    keep = np.ones(len(rows), dtype=bool)
    for cond in rule.conditions:
        keep &= _compare(_term_values(cond.term, rows, directions, baseline), cond.op, cond.value)
    keep &= ~np.isnan(target)
    if not keep.any():
        raise NoTrialSatisfies(f"no trial satisfies {rule.text!r}")
    trials = rows["trial"].to_numpy()[keep]
    score = target[keep] if rule.kind == "min" else -target[keep]
    order = np.lexsort((trials, score))
    return int(trials[order[0]])


def select_trial(
    table: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
    rule: Rule | str,
) -> int:
    """Return the ``trial`` number chosen by ``rule`` among feasible, finite rows.

    ``min``/``max`` ties go to the smallest trial number so the choice is
    deterministic; ``knee`` and ``compromise`` are taken on the feasible Pareto front.
    """
    if isinstance(rule, str):
        rule = parse_rule(rule)
    validate_table(table, list(directions))
    rows = _candidates(table, list(directions))
    if rule.kind in FRONT_RULES:
        if rows.empty:
            raise NoTrialSatisfies(
                f"no trial satisfies {rule.kind!r}: no feasible trial with finite objectives"
            )
        return _select_on_front(rule.kind, rows, directions)
    return _select_extreme(rule, rows, directions, baseline)


def select_named_points(
    table: pd.DataFrame,
    directions: Mapping[str, str],
    baseline: Mapping[str, float],
    metric: str,
) -> dict[str, int]:
    """Trial numbers of the points a report highlights; missing ones are omitted.

    ``most_accurate_within_1pt`` treats metric values as fractions (1 pt = 0.01).
    """
    rules: dict[str, Rule] = {kind: Rule(kind=kind, text=kind) for kind in FRONT_RULES}
    if metric in directions and math.isfinite(float(baseline.get(metric, math.nan))):
        kind = "max" if directions[metric] == "maximize" else "min"
        cond = Condition(term=f"{metric}_drop", op="<=", value=0.01)
        text = f"{kind} {metric} where {metric}_drop <= 0.01"
        rules["most_accurate_within_1pt"] = Rule(kind, metric, (cond,), text)
    for key, name in (("smallest", "size_bytes"), ("fastest", "latency_ms")):
        if name in directions:
            rules[key] = Rule(kind="min", target=name, text=f"min {name}")
    chosen: dict[str, int] = {}
    for key, rule in rules.items():
        try:
            chosen[key] = select_trial(table, directions, baseline, rule)
        except NoTrialSatisfies:
            continue
    return chosen
