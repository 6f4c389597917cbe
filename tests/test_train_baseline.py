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


TWO_TASKS = """
from torch import nn
WIDTH = {width}

def helper():
    return nn.Linear(4, WIDTH)

def make_a():
    return helper()

def make_b():
    return nn.Linear(4, {b_width})
"""


def test_editing_one_task_of_a_module_keeps_the_other_tasks_key(tmp_path):
    """The key hashes what the factory uses, not the whole module."""
    import importlib
    import sys

    from autoslim.task import factory_source

    def keys(width: int, b_width: int) -> tuple[str, str]:
        path = tmp_path / f"two_tasks_{width}_{b_width}.py"
        path.write_text(TWO_TASKS.format(width=width, b_width=b_width))
        sys.path.insert(0, str(tmp_path))
        try:
            module = importlib.import_module(path.stem)
        finally:
            sys.path.remove(str(tmp_path))
        return factory_source(module.make_a), factory_source(module.make_b)

    a, b = keys(8, 3)
    a_after_b_edit, b_edited = keys(8, 5)
    a_edited, _ = keys(16, 3)
    assert a == a_after_b_edit  # editing make_b leaves make_a's key alone
    assert b != b_edited
    assert a != a_edited  # a constant make_a reads through helper() is part of its key
    assert "def helper" in a and "def make_b" not in a


def test_tied_weights_are_cached_once_per_key_and_load_tied():
    from torch import nn

    from autoslim.baseline import unshared_state

    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight
    state = unshared_state(model)
    assert state["0.weight"].data_ptr() != state["1.weight"].data_ptr()
    fresh = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    fresh[1].weight = fresh[0].weight
    fresh.load_state_dict(state)
    assert fresh[1].weight is fresh[0].weight
    assert torch.equal(fresh[0].weight, model[0].weight)
