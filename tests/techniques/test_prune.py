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
    weights = torch.cat([m[0].weight.detach().abs().flatten(), m[3].weight.detach().abs().flatten()])
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
