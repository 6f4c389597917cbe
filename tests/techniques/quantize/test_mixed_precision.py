from __future__ import annotations

import itertools
import random

import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.recipe import TaskRef
from autoslim.task import load_task
from autoslim.techniques.quantize import QuantizeConfig
from autoslim.techniques.quantize import _mixed_precision as precision
from autoslim.techniques.quantize._mixed_precision import allocate, output_kl, weight_bytes


def brute_force(costs, sizes, budget):
    best = None
    for combo in itertools.product(*[list(costs[layer]) for layer in costs]):
        total = sum(sizes[layer][w] for layer, w in zip(costs, combo, strict=True))
        cost = sum(costs[layer][w] for layer, w in zip(costs, combo, strict=True))
        if total <= budget and (best is None or cost < best - 1e-12):
            best = cost
    return best


@pytest.mark.parametrize("seed", range(12))
def test_allocator_respects_budget_and_matches_brute_force(seed):
    rng = random.Random(seed)
    widths = [2, 3, 4, 8, "fp32"]
    costs, sizes = {}, {}
    for layer in range(4):
        n = rng.randint(50, 500)
        sizes[f"l{layer}"] = {w: (n * (32 if w == "fp32" else w) + 7) // 8 for w in widths}
        base = rng.random()
        costs[f"l{layer}"] = {w: 0.0 if w == "fp32" else base / 2**w for w in widths}
    budget = rng.randint(
        sum(min(s.values()) for s in sizes.values()), sum(max(s.values()) for s in sizes.values())
    )
    plan = allocate(costs, sizes, budget, resolution=100000)
    assert plan.weight_bytes <= budget
    assert plan.weight_bytes == sum(sizes[layer][w] for layer, w in plan.widths.items())
    assert plan.sensitivity == pytest.approx(brute_force(costs, sizes, budget))


def test_coarse_resolution_still_never_exceeds_the_budget():
    costs = {"a": {2: 1.0, 8: 0.0}, "b": {2: 1.0, 8: 0.0}}
    sizes = {"a": {2: 251, 8: 1001}, "b": {2: 251, 8: 1001}}
    plan = allocate(costs, sizes, 1300, resolution=7)
    assert plan.weight_bytes <= 1300


def test_impossible_budget_is_a_user_error():
    with pytest.raises(AutoslimError, match="no bit-width plan fits a budget of 10"):
        allocate({"a": {8: 0.0}}, {"a": {8: 100}}, 10)


def test_weight_bytes_counts_packed_levels_and_scales():
    layer = nn.Linear(10, 6)
    assert weight_bytes(layer, 3, QuantizeConfig()) == (60 * 3 + 7) // 8 + 6 * 4
    assert weight_bytes(layer, "fp16", QuantizeConfig()) == 120
    assert (
        weight_bytes(layer, 4, QuantizeConfig(symmetric=False, granularity="group", group_size=5))
        == 30 + 12 * 8
    )


def test_output_kl_is_zero_for_equal_logits_and_matches_hand_value():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[0.0, torch.log(torch.tensor(3.0))]])  # q = (1/4, 3/4), p = (1/2, 1/2)
    assert output_kl(a, a) == 0.0
    expected = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2.0 / 3.0))
    assert output_kl(a, b) == pytest.approx(float(expected))


def test_sensitivity_is_measured_once_then_read_from_cache(tiny_task_ref, monkeypatch):
    from autoslim.baseline import load_baseline

    ref = TaskRef(**tiny_task_ref)
    task = load_task(ref)
    baseline = load_baseline(ref, task)
    table = precision.sensitivity_table(task, baseline.model, baseline.fingerprint, [2, 8])
    assert set(table["bits"]) == {2, 8} and len(table) == 2 * 5
    kl = table.set_index(["layer", "bits"])["kl"]
    assert all(kl[(layer, 2)] > kl[(layer, 8)] >= 0 for layer in set(table["layer"]))
    monkeypatch.setattr(precision, "layer_sensitivity", lambda *a, **k: pytest.fail("recomputed"))
    again = precision.sensitivity_table(task, baseline.model, baseline.fingerprint, [2, 8])
    assert again.equals(table)


def test_hessian_traces_are_positive_for_a_trained_model(tiny_task_ref):
    from autoslim.baseline import load_baseline

    ref = TaskRef(**tiny_task_ref)
    task = load_task(ref)
    traces = precision.hessian_traces(task, load_baseline(ref, task).model, samples=4, batches=1)
    assert set(traces) == {"features.0", "features.3", "features.7", "classifier.1", "classifier.4"}
    assert all(value > 0 for value in traces.values())
