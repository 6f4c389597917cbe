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


BATCH, TOKENS = 4, 6


class TokenModel(nn.Module):
    """Linear layers on ``[batch, tokens, features]`` (embed, mix) and on ``[batch, features]``
    (head, after pooling the tokens); ``unused`` is never called."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = pruned(8, 32, 0.9)
        self.mix = pruned(32, 32, 0.9)
        self.head = pruned(32, 4, 0.9)
        self.unused = pruned(32, 32, 0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.mix(torch.relu(self.embed(x))))
        return self.head(h.mean(dim=1))


def tokens(batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, TOKENS, 8, generator=torch.Generator().manual_seed(1))


def recording(monkeypatch, crossover=lambda out, inp, rows: 0.8) -> list[tuple]:
    calls = []

    def fake(out_features, in_features, rows, threads):
        calls.append((out_features, in_features, rows, threads))
        return crossover(out_features, in_features, rows)

    monkeypatch.setattr(runtime, "measure_crossover", fake)
    return calls


def test_crossovers_are_timed_at_the_rows_each_layer_multiplies(monkeypatch):
    calls = recording(monkeypatch)
    target = Target(batch_size=BATCH, threads=1)
    plan = runtime.planned_kernels(TokenModel(), target, tokens())
    rows = BATCH * TOKENS
    assert calls == [(32, 8, rows, 1), (32, 32, rows, 1), (4, 32, BATCH, 1)]
    # the layer the example never reaches is not timed and stays dense
    assert plan == {"embed": "csr", "mix": "csr", "head": "csr", "unused": "dense"}


def test_without_an_example_every_layer_is_timed_at_the_batch_size(monkeypatch):
    calls = recording(monkeypatch)
    runtime.planned_kernels(TokenModel(), Target(batch_size=BATCH, threads=1))
    assert {c[2] for c in calls} == {BATCH} and len(calls) == 4


def test_a_layer_where_dense_wins_at_its_real_rows_stays_dense(monkeypatch):
    # CSR wins at batch rows (a crossover at 0.8) but never at batch x tokens rows.
    recording(monkeypatch, lambda out, inp, rows: 0.8 if rows == BATCH else None)
    model = TokenModel()
    x = tokens()
    expected = model(x)
    out = runtime.sparse_runtime(model, Target(batch_size=BATCH, threads=1), x)
    assert type(out.embed) is nn.Linear and type(out.mix) is nn.Linear
    assert isinstance(out.head, SparseLinear) and out.head.kernel == "csr"
    torch.testing.assert_close(out(x), expected, rtol=1e-5, atol=1e-5)


def test_a_layer_called_at_several_row_counts_runs_csr_only_if_it_wins_at_each(monkeypatch):
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = pruned(8, 8, 0.9)

        def forward(self, x):
            return self.proj(x).sum(1) + self.proj(x[:, 0])  # [B*T] rows, then [B] rows

    calls = recording(monkeypatch, lambda out, inp, rows: 0.8 if rows == BATCH else None)
    target = Target(batch_size=BATCH, threads=1)
    assert runtime.planned_kernels(Shared(), target, tokens()) == {"proj": "dense"}
    assert [c[2] for c in calls] == [BATCH * TOKENS, BATCH]


def test_recording_rows_leaves_the_model_as_it_was(monkeypatch):
    recording(monkeypatch)
    model = TokenModel().train()
    model.head.eval()
    runtime.planned_kernels(model, Target(batch_size=BATCH, threads=1), tokens())
    assert model.training and model.embed.training and not model.head.training
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_a_lazy_example_is_only_fetched_when_some_layer_is_timed(monkeypatch):
    recording(monkeypatch)
    asked = []

    def example():
        asked.append(True)
        return tokens()

    dense = nn.Sequential(nn.Linear(8, 8))  # no zeros: nothing to time
    assert runtime.planned_kernels(dense, Target(), example) == {}
    assert runtime.planned_kernels(dense, Target(sparse_kernels=False), example) == {}
    assert not asked
    runtime.planned_kernels(TokenModel(), Target(batch_size=BATCH, threads=1), example)
    assert asked == [True]


def test_the_example_context_reaches_plans_that_are_given_none(monkeypatch):
    calls = recording(monkeypatch)
    target = Target(batch_size=BATCH, threads=1)
    with runtime.example_input(tokens()):
        runtime.planned_kernels(TokenModel(), target)
    runtime.planned_kernels(TokenModel(), target)  # outside: the batch size again
    assert [c[2] for c in calls] == [BATCH * TOKENS] * 2 + [BATCH] + [BATCH] * 4


def test_a_task_without_data_gives_no_example():
    from autoslim.task import model_only_task

    assert runtime.task_example(model_only_task(TokenModel, "m:f"), BATCH)() is None
    assert runtime.task_example(None, BATCH)() is None


def _token_task():
    from autoslim.task import Split, Splits, Task

    def splits():
        split = Split(tokens(3), torch.zeros(3, dtype=torch.long))  # tiled to the batch size
        return Splits(split, split, split)

    return Task(name="tokens", build_model=TokenModel, load_data=splits)


def test_saved_and_loaded_artifacts_time_the_rows_of_the_tasks_example(monkeypatch, tmp_path):
    from autoslim.artifact import load_artifact, save_artifact
    from autoslim.recipe import Recipe

    calls = recording(monkeypatch, lambda out, inp, rows: 0.8 if rows == BATCH else None)
    task = _token_task()
    recipe = Recipe.model_validate(
        {
            "task": {"entry": "tests.tokens:make_task"},
            "target": {"batch_size": BATCH, "threads": 1, "storage_policy": "fastest"},
        }
    )
    save_artifact(TokenModel(), recipe, tmp_path / "a", task=task)
    saved = list(calls)
    calls.clear()
    loaded = load_artifact(tmp_path / "a", task=task).model
    rows = BATCH * TOKENS
    assert saved == calls == [(32, 8, rows, 1), (32, 32, rows, 1), (4, 32, BATCH, 1)]
    assert {n for n, m in loaded.named_modules() if isinstance(m, SparseLinear)} == {"head"}
    # a model factory alone has no data: timed at the batch size, as before
    calls.clear()
    load_artifact(tmp_path / "a", model_factory=TokenModel)
    assert {c[2] for c in calls} == {BATCH}
