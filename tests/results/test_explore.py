"""The notebooks' data frames, checked against values worked out by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from autoslim.errors import AutoslimError
from autoslim.recipe import Recipe
from autoslim.results.explore import (
    front_layer_plans,
    hypervolume_series,
    layer_names,
    layer_plan,
    measured_vs_recorded,
    parallel_frame,
    pick_trial,
    plan_matrix,
    projection_axes,
    recipe_with_provenance,
    relative_columns,
    run_task_ref,
    stage_counts,
    width_bits,
)
from autoslim.results.select import NoTrialSatisfies
from autoslim.searching.outputs import hypervolume_summary

TASK = {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4}}
TWO = {"accuracy": "maximize", "size_bytes": "minimize"}


@pytest.fixture
def table() -> pd.DataFrame:
    """Four trials: two feasible, one failed, one infeasible (but smallest)."""
    return pd.DataFrame(
        {
            "trial": [0, 1, 2, 3],
            "state": ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE"],
            "accuracy": [0.8, 0.9, np.nan, 0.7],
            "size_bytes": [4.0, 8.0, np.nan, 2.0],
            "feasible": [True, True, False, False],
            "latency_ms": [1.0, 2.0, np.nan, 0.5],
        }
    )


def test_relative_columns_follow_the_rule_language(table):
    out = relative_columns(
        table, {**TWO, "latency_ms": "minimize"}, {"accuracy": 0.9, "size_bytes": 16.0}
    )
    np.testing.assert_allclose(out["accuracy_drop"], [0.1, 0.0, np.nan, 0.2])
    np.testing.assert_allclose(out["accuracy_ratio"], [0.8 / 0.9, 1.0, np.nan, 0.7 / 0.9])
    np.testing.assert_allclose(out["size_bytes_drop"], [-12.0, -8.0, np.nan, -14.0])
    np.testing.assert_allclose(out["size_bytes_ratio"], [0.25, 0.5, np.nan, 0.125])
    assert "latency_ms_drop" not in out  # no baseline value, no relative column
    assert "accuracy_drop" not in table  # the input is not modified
    assert out.query("accuracy_drop <= 0.1")["trial"].tolist() == [0, 1]


def test_pick_trial_falls_back_to_the_next_rule(table):
    baseline = {"accuracy": 0.9, "size_bytes": 16.0}
    strict = "min size_bytes where accuracy_drop <= 0.01"
    assert pick_trial(table, TWO, baseline, [strict, "knee"]) == (1, strict)
    loose = "min size_bytes where accuracy_drop <= 0.2"  # trial 3 is infeasible: never picked
    assert pick_trial(table, TWO, baseline, [loose]) == (0, loose)
    baseline = {"accuracy": 1.0, "size_bytes": 16.0}
    assert pick_trial(table, TWO, baseline, [strict, "knee"]) == (0, "knee")
    with pytest.raises(NoTrialSatisfies, match="no trial satisfies any of"):
        pick_trial(table, TWO, baseline, [strict])


def test_hypervolume_series_by_hand(table):
    # Minimisation: t0 (-0.8, 4), t1 (-0.9, 8), baseline (-1.0, 10); trial 3 infeasible.
    # Reference = nadir (-0.8, 10) + 10 % of the span (0.2, 6) = (-0.78, 10.6).
    # After t0: 0.02 * 6.6 = 0.132. After t1: 0.1 * 2.6 + 0.02 * 6.6 = 0.392.
    series = hypervolume_series(table, TWO, {"accuracy": 1.0, "size_bytes": 10.0})
    assert series.index.tolist() == [0, 1, 3]
    np.testing.assert_allclose(series.to_numpy(), [0.132, 0.392, 0.392])


def test_hypervolume_series_ends_where_the_run_summary_does(table):
    baseline = {"accuracy": 1.0, "size_bytes": 10.0}
    run = SimpleNamespace(objectives=TWO, baseline=baseline)
    final, _, history = hypervolume_summary(run, table)
    series = hypervolume_series(table, TWO, baseline)
    np.testing.assert_allclose(series.to_numpy(), history)
    assert series.iloc[-1] == pytest.approx(final)


def test_hypervolume_series_without_feasible_points(table):
    series = hypervolume_series(table.assign(feasible=False), TWO, {})
    assert series.tolist() == [0.0, 0.0, 0.0]


def test_projection_axes_fill_with_measured_extras(table):
    assert projection_axes(table, TWO) == {**TWO, "latency_ms": "minimize"}
    no_latency = table.assign(latency_ms=np.nan, peak_memory_bytes=[5.0, 6.0, np.nan, 7.0])
    assert projection_axes(no_latency, TWO) == {**TWO, "peak_memory_bytes": "minimize"}
    assert projection_axes(table, TWO, count=2) == TWO
    assert list(projection_axes(table, {"accuracy": "maximize"}, count=3)) == [
        "accuracy",
        "size_bytes",
        "latency_ms",
    ]


@pytest.mark.parametrize(
    ("value", "expected"), [(4, 4.0), (2.0, 2.0), ("fp32", 32.0), ("fp16", 16.0), ("bf16", 16.0)]
)
def test_width_bits(value, expected):
    assert width_bits(value) == expected


@pytest.mark.parametrize("value", ["int4", None, True])
def test_width_bits_unknown(value):
    assert math.isnan(width_bits(value))


def test_parallel_frame_scales_every_column(table):
    table = table.assign(
        **{
            "param:quant.bits": [2, 8, "fp32", "fp32"],
            "param:prune.scope": ["global", np.nan, "layer", "layer"],
            "param:prune.enabled": [True, False, True, True],
            "param:unused": [np.nan] * 4,
            "param:fixed": [0.3] * 4,
        }
    )
    frame = parallel_frame(table, TWO, front_trials=[1, 3])
    assert frame.index.tolist() == [0, 1, 3]
    assert list(frame.columns) == [
        "quant.bits",
        "prune.scope",
        "prune.enabled",
        "fixed",
        "accuracy",
        "size_bytes",
        "group",
    ]
    np.testing.assert_allclose(frame["quant.bits"], [0.0, 0.2, 1.0])  # 2, 8, 32 bits
    np.testing.assert_allclose(frame["prune.scope"], [0.0, np.nan, 1.0])  # off: a gap
    np.testing.assert_allclose(frame["prune.enabled"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(frame["fixed"], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(frame["accuracy"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(frame["size_bytes"], [1 / 3, 1.0, 0.0])
    assert frame["group"].tolist() == ["other", "front", "front"]


def _recipe(*stages: dict) -> Recipe:
    return Recipe.from_dict({"task": TASK, "stages": list(stages)})


LAYERS = ["a", "b1", "b2", "c"]


def test_layer_plan_resolves_names_regexes_and_defaults():
    recipe = _recipe(
        {"kind": "prune", "scope": "layer", "sparsity": 0.1, "layers": {"a": 0.5, "re:b.*": 0.25}},
        {"kind": "quantize", "default": 8, "layers": {"a": 2, "re:c": "fp32"}},
    )
    plan = layer_plan(recipe, LAYERS)
    assert plan.index.tolist() == LAYERS
    assert plan["bits"].tolist() == [2, 8, 8, "fp32"]
    assert plan["sparsity"].tolist() == [0.5, 0.25, 0.25, 0.1]
    assert set(plan["sparsity_scope"]) == {"layer"}


def test_layer_plan_global_sparsity_and_empty_recipe():
    plan = layer_plan(_recipe({"kind": "prune", "sparsity": 0.6}), LAYERS)
    assert plan["sparsity"].tolist() == [0.6] * 4
    assert set(plan["sparsity_scope"]) == {"global"}
    assert plan["bits"].tolist() == ["fp32"] * 4
    empty = layer_plan(_recipe(), LAYERS)
    assert empty["sparsity"].tolist() == [0.0] * 4
    assert set(empty["sparsity_scope"]) == {""}


def test_front_layer_plans_and_matrices_keep_model_order():
    recipes = {
        7: _recipe({"kind": "quantize", "default": 4, "layers": {"c": "fp16"}}),
        3: _recipe({"kind": "prune", "sparsity": 0.5}, {"kind": "quantize", "default": 2}),
    }
    layers = ["c", "a"]
    plans = front_layer_plans(recipes, layers)
    assert plans[["trial", "layer"]].values.tolist() == [[7, "c"], [7, "a"], [3, "c"], [3, "a"]]
    bits = plan_matrix(plans, "bits")
    assert bits.index.tolist() == ["c", "a"]
    assert bits.columns.tolist() == [7, 3]
    assert bits.loc["c"].to_dict() == {3: 2.0, 7: 16.0}
    assert bits.loc["a"].to_dict() == {3: 2.0, 7: 4.0}
    sparsity = plan_matrix(plans, "sparsity")
    assert sparsity.loc["a"].to_dict() == {3: 0.5, 7: 0.0}
    assert front_layer_plans({}, layers).empty


def test_measured_vs_recorded():
    frame = measured_vs_recorded(
        {"size_bytes": 100, "latency_ms": 2.0, "accuracy": 0.0},
        {"size_bytes": 100, "latency_ms": 3.0, "accuracy": 0.5},
        ["size_bytes", "latency_ms", "accuracy", "energy_mj"],
    )
    assert frame.loc["size_bytes"].tolist() == [100.0, 100.0, 1.0]
    assert frame.loc["latency_ms", "ratio"] == 1.5
    assert math.isnan(frame.loc["accuracy", "ratio"])  # no ratio against zero
    assert frame.loc["energy_mj"].isna().all()


def test_recipe_with_provenance_matches_what_export_records():
    recipe = _recipe({"kind": "quantize", "default": 8})
    trial = SimpleNamespace(
        number=5,
        user_attrs={"measured": {"size_bytes": 123, "accuracy": 0.9, "energy_source": "estimated"}},
    )
    run = SimpleNamespace(
        recipe=lambda n: recipe,
        info={"experiment": "tiny"},
        study=SimpleNamespace(
            get_trials=lambda deepcopy: [trial], user_attrs={"autoslim.baseline_sha": "abc"}
        ),
    )
    out = recipe_with_provenance(run, 5)
    assert out.core() == recipe
    assert out.provenance.trial == 5
    assert out.provenance.experiment == "tiny"
    assert out.provenance.baseline_sha == "abc"
    assert out.provenance.values == {"size_bytes": 123, "accuracy": 0.9}
    assert set(out.provenance.versions) == {"autoslim", "torch", "optuna"}


def test_run_task_ref_and_its_layers():
    run = SimpleNamespace(path="runs/x", info={"experiment_spec": {"task": TASK}})
    ref = run_task_ref(run)
    assert ref.entry == TASK["entry"] and ref.params == {"width": 4}
    assert layer_names(ref) == [
        "features.0",
        "features.3",
        "features.7",
        "classifier.1",
        "classifier.4",
    ]
    with pytest.raises(AutoslimError, match="does not record its experiment's task"):
        run_task_ref(SimpleNamespace(path="runs/x", info={}))


def test_stage_counts_of_completed_trials(table):
    recipes = {
        0: _recipe(),
        1: _recipe({"kind": "prune", "sparsity": 0.5}, {"kind": "quantize"}),
        3: _recipe({"kind": "quantize"}),
    }
    run = SimpleNamespace(table=lambda: table, recipe=recipes.__getitem__)
    counts = stage_counts(run)
    assert counts.to_dict() == {0: 0, 1: 2, 3: 1}  # the failed trial 2 has no recipe
    compressed = table[table["trial"].map(counts).fillna(0) > 0]
    assert compressed["trial"].tolist() == [1, 3]
