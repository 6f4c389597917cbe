"""Sparse modules compute what the dense masked layer does; the crossover is cached."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from autoslim.errors import AutoslimError
from autoslim.sparse import crossover as xo
from autoslim.sparse import semi_structured
from autoslim.sparse.execute import SparseConv2d, SparseLinear, choose_kernel


@pytest.fixture
def masked_linear() -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(96, 40)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) > 0.85)
    return layer


@pytest.fixture
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOSLIM_CACHE", str(tmp_path))
    return tmp_path / xo.CACHE_FILE


@pytest.mark.parametrize("kernel", ["csr", "dense"])
@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (2, 3, 96)])
def test_sparse_linear_equals_the_dense_masked_layer(masked_linear, kernel, shape):
    sparse = SparseLinear.from_dense(masked_linear, batch=8, threads=1, kernel=kernel)
    x = torch.randn(*shape)
    with torch.inference_mode():
        assert torch.allclose(sparse(x), masked_linear(x), rtol=1e-5, atol=1e-5)
    assert sparse.kernel == kernel
    assert torch.equal(copy.deepcopy(sparse).matrix.dense(), masked_linear.weight.detach())


def test_csr_kernel_keeps_no_dense_weight(masked_linear):
    sparse = SparseLinear.from_dense(masked_linear, batch=8, threads=1, kernel="csr")
    nnz = int(torch.count_nonzero(masked_linear.weight))
    assert sorted(sparse.state_dict()) == [
        "bias",
        "matrix.col_indices",
        "matrix.crow_indices",
        "matrix.values",
    ]
    assert sparse.state_dict()["matrix.values"].numel() == nnz


@pytest.mark.parametrize(("crossover", "expected"), [(0.8, "csr"), (0.9, "dense"), (None, "dense")])
def test_from_dense_falls_back_to_dense_below_the_crossover(
    masked_linear, monkeypatch, crossover, expected
):
    sparsity = 1 - int(torch.count_nonzero(masked_linear.weight)) / masked_linear.weight.numel()
    assert 0.8 < sparsity < 0.9
    monkeypatch.setattr(xo, "measure_crossover", lambda *a, **k: crossover)
    assert SparseLinear.from_dense(masked_linear, batch=64, threads=2).kernel == expected
    assert choose_kernel(sparsity, crossover) == expected


@pytest.mark.parametrize(
    "conv",
    [
        nn.Conv2d(3, 8, 3),
        nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 2), dilation=(2, 1), bias=False),
    ],
)
def test_sparse_conv_equals_the_dense_masked_conv(conv):
    torch.manual_seed(1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    x = torch.randn(2, conv.in_channels, 11, 9)
    sparse = SparseConv2d.from_dense(conv, batch=2, input_size=(11, 9), threads=1, kernel="csr")
    with torch.inference_mode():
        assert torch.allclose(sparse(x), conv(x), rtol=1e-5, atol=1e-5)
    assert "conv.weight" not in sparse.state_dict()


def test_grouped_conv_stays_dense_without_measuring(monkeypatch):
    conv = nn.Conv2d(4, 4, 3, groups=2)
    monkeypatch.setattr(
        xo, "cached_crossover", lambda *a, **k: pytest.fail("measured a dense-only conv")
    )
    assert SparseConv2d.from_dense(conv, batch=1, input_size=(8, 8), threads=1).kernel == "dense"
    with pytest.raises(AutoslimError, match="ungrouped"):
        SparseConv2d(conv, "csr")


def test_crossover_needs_sparse_to_win_at_every_higher_sparsity():
    assert xo.crossover_from_ratios({0.5: 0.9, 0.7: 1.2, 0.9: 0.5, 0.95: 0.3}) == 0.9
    assert xo.crossover_from_ratios({0.5: 1.5, 0.9: 1.1}) is None
    assert xo.crossover_from_ratios({0.5: 0.9, 0.9: 0.5}) == 0.5


def test_crossover_is_measured_once_then_read_from_the_cache(monkeypatch, private_cache):
    # Timer answers per sparsity: sparse then dense. Sparse wins from 0.9 on.
    answers = iter([2.0, 1.0, 0.5, 1.0, 0.3, 1.0])
    monkeypatch.setattr(xo, "median_ms", lambda fn, repeats, warmup=3: next(answers))
    assert xo.measure_crossover(16, 32, 4, 1, sparsities=(0.5, 0.9, 0.95)) == 0.9
    entry = next(iter(json.loads(private_cache.read_text()).values()))
    assert entry == {"crossover": 0.9, "ratios": {"0.5": 2.0, "0.9": 0.5, "0.95": 0.3}}

    monkeypatch.setattr(
        xo, "median_ms", lambda *a, **k: pytest.fail("re-measured a cached crossover")
    )
    assert xo.measure_crossover(16, 32, 4, 1, sparsities=(0.5, 0.9, 0.95)) == 0.9

    answers = iter([1.0, 2.0] * 3)  # a different batch is a different key: measured afresh
    monkeypatch.setattr(xo, "median_ms", lambda fn, repeats, warmup=3: next(answers))
    assert xo.measure_crossover(16, 32, 8, 1, sparsities=(0.5, 0.9, 0.95)) == 0.5
    assert len(json.loads(private_cache.read_text())) == 2


def test_semi_structured_is_never_chosen_without_cuda():
    if semi_structured.available():
        pytest.skip("a CUDA device is present; covered by the GPU test")
    weight = torch.tensor([[1.0, 0, 2, 0] * 16] * 32)
    assert semi_structured.fits(weight)
    assert semi_structured.choose_kernel(weight, batch=64) == "dense"
    with pytest.raises(AutoslimError, match="CUDA"):
        semi_structured.compress(weight)


@pytest.mark.skipif(not semi_structured.available(), reason="needs CUDA")
def test_semi_structured_linear_matches_dense_fp16():
    weight = torch.tensor([[1.0, 0, -2, 0] * 32] * 64) * torch.rand(64, 128)
    layer = nn.Linear(128, 64).cuda()
    with torch.no_grad():
        layer.weight.copy_(weight)
    sparse = SparseLinear.from_dense(layer, batch=32, threads=1, kernel="semi_structured").cuda()
    x = torch.randn(32, 128, device="cuda")
    with torch.inference_mode():
        assert torch.allclose(sparse(x), layer(x), rtol=1e-2, atol=1e-2)
