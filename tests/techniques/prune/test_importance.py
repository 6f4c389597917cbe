from __future__ import annotations

import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.techniques.prune.importance import GradStats, calibrate, channel_scores, get_criterion
from autoslim.techniques.structured import GroupImportance

W = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.25, 4.0]])
G = torch.tensor([[0.5, 0.5, -2.0], [1.0, -4.0, 0.25]])
G2 = torch.tensor([[4.0, 1.0, 2.0], [0.0, 16.0, 0.5]])
HD = torch.tensor([[2.0, 0.5, -4.0], [1.0, 8.0, 0.0]])  # a Hessian diagonal (may be negative)
STATS = GradStats({W: G}, {W: G2}, hess_diag={W: HD})


@pytest.mark.parametrize(
    ("name", "rows", "cols"),
    [
        ("l1", [3.5, 7.25], [4.0, 2.25, 4.5]),
        ("l2", [5.25, 25.0625], [10.0, 4.0625, 16.25]),
        ("taylor", [2.5, 5.0], [3.5, 2.0, 2.0]),  # |w·g| = [[.5, 1, 1], [3, 1, 1]]
        ("fisher", [4.25, 4.5], [2.0, 2.5, 4.25]),  # ½w²g² = [[2, 2, .25], [0, .5, 4]]
        ("hutchinson", [1.5, 4.75], [5.5, 1.25, -0.5]),  # ½w²h = [[1, 1, -.5], [4.5, .25, 0]]
    ],
)
def test_criteria_against_hand_computed_scores(name, rows, cols):
    crit = get_criterion(name)
    assert channel_scores(W, crit, STATS, dim=0).tolist() == pytest.approx(rows)
    assert channel_scores(W, crit, STATS, dim=1).tolist() == pytest.approx(cols)


def test_bn_scale_scores_a_group_by_its_batchnorm_gammas():
    import torch_pruning as tp

    model = nn.Sequential(
        nn.Conv1d(1, 3, 1), nn.BatchNorm1d(3), nn.ReLU(), nn.Conv1d(3, 2, 1)
    ).eval()
    model[1].weight.data = torch.tensor([-2.0, 0.5, 1.0])
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.ones(1, 1, 4))
    group = graph.get_pruning_group(model[0], tp.prune_conv_out_channels, [0, 1, 2])
    assert GroupImportance("bn_scale", GradStats())(group).tolist() == pytest.approx(
        [2.0, 0.5, 1.0]
    )
    assert GroupImportance("l1", GradStats())(group) is not None


def test_random_is_seeded_and_a_gradient_criterion_without_gradients_is_an_error():
    crit = get_criterion("random")
    a = channel_scores(W, crit, GradStats(generator=torch.Generator().manual_seed(3)))
    b = channel_scores(W, crit, GradStats(generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, b) and torch.equal(
        a, torch.rand(2, 3, generator=torch.Generator().manual_seed(3)).sum(1)
    )
    with pytest.raises(AutoslimError, match="gradients"):
        channel_scores(W, get_criterion("taylor"), GradStats())
    with pytest.raises(AutoslimError, match="Hessian diagonal"):
        channel_scores(W, get_criterion("hutchinson"), GradStats())
    with pytest.raises(AutoslimError, match="unknown importance criterion"):
        get_criterion("hessian-magic")


def test_calibrate_gives_mean_and_mean_squared_per_sample_gradients():
    model = nn.Linear(2, 1, bias=False)
    model.weight.data = torch.tensor([[1.0, 2.0]])
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.zeros(2, 1)
    stats = calibrate(model, x, y, lambda out, t: ((out - t) ** 2).sum())
    # per-sample gradients 2·(w·x − y)·x: [2, 0] and [0, 4]
    assert stats.grad[model.weight].tolist() == [[1.0, 2.0]]
    assert stats.sq_grad[model.weight].tolist() == [[2.0, 8.0]]
    assert model.weight.grad is None
