from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from autoslim.techniques.prune import PruneConfig, apply_masks, prune_count


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))


def zeros(module: nn.Module) -> int:
    return int((module.weight == 0).sum())


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_global_pruning_hits_requested_sparsity_exactly(sparsity):
    m = model()
    layers = [m[0], m[3]]
    total = sum(layer.weight.numel() for layer in layers)
    apply_masks(m, PruneConfig(scope="global", sparsity=sparsity))
    for layer in layers:
        torch_prune.remove(layer, "weight")
    assert sum(zeros(layer) for layer in layers) == prune_count(total, sparsity)


def test_global_pruning_removes_the_globally_smallest_magnitudes():
    m = model()
    weights = torch.cat(
        [m[0].weight.detach().abs().flatten(), m[3].weight.detach().abs().flatten()]
    )
    k = prune_count(weights.numel(), 0.6)
    threshold = weights.sort().values[k - 1]
    apply_masks(m, PruneConfig(scope="global", sparsity=0.6))
    for layer in (m[0], m[3]):
        torch_prune.remove(layer, "weight")
        kept = layer.weight[layer.weight != 0].abs()
        assert (kept >= threshold).all()


def test_layer_scope_gives_each_layer_its_own_exact_sparsity():
    m = model()
    apply_masks(m, PruneConfig(scope="layer", sparsity=0.25, layers={"3": 0.8}))
    for layer in (m[0], m[3]):
        torch_prune.remove(layer, "weight")
    assert zeros(m[0]) == prune_count(m[0].weight.numel(), 0.25)
    assert zeros(m[3]) == prune_count(m[3].weight.numel(), 0.8)


def test_masks_survive_a_fine_tune_step():
    m = model()
    apply_masks(m, PruneConfig(scope="global", sparsity=0.5))
    optimizer = torch.optim.SGD(m.parameters(), lr=1.0)
    m(torch.randn(4, 1, 6, 6)).sum().backward()
    optimizer.step()
    for layer in (m[0], m[3]):
        torch_prune.remove(layer, "weight")
    assert zeros(m[0]) + zeros(m[3]) >= prune_count(m[0].weight.numel() + m[3].weight.numel(), 0.5)


# --- criteria, schedules and replay ---------------------------------------------------

import copy  # noqa: E402

from autoslim.errors import AutoslimError  # noqa: E402
from autoslim.pipeline import ApplyContext, apply_recipe  # noqa: E402
from autoslim.recipe import Recipe  # noqa: E402
from autoslim.space import compressible_layers  # noqa: E402
from autoslim.tasks.digits import make_task  # noqa: E402

TINY = {"entry": "autoslim.tasks.digits:make_task", "params": {"width": 4, "epochs": 1}}


def test_l1_criterion_picks_the_same_weights_as_torch_l1_unstructured():
    ours, ref = model(), model()
    apply_masks(ours, PruneConfig(scope="global", sparsity=0.7))
    params = [(ref[0], "weight"), (ref[3], "weight")]
    torch_prune.global_unstructured(
        params,
        pruning_method=torch_prune.L1Unstructured,
        amount=prune_count(sum(m.weight.numel() for m, _ in params), 0.7),
    )
    for a, b in ((ours[0], ref[0]), (ours[3], ref[3])):
        assert torch.equal(a.weight_mask, b.weight_mask)


def sparsity_of(m: nn.Module) -> float:
    layers = compressible_layers(m).values()
    return sum(zeros(x) for x in layers) / sum(x.weight.numel() for x in layers)


@pytest.mark.parametrize("schedule", ["cubic", "iterative", "lottery"])
def test_schedules_reach_the_exact_target(schedule):
    task = make_task(width=4)
    m = task.build_model()
    total = sum(x.weight.numel() for x in compressible_layers(m).values())
    config = PruneConfig(sparsity=0.8, schedule=schedule, fine_tune_epochs=1, frequency=2, rounds=2)
    from autoslim.techniques.prune import MagnitudePruneHandler

    MagnitudePruneHandler().apply(m, config, ApplyContext(task=task, seed=0))
    assert sum(zeros(x) for x in compressible_layers(m).values()) == prune_count(total, 0.8)


def test_cubic_schedule_prunes_gradually_during_the_fine_tune():
    task = make_task(width=4)
    m = task.build_model()
    seen: list[float] = []
    from autoslim.train import TrainHooks

    def watch(mod: nn.Module, step: int) -> None:
        masks = [x.weight_mask for x in compressible_layers(mod).values()]
        seen.append(float(sum((k == 0).sum() for k in masks) / sum(k.numel() for k in masks)))

    ctx = ApplyContext(task=task, seed=0, hooks=TrainHooks(after_step=[watch]))
    config = PruneConfig(
        sparsity=0.9, schedule="cubic", fine_tune_epochs=1, start_step=0, end_step=12, frequency=4
    )
    from autoslim.techniques.prune import MagnitudePruneHandler

    MagnitudePruneHandler().apply(m, config, ctx)
    # the shared hook runs before the stage's own, so it sees the previous step's masks
    assert seen[1] == pytest.approx(0.9 * (1 - (1 - 0 / 12) ** 3), abs=1e-3)
    assert seen[5] == pytest.approx(0.9 - 0.9 * (1 - 4 / 12) ** 3, abs=1e-3)
    assert seen[9] == pytest.approx(0.9 - 0.9 * (1 - 8 / 12) ** 3, abs=1e-3)
    assert seen[13] == pytest.approx(0.9, abs=1e-3)
    assert seen == sorted(seen)


@pytest.mark.parametrize(
    "stage",
    [
        {"schedule": "cubic", "criterion": "taylor", "frequency": 3},
        {
            "schedule": "iterative",
            "criterion": "fisher",
            "rounds": 2,
            "scope": "layer",
            "layers": {"re:.*": 0.6},
        },
        {"schedule": "lottery", "criterion": "random", "rounds": 1},
    ],
)
def test_recipes_replay_to_identical_state_dicts(stage):
    task = make_task(width=4, epochs=1)
    base = task.build_model()
    kw = {"sparsity": 0.75} if stage.get("scope") != "layer" else {}
    recipe = Recipe.from_dict(
        {
            "task": TINY,
            "stages": [
                {"kind": "prune", "fine_tune_epochs": 1, "calibration_samples": 8, **kw, **stage}
            ],
        }
    )
    a = apply_recipe(recipe, task=task, model=copy.deepcopy(base)).state_dict()
    b = apply_recipe(recipe, task=task, model=copy.deepcopy(base)).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.1.weight"], base.state_dict()["classifier.1.weight"])


def test_schedule_fields_are_validated():
    with pytest.raises(AutoslimError, match="fine_tune_epochs"):
        Recipe.from_dict(
            {"task": TINY, "stages": [{"kind": "prune", "sparsity": 0.5, "schedule": "cubic"}]}
        )
    with pytest.raises(AutoslimError, match="criterion"):
        Recipe.from_dict({"task": TINY, "stages": [{"kind": "prune", "criterion": "bn_scale"}]})
