from __future__ import annotations

import pytest
from optuna.trial import TrialState

from autoslim.searching.driver import search
from autoslim.searching.early_stop import (
    Curve,
    FrontPoint,
    Horizon,
    ParetoStopper,
    Stop,
    dominated,
    error_fraction_bound,
    gains_to_come,
    horizon,
    metric_bound,
    optimistic_gain,
)
from autoslim.searching.experiment import Constraint

CURVES = (
    Curve((0.80, 0.85, 0.88), 0.90),
    Curve((0.70, 0.80, 0.85), 0.86),
    Curve((0.60, 0.75, 0.82), 0.84),
)


def test_optimistic_gain_is_the_quantile_of_the_gains_still_to_come():
    # gains after epoch 0: 0.10, 0.16, 0.24 -> the 0.5 quantile is 0.16, the max is 0.24
    assert optimistic_gain(CURVES, 0, quantile=0.5, maximize=True) == pytest.approx(0.16)
    assert optimistic_gain(CURVES, 0, quantile=1.0, maximize=True) == pytest.approx(0.24)
    assert optimistic_gain(CURVES, 5, quantile=0.5, maximize=True) is None
    losses = (Curve((2.0, 1.5), 1.0),)
    assert optimistic_gain(losses, 0, quantile=1.0, maximize=False) == pytest.approx(1.0)


def test_gains_to_come_are_taken_over_the_trials_own_horizon():
    # One epoch to come after epoch 0: each curve's next step.
    assert gains_to_come(CURVES, 0, maximize=True, remaining=1) == pytest.approx([0.05, 0.10, 0.15])
    # Two to come: each curve's last epoch is its measured final.
    assert gains_to_come(CURVES, 0, maximize=True, remaining=2) == pytest.approx([0.10, 0.16, 0.24])
    # Four to come, but the curves had two left: their gains scaled by 4 / 2.
    assert gains_to_come(CURVES, 0, maximize=True, remaining=4) == pytest.approx([0.20, 0.32, 0.48])
    # A curve that ended at this epoch says nothing about epochs after it.
    assert gains_to_come(CURVES, 2, maximize=True, remaining=1) == []
    # Horizon unknown: each curve's whole remaining gain (the rule before session 7).
    assert gains_to_come(CURVES, 0, maximize=True) == pytest.approx([0.10, 0.16, 0.24])
    assert gains_to_come(
        (Curve((2.0, 1.5, 1.4), 1.2),), 0, maximize=False, remaining=1
    ) == pytest.approx([0.5])


def test_a_trial_with_many_epochs_to_go_is_not_judged_by_short_curves():
    # Calibration curves of two epochs gained 0.02-0.04 in their one remaining epoch. A trial
    # at 0.80 with six epochs to go may gain six such steps: the front at 0.88 is within reach.
    short = (Curve((0.80, 0.82), 0.82), Curve((0.79, 0.82), 0.82), Curve((0.78, 0.82), 0.82))
    stopper = ParetoStopper(
        curves=short, front=(FrontPoint(0.88, {"size_bytes": 1000.0}),), quantile=1.0
    )
    assert (
        stopper.decide(0, 0.80, {"size_bytes": 1500.0}, remaining=6) is None
    )  # 0.80 + 6 * 0.04 = 1.04
    assert stopper.decide(0, 0.80, {"size_bytes": 1500.0}, remaining=1) is not None  # 0.84 < 0.88
    assert (
        stopper.decide(0, 0.80, {"size_bytes": 1500.0}) is not None
    )  # horizon unknown: whole gains


def test_nothing_is_stopped_after_its_last_planned_epoch():
    # Stopping there saves no epoch and throws away a finished result.
    front = (FrontPoint(0.90, {"size_bytes": 1000.0}),)
    stopper = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=3)
    assert stopper.decide(0, 0.60, {"size_bytes": 1500.0}, remaining=0) is None
    assert (
        stopper.decide(0, 0.60, {"size_bytes": 1500.0}, remaining=2) is not None
    )  # 0.60 + 0.24 < 0.90


def test_domination_needs_no_worse_everywhere_and_better_somewhere():
    front = (FrontPoint(0.95, {"size_bytes": 1000.0}),)
    assert dominated(0.90, {"size_bytes": 1000.0}, front, maximize=True)
    assert dominated(0.95, {"size_bytes": 2000.0}, front, maximize=True)
    assert not dominated(
        0.95, {"size_bytes": 1000.0}, front, maximize=True
    )  # equal is not dominated
    assert not dominated(
        0.90, {"size_bytes": 500.0}, front, maximize=True
    )  # cheaper: may join the front


def test_stopper_waits_for_enough_curves_then_stops_only_hopeless_trials():
    front = (FrontPoint(0.90, {"size_bytes": 1000.0}),)
    stopper = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=3)
    assert stopper.decide(0, 0.60, {"size_bytes": 1500.0}) is not None  # 0.60 + 0.24 < 0.90
    assert (
        stopper.decide(0, 0.70, {"size_bytes": 1500.0}) is None
    )  # 0.70 + 0.24 could still reach it
    assert stopper.decide(0, 0.65, {"size_bytes": 900.0}) is None  # cheaper than every front point
    cautious = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=4)
    assert cautious.decide(0, 0.10, {"size_bytes": 1500.0}) is None


def test_no_stop_below_every_calibration_curve():
    # The gains seen (0.10-0.24 from 0.60-0.80) say nothing about a trial at 0.30: it
    # may recover more, so neither the front nor the bound may stop it.
    front = (FrontPoint(0.90, {"size_bytes": 1000.0}),)
    stopper = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.85)
    assert stopper.decide(0, 0.30, {"size_bytes": 1500.0}) is None
    assert stopper.decide(0, 0.30, {"size_bytes": 500.0}) is None
    losses = ParetoStopper(
        curves=(Curve((2.0,), 1.0),),
        front=(FrontPoint(0.5, {"size_bytes": 1.0}),),
        maximize=False,
        quantile=1.0,
        min_curves=1,
    )
    assert losses.decide(0, 3.0, {"size_bytes": 2.0}) is None  # a worse loss than any curve had
    assert losses.decide(0, 1.8, {"size_bytes": 2.0}) is not None  # 1.8 - 1.0 = 0.8 > 0.5


def test_own_curve_bounds_a_trial_the_calibration_says_nothing_about():
    # 0.45 after epoch 3 is below every calibration curve there (0.82-0.88): the calibration
    # abstains. Its best step so far is 0.10, so 3 more epochs reach at most 0.75 < 0.85.
    front = (FrontPoint(0.90, {"size_bytes": 1000.0}),)
    stopper = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.85)
    reason = stopper.decide(2, 0.45, {"size_bytes": 500.0}, remaining=3, curve=[0.30, 0.40, 0.45])
    assert (
        reason is not None
        and "own-curve bound 0.75" in str(reason)
        and "constraint bound" in str(reason)
    )
    # 4 more epochs reach 0.85: at the bound, still feasible
    assert (
        stopper.decide(2, 0.45, {"size_bytes": 500.0}, remaining=4, curve=[0.30, 0.40, 0.45])
        is None
    )
    # From two epochs (one step seen, the default) to three, and it can be switched off.
    assert (
        stopper.decide(1, 0.40, {"size_bytes": 500.0}, remaining=1, curve=[0.30, 0.40]) is not None
    )
    patient = ParetoStopper(
        curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.85, own_curve_from=3
    )
    assert patient.decide(1, 0.40, {"size_bytes": 500.0}, remaining=1, curve=[0.30, 0.40]) is None
    off = ParetoStopper(
        curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.85, own_curve_from=None
    )
    with pytest.raises(ValueError, match="own_curve_from"):
        ParetoStopper(curves=CURVES, front=front, own_curve_from=1)
    assert off.decide(2, 0.45, {"size_bytes": 500.0}, remaining=3, curve=[0.30, 0.40, 0.45]) is None
    # Where the calibration speaks, it decides alone: 0.84 after epoch 2 is covered, and the
    # calibrated 0.84 + 0.09 may still be feasible, though the own curve (flat) would stop it.
    eager = ParetoStopper(
        curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.85, own_curve_from=2
    )
    assert eager.decide(1, 0.84, {"size_bytes": 500.0}, remaining=1, curve=[0.84, 0.84]) is None
    assert (
        eager.decide(1, 0.60, {"size_bytes": 500.0}, remaining=1, curve=[0.60, 0.60]) is not None
    )  # uncovered
    losses = ParetoStopper(curves=(), front=(), maximize=False, min_curves=1, bound=1.0)
    assert (
        losses.decide(2, 2.0, {"size_bytes": 1.0}, remaining=1, curve=[3.0, 2.5, 2.0]) is not None
    )  # 1.5 > 1.0
    assert (
        losses.decide(2, 2.0, {"size_bytes": 1.0}, remaining=2, curve=[3.0, 2.5, 2.0]) is None
    )  # 1.0 reaches it


def test_bound_stops_a_trial_cheaper_than_the_front_that_cannot_be_feasible():
    front = (FrontPoint(0.90, {"size_bytes": 1000.0}),)
    stopper = ParetoStopper(curves=CURVES, front=front, quantile=1.0, min_curves=3, bound=0.86)
    reason = stopper.decide(0, 0.60, {"size_bytes": 500.0})  # 0.60 + 0.24 < 0.86, though cheapest
    assert reason is not None and "constraint bound" in str(reason)
    assert (
        stopper.decide(0, 0.65, {"size_bytes": 500.0}) is None
    )  # 0.65 + 0.24 may still be feasible
    no_front = ParetoStopper(curves=CURVES, front=(), quantile=1.0, min_curves=3, bound=0.86)
    assert no_front.decide(0, 0.60, {"size_bytes": 500.0}) is not None


def test_metric_bound_takes_the_tightest_bound_on_the_bad_side():
    drop = Constraint(objective="accuracy", max_drop=0.05)
    floor = Constraint(objective="accuracy", min=0.9)
    other = Constraint(objective="size_bytes", max=100.0)
    assert metric_bound([drop, other], "accuracy", 0.93, maximize=True) == pytest.approx(0.88)
    assert metric_bound([drop, floor], "accuracy", 0.93, maximize=True) == pytest.approx(0.9)
    assert metric_bound([other], "accuracy", 0.93, maximize=True) is None
    ratio = Constraint(objective="loss", max_ratio=1.1)
    assert metric_bound([ratio], "loss", 2.0, maximize=False) == pytest.approx(2.2)
    assert metric_bound(
        [Constraint(objective="loss", max_drop=0.5), ratio], "loss", 2.0, maximize=False
    ) == pytest.approx(2.2)


@pytest.mark.slow
def test_search_records_stopped_trials_and_exact_dry_run_costs(
    tmp_path, experiment_file, monkeypatch
):
    space = [
        {
            "type": "prune.magnitude",
            "optional": False,
            "scopes": ["global"],
            "fine_tune_epochs": {"low": 3, "high": 3},
        }
    ]
    path = experiment_file(
        trials=3, space=space, search={"trials": 3, "seed": 0, "early_stopping": {"enabled": True}}
    )

    remaining_seen = []

    curves_seen = []

    def decide(self, epoch, metric, costs, remaining=None, curve=None):
        remaining_seen.append(remaining)
        curves_seen.append(list(curve))
        return Stop("stopped by the test", 0.5) if epoch == 1 and len(self.curves) >= 1 else None

    monkeypatch.setattr(ParetoStopper, "decide", decide)
    run = search(path, out=tmp_path / "run", progress=False)
    trials = run.study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED]
    first = trials[0]
    assert len(first.user_attrs["curve"]) == 3
    assert (
        first.user_attrs["dry_run_costs"]["size_bytes"]
        == first.user_attrs["measured"]["size_bytes"]
    )
    assert [len(t.user_attrs["curve"]) for t in trials[1:]] == [2, 2]
    assert trials[1].user_attrs["stop_reason"] == "stopped by the test"
    assert [t.user_attrs.get("stop_hv_charge") for t in trials] == [
        None,
        0.5,
        0.5,
    ]  # the budget's ledger
    # the dry run planned one fine-tune of 3 epochs; after epochs 1, 2, 3 there are 2, 1, 0 to come
    assert [t.user_attrs["planned_fine_tunes"] for t in trials] == [[3], [3], [3]]
    assert remaining_seen == [2, 1, 0, 2, 1, 2, 1]
    # the rule sees the trial's own curve so far (for the own-curve bound)
    assert curves_seen[:3] == [first.user_attrs["curve"][:n] for n in (1, 2, 3)]
    assert [len(c) for c in curves_seen[3:]] == [1, 2, 1, 2]
    table = run.table()
    assert list(table["epochs_run"]) == [3, 2, 2]


def test_the_search_passes_the_constraint_bound_to_the_stopper():
    from types import SimpleNamespace

    import optuna

    from autoslim.searching.experiment import Constraint, EarlyStopping
    from autoslim.searching.study import make_stopper

    experiment = SimpleNamespace(
        objectives={"accuracy": "maximize", "size_bytes": "minimize"},
        constraints=[Constraint(objective="accuracy", max_drop=0.05)],
        search=SimpleNamespace(early_stopping=EarlyStopping(enabled=True)),
    )
    ctx = SimpleNamespace(
        experiment=experiment,
        task=SimpleNamespace(metric_name="accuracy", best_possible_metric=1.0),
        baseline_values={"accuracy": 0.9, "size_bytes": 4000.0},
        cost_objectives=["size_bytes"],
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    stopper = make_stopper(study, ctx)
    assert stopper.bound == pytest.approx(0.85) and stopper.maximize and stopper.curves == ()
    assert stopper.best_possible == 1.0
    assert stopper.reference_costs == {"size_bytes": 4000.0} and stopper.hv_budget == 0.02
    # the budget's ledger: the charges recorded on stopped trials, summed
    for charge in (0.5, None, 0.25):
        trial = study.ask()
        if charge is not None:
            trial.set_user_attr("stop_hv_charge", charge)
        study.tell(trial, state=TrialState.PRUNED)
    assert make_stopper(study, ctx).hv_spent == pytest.approx(0.75)


@pytest.mark.slow
def test_the_curve_scores_the_model_as_it_would_ship(tmp_path, experiment_file):
    """After the last fine-tune epoch the shipped curve is the artifact's own measured
    validation metric, later 2-bit quantization included; the trained curve is not."""
    space = [
        {
            "type": "prune.magnitude",
            "optional": False,
            "scopes": ["global"],
            "schedules": ["cubic"],
            "sparsity": {"low": 0.5, "high": 0.5},
            "fine_tune_epochs": {"low": 2, "high": 2},
        },
        {"type": "quantize.weight", "bits": [2]},
    ]
    path = experiment_file(
        trials=2, space=space, search={"trials": 2, "seed": 0, "early_stopping": {"enabled": True}}
    )
    run = search(path, out=tmp_path / "run", progress=False)
    for trial in run.study.trials:
        assert trial.state == TrialState.COMPLETE
        curve, trained = trial.user_attrs["curve"], trial.user_attrs["trained_curve"]
        assert len(curve) == len(trained) == 2
        assert curve[-1] == pytest.approx(trial.user_attrs["measured"]["accuracy"], abs=1e-9)
    # 2-bit weights cost the width-4 digits CNN accuracy the fp32 curve does not show
    assert any(
        t.user_attrs["trained_curve"][-1] > t.user_attrs["curve"][-1] for t in run.study.trials
    )


def test_shipped_metric_runs_the_later_stages_on_a_copy(tiny_task_ref):
    import copy

    import torch

    from autoslim.baseline import load_baseline
    from autoslim.recipe import Recipe, TaskRef
    from autoslim.searching.evaluate import shipped_metric
    from autoslim.task import load_task
    from autoslim.techniques.prune import PruneConfig, apply_masks
    from autoslim.techniques.quantize import QuantizeConfig

    ref = TaskRef(**tiny_task_ref)
    task = load_task(ref)
    model = copy.deepcopy(load_baseline(ref, task).model)
    apply_masks(model, PruneConfig(sparsity=0.5, scope="global"))  # masked, as inside a fine-tune
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = Recipe(task=ref, seed=0, stages=[PruneConfig(sparsity=0.5), QuantizeConfig(default=2)])
    ctx = type("Ctx", (), {"task": task})()
    shipped = shipped_metric(model, recipe, 0, ctx)
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # the trained model is untouched
    expected = copy.deepcopy(model)
    from autoslim.techniques.prune import fold_pruning_masks

    fold_pruning_masks(expected)
    from autoslim.pipeline import apply_recipe

    expected = apply_recipe(recipe, task=task, model=expected, dry_run=True, first_stage=1)
    assert shipped == task.evaluate(expected, "val")
    assert shipped_metric(
        model, Recipe(task=ref, seed=0, stages=[PruneConfig(sparsity=0.5)]), 0, ctx
    ) == task.evaluate(model, "val")


@pytest.mark.slow
def test_a_repeated_configuration_reuses_the_measurement(tmp_path, experiment_file):
    """A space with one point: the first trial trains and measures, the repeats reuse it."""
    space = [
        {
            "type": "prune.magnitude",
            "optional": False,
            "scopes": ["global"],
            "sparsity": {"low": 0.5, "high": 0.5},
            "fine_tune_epochs": {"low": 1, "high": 1},
            "lr": {"low": 1.0e-3, "high": 1.0e-3},
        }
    ]
    path = experiment_file(
        trials=3, space=space, search={"trials": 3, "seed": 0, "early_stopping": {"enabled": True}}
    )
    run = search(path, out=tmp_path / "run", progress=False)
    first, *repeats = run.study.trials
    assert all(t.state == TrialState.COMPLETE for t in run.study.trials)
    assert "repeat_of" not in first.user_attrs and len(first.user_attrs["curve"]) == 1
    for t in repeats:
        assert t.user_attrs["repeat_of"] == 0
        assert t.values == first.values and t.user_attrs["recipe"] == first.user_attrs["recipe"]
        assert "curve" not in t.user_attrs  # no epoch was trained
    table = run.table()
    assert list(table["epochs_run"]) == [1, 0, 0] and list(table["repeat_of"])[1:] == [0, 0]
    assert list(run.front()["trial"]) == [0]  # one point, listed once


def test_a_trial_that_even_a_perfect_metric_cannot_bring_onto_the_front_never_trains():
    front = (FrontPoint(1.0, {"size_bytes": 100.0}),)
    stopper = ParetoStopper(curves=(), front=front, best_possible=1.0)
    reason = stopper.decide_before_training({"size_bytes": 200.0})
    assert reason is not None and "before training" in str(reason)
    assert stopper.decide_before_training({"size_bytes": 100.0}) is None  # a tie is not dominated
    assert stopper.decide_before_training({"size_bytes": 50.0}) is None
    assert (
        ParetoStopper(curves=(), front=front).decide_before_training({"size_bytes": 200.0}) is None
    )
    below = ParetoStopper(
        curves=(), front=(FrontPoint(0.99, {"size_bytes": 100.0}),), best_possible=1.0
    )
    assert below.decide_before_training({"size_bytes": 200.0}) is None  # 1.0 would beat 0.99


def test_accuracy_tasks_know_their_best_possible_metric():
    from autoslim.task import Task

    def nothing():
        raise AssertionError

    assert Task(name="t", build_model=nothing, load_data=nothing).best_possible_metric == 1.0
    assert (
        Task(
            name="t", build_model=nothing, load_data=nothing, metric=lambda m, d: 0.0
        ).best_possible_metric
        is None
    )
    assert (
        Task(
            name="t",
            build_model=nothing,
            load_data=nothing,
            metric=lambda m, d: 0.0,
            metric_best=0.0,
        ).best_possible_metric
        == 0.0
    )


def test_a_dry_run_plans_the_fine_tunes_of_every_stage_and_schedule(tiny_task_ref):
    """Early stopping's horizon: each planned fine-tune's epochs, counted without training."""
    import copy

    import torch

    from autoslim.baseline import load_baseline
    from autoslim.pipeline import PLANNED_FINE_TUNES, apply_recipe
    from autoslim.recipe import Recipe, TaskRef
    from autoslim.task import load_task
    from autoslim.techniques.prune import PruneConfig
    from autoslim.techniques.prune._adaptive import Phase
    from autoslim.techniques.quantize import QuantizeConfig

    ref = TaskRef(**tiny_task_ref)
    task = load_task(ref)
    baseline = load_baseline(ref, task).model

    def planned(*stages):
        records: dict = {}
        model = apply_recipe(
            Recipe(task=ref, seed=0, stages=list(stages)),
            task=task,
            model=copy.deepcopy(baseline),
            dry_run=True,
            records=records,
        )
        return records[PLANNED_FINE_TUNES], model

    qat = QuantizeConfig(default=8, qat_epochs=3)
    plan, model = planned(PruneConfig(sparsity=0.0, fine_tune_epochs=2), qat)
    assert plan == [2, 3]
    _, untrained = planned(qat)
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), untrained.state_dict().values(), strict=True)
    )  # nothing trained
    # Schedules whose dry run skips their own fine-tunes still plan them.
    assert planned(PruneConfig(sparsity=0.5, fine_tune_epochs=2, schedule="iterative", rounds=3))[
        0
    ] == [2, 2, 2]
    assert planned(PruneConfig(sparsity=0.5, fine_tune_epochs=2, schedule="cubic"), qat)[0] == [
        2,
        3,
    ]
    phases = [Phase(sparsity=0.3, epochs=1, lr=1e-3), Phase(sparsity=0.5, epochs=2, lr=1e-3)]
    assert planned(
        PruneConfig(sparsity=0.5, fine_tune_epochs=1, schedule="adaptive", phases=phases)
    )[0] == [1, 2]
    # An adaptive controller decides its phases while training: the horizon is unknown.
    assert (
        planned(PruneConfig(sparsity=0.5, fine_tune_epochs=1, schedule="adaptive"), qat)[0] is None
    )


def test_horizon_reads_the_planned_fine_tunes():
    # one fine-tune of 3: after epoch 1, 2 to come, and it is the last one (own curve from index 0)
    assert horizon([3], 1) == Horizon(2, 0)
    # prune 2 then QAT 3: during pruning a later fine-tune follows, so no own-curve bound
    assert horizon([2, 3], 1) == Horizon(4, None)
    assert horizon([2, 3], 2) == Horizon(3, None)
    assert horizon([2, 3], 3) == Horizon(2, 2)  # QAT's first epoch: the curve from index 2 on
    assert horizon([2, 0], 2) == Horizon(0, 0)  # a trailing empty fine-tune changes nothing
    assert horizon(None, 1) == Horizon(None, None)  # unknown plan
    assert horizon([2], 3) == Horizon(None, None)  # more epochs than planned: no horizon to trust


# Front (accuracy, bytes) with the reference at (bound 0.7, 200 B): boxes 0.2 x 100 and
# 0.1 x 150 overlapping in 0.1 x 100, so the front's hypervolume is 25.
BUDGET_FRONT = (FrontPoint(0.9, {"size_bytes": 100.0}), FrontPoint(0.8, {"size_bytes": 50.0}))


def budget_stopper(**settings) -> ParetoStopper:
    defaults = {
        "curves": (),
        "front": BUDGET_FRONT,
        "bound": 0.7,
        "reference_costs": {"size_bytes": 200.0},
        "min_curves": 3,
        "own_curve_from": 2,
        "hv_budget": 0.1,
        "best_possible": 1.0,
    }
    return ParetoStopper(**(defaults | settings))


def test_hypervolume_contribution_is_the_exclusive_box_a_point_adds():
    stopper = budget_stopper()
    assert stopper.front_hypervolume() == pytest.approx(25.0)
    # (0.85, 75 B) adds only accuracy 0.80-0.85 at 75-100 B: 0.05 x 25
    assert stopper.hv_contribution(0.85, {"size_bytes": 75.0}) == pytest.approx(1.25)
    assert stopper.hv_contribution(0.75, {"size_bytes": 120.0}) == 0.0  # dominated
    assert stopper.hv_contribution(0.95, {"size_bytes": 250.0}) == 0.0  # past the reference


def test_the_budget_stops_a_knife_edge_trial_and_charges_what_it_gives_up():
    # own-curve bound after two epochs: 0.84 + 1 epoch x its best step 0.01 = 0.85 at 75 B,
    # which would add 1.25 of the front's 25: within a 10 % budget (2.5) with nothing spent
    stop = budget_stopper().decide(1, 0.84, {"size_bytes": 75.0}, remaining=1, curve=[0.83, 0.84])
    assert (
        stop is not None
        and stop.hv_charge == pytest.approx(1.25)
        and "within the stopping budget" in stop.reason
    )
    assert (
        budget_stopper(hv_spent=2.0).decide(
            1, 0.84, {"size_bytes": 75.0}, remaining=1, curve=[0.83, 0.84]
        )
        is None
    )
    assert (
        budget_stopper(hv_budget=0.0).decide(
            1, 0.84, {"size_bytes": 75.0}, remaining=1, curve=[0.83, 0.84]
        )
        is None
    )
    # a dominated projection is stopped with no charge, budget or not
    stop = budget_stopper(hv_budget=0.0).decide(
        1, 0.74, {"size_bytes": 120.0}, remaining=1, curve=[0.73, 0.74]
    )
    assert stop is not None and stop.hv_charge == 0.0


def test_before_training_the_budget_applies_only_to_a_trial_that_fine_tunes():
    stopper = budget_stopper(front=(*BUDGET_FRONT, FrontPoint(0.99, {"size_bytes": 180.0})))
    # even accuracy 1.0 at 190 B adds only 0.01 x 10 = 0.1 of a front worth 26.8
    stop = stopper.decide_before_training({"size_bytes": 190.0})
    assert stop is not None and stop.hv_charge == pytest.approx(0.1)
    assert (
        stopper.decide_before_training({"size_bytes": 190.0}, fine_tunes=False) is None
    )  # saves no epoch


def test_error_fraction_bound_on_hand_computed_curves():
    # c1 closes 60 % of its error (0.5 -> 0.8 of 1.0) over two epochs; c2 closes 12.5 % in
    # its one epoch left (0.6 -> 0.65), compounded to two: 1 - 0.875^2 = 23.4 %
    curves = (Curve((0.5, 0.7, 0.8), 0.8), Curve((0.6, 0.65), 0.65))
    assert error_fraction_bound(curves, 0, 0.3, 2, top=1.0, min_curves=2) == pytest.approx(
        0.3 + 0.6 * 0.7
    )
    assert error_fraction_bound(curves, 0, 0.3, 2, top=1.0, min_curves=3) is None


def test_error_fraction_bound_stops_a_trial_below_every_curve_that_cannot_reach_the_bound():
    curves = (Curve((0.5, 0.7, 0.8), 0.8), Curve((0.6, 0.65), 0.65))
    stopper = ParetoStopper(curves=curves, front=(), bound=0.75, min_curves=2, best_possible=1.0)
    # below every curve, so the calibrated projection abstains; 0.72 misses the bound
    stop = stopper.decide(0, 0.3, {"size_bytes": 75.0}, remaining=2)
    assert (
        stop is not None and "error-fraction bound 0.72 misses the constraint bound" in stop.reason
    )
    assert (
        stopper.decide(0, 0.4, {"size_bytes": 75.0}, remaining=2) is None
    )  # 0.4 + 0.6 x 0.6 = 0.76
    off = ParetoStopper(
        curves=curves, front=(), bound=0.75, min_curves=2, best_possible=1.0, error_fraction=False
    )
    assert off.decide(0, 0.3, {"size_bytes": 75.0}, remaining=2) is None
