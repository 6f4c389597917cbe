from __future__ import annotations

import copy

import optuna
import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.pipeline import ApplyContext, apply_recipe, realised_recipe
from autoslim.recipe import Recipe, Target
from autoslim.space import ModelInfo, SearchSpace, compressible_layers
from autoslim.tasks.digits import make_task
from autoslim.techniques import prune
from autoslim.techniques.prune import MagnitudePruneHandler, PruneConfig, apply_masks, prune_count
from autoslim.techniques.prune import _adaptive as adaptive
from autoslim.techniques.prune._adaptive import AdaptiveController, metric_drop, sparse_layers

TINY = {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 1}}


def walk(
    controller: AdaptiveController, signals: list[tuple[float | None, bool]]
) -> list[tuple[float, str]]:
    phases = [controller.first()]
    for drop, moved in signals:
        phases.append(controller.observe(drop, moved))
    return [(p.sparsity, p.decision) if p else None for p in phases]


def test_controller_backs_off_pushes_and_stops_at_the_target():
    c = AdaptiveController(final=0.8, phase_count=4, threshold=0.01, epochs=2, lr=1e-3)
    got = walk(
        c,
        [
            (0.0, True),  # within threshold, latency moved: keep the 0.2 step
            (0.03, True),  # fell 3 pt > 1 pt: halve the step to 0.1
            (0.005, False),  # no kernel changed: double it back to 0.2
            (0.0, False),  # again: 0.4, capped at the target
            (0.0, False),
        ],
    )  # target in force: stop
    assert got == [
        (0.2, "plan"),
        (0.4, "plan"),
        (0.5, "back_off"),
        (0.7, "push"),
        (0.8, "push"),
        None,
    ]
    assert all(p.epochs == 2 and p.lr == 1e-3 for p in c.phases) and len(c.phases) == 5


def test_backing_off_wins_over_pushing_and_the_budget_still_reaches_the_target():
    c = AdaptiveController(final=0.8, phase_count=2, threshold=0.01, epochs=1, lr=1e-3)
    got = walk(c, [(0.5, False), (0.5, False), (0.5, False), (0.0, True)])
    # step 0.4 → 0.2 → 0.1, then the 4th phase (2 × phase_count) jumps to the target
    assert got == [(0.4, "plan"), (0.6, "back_off"), (0.7, "back_off"), (0.8, "budget"), None]


def test_an_unmeasured_metric_never_backs_off_and_steps_are_rounded():
    c = AdaptiveController(final=0.9, phase_count=3, threshold=0.01, epochs=1, lr=1e-3)
    got = walk(c, [(None, True), (None, True), (None, True)])
    assert got == [(0.3, "plan"), (0.6, "plan"), (0.9, "plan"), None]
    odd = AdaptiveController(final=0.81237, phase_count=3, threshold=0.01, epochs=1, lr=1e-3)
    assert walk(odd, [(0.0, True), (0.0, True)]) == [
        (0.2708, "plan"),
        (0.5416, "plan"),
        (0.81237, "plan"),
    ]


def test_a_model_whose_latency_cannot_move_is_never_pushed():
    c = AdaptiveController(final=0.8, phase_count=4, threshold=0.01, epochs=1, lr=1e-3)
    phases = [
        c.first(),
        c.observe(0.0, False, can_move=False),
        c.observe(0.0, False, can_move=False),
    ]
    assert [(p.sparsity, p.decision) for p in phases] == [
        (0.2, "plan"),
        (0.4, "plan"),
        (0.6, "plan"),
    ]


def test_csr_reachable_names_linear_layers_with_a_crossover():
    from autoslim.techniques.prune._adaptive import csr_reachable

    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(8, 4), nn.Linear(4, 2))
    by_width = lambda out, inp, batch, threads: 0.8 if inp == 8 else None  # noqa: E731
    assert csr_reachable(model, Target(), by_width) == {"2"}
    assert csr_reachable(model, Target(device="cuda"), by_width) == frozenset()


def test_metric_drop_follows_the_metric_direction():
    assert metric_drop(0.9, 0.85, "maximize") == pytest.approx(0.05)
    assert metric_drop(1.0, 1.2, "minimize") == pytest.approx(0.2)


def test_sparse_layers_follow_the_crossover_and_ignore_convolutions():
    model = nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(16, 32))
    cross = lambda out, inp, batch, threads: 0.8  # noqa: E731
    config = PruneConfig(scope="layer", layers={"0": 0.95, "2": 0.6})
    apply_masks(model, config)
    assert sparse_layers(model, Target(), cross) == frozenset()  # Linear at 0.6 < 0.8
    apply_masks(model, config.model_copy(update={"layers": {"0": 0.95, "2": 0.9}}))
    assert sparse_layers(model, Target(), cross) == {"2"}
    assert sparse_layers(model, Target(), lambda *a: None) == frozenset()  # sparse never won
    assert sparse_layers(model, Target(sparse_kernels=False), cross) == frozenset()


class Script:
    """Hand-written validation metrics and CSR layer sets, one per call, in order."""

    def __init__(self, values):
        self.values = list(values)

    def __call__(self, *args, **kwargs):
        return self.values.pop(0)


def test_handler_follows_the_signals_and_records_its_phases(monkeypatch):
    task = make_task(width=4, epochs=1)
    model = task.build_model()
    monkeypatch.setattr(task, "evaluate", Script([0.90, 0.90, 0.88, 0.88, 0.875, 0.875, 0.875]))
    fast = [
        frozenset(),
        frozenset(),
        frozenset(),
        {"classifier.4"},
        {"classifier.4"},
        {"classifier.4"},
        {"x"},
    ]
    monkeypatch.setattr(prune, "sparse_layers", Script(fast))
    monkeypatch.setattr(
        prune, "csr_reachable", lambda *a, **k: frozenset({"classifier.4", "x", "y"})
    )
    monkeypatch.setattr(
        ApplyContext, "fine_tune", lambda self, model, **kw: model
    )  # decisions only
    config = PruneConfig(
        sparsity=0.8, schedule="adaptive", phase_count=8, threshold=0.01, fine_tune_epochs=1
    )
    ctx = ApplyContext(task=task, seed=0)
    MagnitudePruneHandler().apply(model, config, ctx)
    (realised,) = ctx.records["realised_stages"].values()
    assert [(p.sparsity, p.decision) for p in realised.phases] == [
        (0.1, "plan"),
        (0.3, "push"),
        (0.4, "back_off"),
        (0.5, "plan"),
        (0.7, "push"),
        (0.8, "push"),
    ]
    layers = compressible_layers(model).values()
    total = sum(m.weight.numel() for m in layers)
    assert sum(int((m.weight == 0).sum()) for m in layers) == prune_count(total, 0.8)


def test_recorded_recipe_replays_identically_without_reading_any_metric(monkeypatch, tmp_path):
    task = make_task(width=4, epochs=1)
    base = task.build_model()
    recipe = Recipe.from_dict(
        {
            "task": TINY,
            "stages": [
                {
                    "kind": "prune",
                    "sparsity": 0.75,
                    "schedule": "adaptive",
                    "phase_count": 2,
                    "threshold": 0.02,
                    "fine_tune_epochs": 1,
                    "criterion": "hutchinson",
                    "calibration_samples": 16,
                    "hutchinson_samples": 2,
                }
            ],
        }
    )
    monkeypatch.setattr(adaptive, "measure_crossover", lambda *a: 0.7)  # no timing in a test
    records: dict = {}
    searched = apply_recipe(
        recipe, task=task, model=copy.deepcopy(base), records=records
    ).state_dict()
    recorded = realised_recipe(recipe, records)
    assert recorded.stages[0].phases and recorded.stages[0].phases[-1].sparsity == 0.75
    recorded = Recipe.load(recorded.save(tmp_path / "recipe.yaml"))

    def refuse(*args, **kwargs):
        raise AssertionError("a recorded recipe must not consult metrics or crossovers")

    monkeypatch.setattr(task, "evaluate", refuse)
    monkeypatch.setattr(prune, "sparse_layers", refuse)
    monkeypatch.setattr(prune, "csr_reachable", refuse)
    a = apply_recipe(recorded, task=task, model=copy.deepcopy(base)).state_dict()
    b = apply_recipe(recorded, task=task, model=copy.deepcopy(base)).state_dict()
    assert a.keys() == b.keys() == searched.keys()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], searched[k]) for k in a)


@pytest.mark.parametrize("schedule", ["adaptive", "cubic"])
def test_a_dry_run_builds_the_final_sparsity_without_training_or_metrics(schedule, monkeypatch):
    task = make_task(width=4, epochs=1)
    model = task.build_model()
    monkeypatch.setattr(task, "evaluate", lambda *a, **k: pytest.fail("dry run read a metric"))
    config = PruneConfig(sparsity=0.6, schedule=schedule, fine_tune_epochs=1)
    MagnitudePruneHandler().apply(
        model, config, ApplyContext(task=task, seed=0, skip_training=True)
    )
    layers = compressible_layers(model).values()
    assert sum(int((m.weight == 0).sum()) for m in layers) == prune_count(
        sum(m.weight.numel() for m in layers), 0.6
    )


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"scope": "layer", "layers": {"re:.*": 0.5}}, "scope: global"),
        (
            {
                "phases": [
                    {"sparsity": 0.5, "epochs": 1, "lr": 1e-3},
                    {"sparsity": 0.3, "epochs": 1, "lr": 1e-3},
                ]
            },
            "must not decrease",
        ),
        ({"phases": [{"sparsity": 0.3, "epochs": 1, "lr": 1e-3}]}, "must reach sparsity 0.5"),
        (
            {"schedule": "cubic", "phases": [{"sparsity": 0.5, "epochs": 1, "lr": 1e-3}]},
            "schedule: adaptive",
        ),
    ],
)
def test_adaptive_stages_are_validated(stage, message):
    base = {"kind": "prune", "sparsity": 0.5, "schedule": "adaptive", "fine_tune_epochs": 1}
    if stage.get("scope") == "layer":
        base.pop("sparsity")
    with pytest.raises(AutoslimError, match=message):
        Recipe.from_dict({"task": TINY, "stages": [base | stage]})


def test_space_suggests_adaptive_parameters_only_when_adaptive_is_picked():
    info = ModelInfo.from_model(make_task(width=4).build_model())
    space = SearchSpace.from_spec(
        [
            {
                "type": "prune.magnitude",
                "optional": False,
                "scopes": ["global"],
                "schedules": ["cubic", "adaptive"],
                "criteria": ["hutchinson"],
            }
        ]
    )
    params = {
        "prune.sparsity": 0.7,
        "prune.schedule": "adaptive",
        "prune.fine_tune_epochs": 2,
        "prune.lr": 1e-3,
        "prune.threshold": 0.02,
        "prune.phase_count": 3,
    }
    (stage,) = space.suggest(optuna.trial.FixedTrial(params), info)
    assert (stage.schedule, stage.threshold, stage.phase_count, stage.criterion) == (
        "adaptive",
        0.02,
        3,
        "hutchinson",
    )
    study = optuna.create_study()
    trial = study.ask()
    space.suggest(trial, info)
    assert ("prune.threshold" in trial.params) == (trial.params["prune.schedule"] == "adaptive")
    with pytest.raises(AutoslimError, match=r"scopes: \[global\]"):
        SearchSpace.from_spec([{"type": "prune.magnitude", "schedules": ["adaptive"]}])
