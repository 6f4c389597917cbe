from __future__ import annotations

import torch
from torch import nn

from autoslim.recipe import Target
from autoslim.sparse import runtime
from autoslim.sparse.execute import SparseLinear


def pruned(in_features: int, out_features: int, sparsity: float) -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        flat = layer.weight.view(-1)
        flat[torch.randperm(flat.numel())[: round(sparsity * flat.numel())]] = 0.0
    return layer


def test_only_layers_past_the_measured_crossover_run_csr(monkeypatch):
    calls = []

    def fake_crossover(out_features, in_features, batch, threads):
        calls.append((out_features, in_features, batch, threads))
        return 0.8

    monkeypatch.setattr(runtime, "measure_crossover", fake_crossover)
    model = nn.Sequential(
        pruned(64, 32, 0.9), nn.ReLU(), pruned(32, 16, 0.6), nn.ReLU(), pruned(16, 4, 0.2)
    )
    x = torch.randn(5, 64)
    expected = model(x)
    out = runtime.sparse_runtime(model, Target(batch_size=5, threads=1))
    assert isinstance(out[0], SparseLinear) and out[0].kernel == "csr"
    assert (
        type(out[2]) is nn.Linear and type(out[4]) is nn.Linear
    )  # 0.6 < crossover; 0.2 never timed
    assert calls == [(32, 64, 5, 1), (16, 32, 5, 1)]
    torch.testing.assert_close(out(x), expected, rtol=1e-5, atol=1e-5)


def test_sparse_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setattr(runtime, "measure_crossover", lambda *a: 0.0)
    model = nn.Sequential(pruned(64, 32, 0.9))
    assert type(runtime.sparse_runtime(model, Target(sparse_kernels=False))[0]) is nn.Linear


def test_the_plan_names_the_kernel_each_swapped_layer_runs(monkeypatch):
    monkeypatch.setattr(runtime, "measure_crossover", lambda *a: 0.8)
    model = nn.Sequential(
        pruned(64, 32, 0.9), nn.ReLU(), pruned(32, 16, 0.6), nn.ReLU(), pruned(16, 4, 0.2)
    )
    target = Target(batch_size=5, threads=1)
    plan = runtime.planned_kernels(model, target)
    assert plan == {"0": "csr", "2": "dense"}  # the 20 % layer is no candidate: it runs as it is
    out = runtime.sparse_runtime(model, target)
    assert {n: m.kernel for n, m in out.named_modules() if isinstance(m, SparseLinear)} == {
        "0": "csr"
    }
