from __future__ import annotations

import pytest
import torch

from autoslim.baseline import cache_root, load_baseline
from autoslim.errors import TrialFailed
from autoslim.recipe import TaskRef
from autoslim.task import load_task
from autoslim.train import TrainHooks, train


def test_baseline_is_trained_once_and_keyed_by_task_params(tiny_task_ref):
    ref = TaskRef(**tiny_task_ref)
    first = load_baseline(ref, load_task(ref))
    folder = cache_root() / "baselines" / first.fingerprint
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    again = load_baseline(ref, load_task(ref))
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    for key, value in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[key], value)
    assert first.metrics["val_accuracy"] > 0.5  # 3 epochs of a 4-channel CNN beat chance (0.1)
    other = TaskRef(entry=ref.entry, params={**ref.params, "epochs": 2})
    assert load_baseline(other, load_task(other)).fingerprint != first.fingerprint


def test_training_is_deterministic_for_a_seed(tiny_task_ref):
    task = load_task(TaskRef(**tiny_task_ref))
    a, b = task.build_model(), task.build_model()
    b.load_state_dict(a.state_dict())
    train(a, task, epochs=1, lr=1e-3, seed=5)
    train(b, task, epochs=1, lr=1e-3, seed=5)
    for key, value in a.state_dict().items():
        assert torch.equal(b.state_dict()[key], value), key


def test_nan_loss_stops_training_with_a_reason(tiny_task_ref):
    task = load_task(TaskRef(**tiny_task_ref))
    hooks = TrainHooks(loss=lambda m, x, y: m(x).sum() * float("nan"))
    with pytest.raises(TrialFailed, match="training loss became nan at epoch 0, step 0"):
        train(task.build_model(), task, epochs=1, lr=1e-3, seed=0, hooks=hooks)


def test_exploding_loss_stops_training(tiny_task_ref):
    task = load_task(TaskRef(**tiny_task_ref))
    calls = []

    def loss(m, x, y):
        calls.append(1)
        return task.loss(m(x), y) * (1.0 if len(calls) == 1 else 1e9)

    with pytest.raises(TrialFailed, match="diverged at epoch 0, step 1"):
        train(task.build_model(), task, epochs=1, lr=1e-3, seed=0, hooks=TrainHooks(loss=loss))


def test_baseline_training_does_not_depend_on_global_rng_state(
    tiny_task_ref, tmp_path, monkeypatch
):
    ref = TaskRef(**tiny_task_ref)
    models = []
    for name in ("a", "b"):
        monkeypatch.setenv("AUTOSLIM_CACHE", str(tmp_path / name))
        torch.randn(17)  # advance the global RNG differently before each training
        models.append(load_baseline(ref, load_task(ref)).model)
    for key, value in models[0].state_dict().items():
        assert torch.equal(models[1].state_dict()[key], value), key
