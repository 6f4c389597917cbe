"""Study results: Pareto fronts, hypervolume, trial selection and plots."""

from __future__ import annotations

from autoslim.results.pareto import (
    dominates,
    hypervolume,
    hypervolume_history,
    non_dominated_mask,
    pareto_front,
    reference_point,
    to_minimization,
)
from autoslim.results.plot import front_projection_data, plot_front, plot_hypervolume
from autoslim.results.select import (
    Condition,
    NoTrialSatisfies,
    Rule,
    compromise_point,
    knee_point,
    parse_rule,
    select_named_points,
    select_trial,
    validate_table,
)

__all__ = [
    "Condition",
    "NoTrialSatisfies",
    "Rule",
    "compromise_point",
    "dominates",
    "front_projection_data",
    "hypervolume",
    "hypervolume_history",
    "knee_point",
    "non_dominated_mask",
    "pareto_front",
    "parse_rule",
    "plot_front",
    "plot_hypervolume",
    "reference_point",
    "select_named_points",
    "select_trial",
    "to_minimization",
    "validate_table",
]
