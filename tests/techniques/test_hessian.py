from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from autoslim.space import compressible_layers
from autoslim.tasks.digits import make_task
from autoslim.techniques._hessian import hessian_vector_products, hutchinson_diagonal
from autoslim.techniques.prune.importance import collect_stats, element_scores, get_criterion
from autoslim.techniques.quantize import _mixed_precision as precision

# A least-squares layer: L(w) = mean_n (w·x_n − y_n)², so H = 2/N · XᵀX exactly.
X = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0], [2.0, 0.0, 1.0], [-1.0, 1.0, 1.0]])
Y = torch.tensor([[1.0], [0.0], [2.0], [-1.0]])
H = 2 / len(X) * X.T @ X


def layer(weight: list[float]) -> nn.Linear:
    m = nn.Linear(len(weight), 1, bias=False)
    m.weight.data = torch.tensor([weight])
    return m


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((out - target) ** 2).mean()


def test_all_sign_vectors_give_the_exact_hessian_diagonal_and_trace():
    m = layer([0.3, -0.7, 1.1])
    probes = [[torch.tensor([list(signs)])] for signs in itertools.product([-1.0, 1.0], repeat=3)]
    (diag,) = hutchinson_diagonal(mse(m(X), Y), [m.weight], probes=probes)
    assert diag.flatten().tolist() == pytest.approx(torch.diagonal(H).tolist())
    trace = sum(
        float((v[0] * hv[0]).sum())
        for v, hv in hessian_vector_products(mse(m(X), Y), [m.weight], probes=probes)
    ) / len(probes)
    assert trace == pytest.approx(float(torch.trace(H)))


def test_random_probes_converge_within_the_estimators_spread():
    m = layer([0.3, -0.7, 1.1])
    samples = 1000
    (diag,) = hutchinson_diagonal(
        mse(m(X), Y), [m.weight], samples=samples, generator=torch.Generator().manual_seed(0)
    )
    # Var[z_i (Hz)_i] = Σ_{j≠i} H_ij² for Rademacher z: allow four standard errors.
    off = (H**2).sum(1) - torch.diagonal(H) ** 2
    assert (diag.flatten() - torch.diagonal(H)).abs().le(4 * (off / samples).sqrt()).all()


def test_hutchinson_criterion_is_half_w_squared_times_the_hessian_diagonal():
    # Orthogonal inputs make H diagonal (diag(1, 4)), where one probe is already exact.
    m = layer([1.0, 2.0])
    x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    crit = get_criterion("hutchinson")
    for batch_size in (1, 2):  # split batches are weighted into the mean loss's Hessian
        stats = collect_stats(m, crit, x, y, mse, seed=0, hessian_samples=1, batch_size=batch_size)
        assert stats.hess_diag[m.weight].tolist() == [[1.0, 4.0]]
        assert element_scores(m.weight, crit, stats).tolist() == [[0.5, 8.0]]  # ½·[1·1, 4·4]
    assert m.weight.grad is None


def test_hutchinson_is_seeded_and_skips_parameters_the_loss_is_linear_in():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    crit = get_criterion("hutchinson")
    a = collect_stats(model, crit, x, y, nn.functional.cross_entropy, seed=3, hessian_samples=4)
    b = collect_stats(model, crit, x, y, nn.functional.cross_entropy, seed=3, hessian_samples=4)
    assert all(torch.equal(a.hess_diag[p], b.hess_diag[p]) for p in model.parameters())
    # a bias feeding a linear loss has a constant gradient: its Hessian block is zero
    linear = layer([1.0, -1.0])
    linear.bias = nn.Parameter(torch.zeros(1))
    stats = collect_stats(linear, crit, X[:, :2], Y, lambda out, t: (out - t).sum(), seed=0)
    assert stats.hess_diag[linear.bias].tolist() == [0.0]


def test_hawq_traces_are_unchanged_by_the_shared_helper():
    """The loop precision.hessian_traces had before it shared the helper, inlined."""
    task = make_task(width=4, epochs=1)
    torch.manual_seed(0)
    model = task.build_model()
    expected = _reference_traces(task, model, samples=2, batches=1, seed=5)
    got = precision.hessian_traces(task, model, samples=2, batches=1, seed=5)
    assert got.keys() == expected.keys()
    assert all(math.isclose(got[k], expected[k], rel_tol=0, abs_tol=0) for k in got)


def _reference_traces(task, model, *, samples, batches, seed):
    generator = torch.Generator().manual_seed(seed)
    layers = compressible_layers(model)
    traces = dict.fromkeys(layers, 0.0)
    model.eval()
    for step, (x, y) in enumerate(task.data.train.loader(task.train.batch_size)):
        if step >= batches:
            break
        weights = [m.weight for m in layers.values()]
        grads = torch.autograd.grad(task.loss(model(x), y), weights, create_graph=True)
        for _ in range(samples):
            vs = [
                torch.randint(0, 2, w.shape, generator=generator).float() * 2 - 1 for w in weights
            ]
            hvs = torch.autograd.grad(grads, weights, grad_outputs=vs, retain_graph=True)
            for name, v, hv in zip(layers, vs, hvs, strict=True):
                traces[name] += float((v * hv).sum()) / (samples * batches)
    return traces
