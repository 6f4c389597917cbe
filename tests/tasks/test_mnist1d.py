from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from autoslim.errors import AutoslimError
from autoslim.tasks.mnist1d import MODELS, cache_file, load_arrays, load_splits, make_task
from autoslim.train import train


def test_splits_have_the_papers_shapes_and_are_deterministic():
    a, b = load_splits(500, seed=0), load_splits(500, seed=0)
    assert (
        a.train.inputs.shape == (320, 40)
        and a.val.inputs.shape == (80, 40)
        and a.test.inputs.shape == (100, 40)
    )
    assert a.train.inputs.dtype == torch.float32 and a.train.targets.dtype == torch.long
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.val.targets, b.val.targets)
    other = load_splits(500, seed=1)
    assert not torch.equal(a.val.inputs, other.val.inputs)
    assert torch.equal(a.test.inputs, other.test.inputs)  # the test split is the package's
    assert set(a.train.targets.tolist()) == set(range(10))


def test_generation_is_cached_as_npz_and_leaves_global_rngs_alone():
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    load_arrays.cache_clear()
    arrays = load_arrays(300, 7)
    assert (random.random(), np.random.rand()) == expected
    path = cache_file(300, 7)
    assert path.suffix == ".npz" and path.is_file()
    with np.load(path, allow_pickle=False) as f:
        assert np.array_equal(f["x"], arrays["x"])


@pytest.mark.parametrize("name", MODELS)
def test_every_model_maps_a_batch_to_ten_logits(name):
    model = make_task(model=name, width=8).build_model()
    assert model(torch.randn(3, 40)).shape == (3, 10)
    assert tuple(model.example_input_shape) == (40,)


def test_a_few_epochs_of_the_cnn_beat_chance_by_far():
    task = make_task(model="cnn", num_samples=1000, epochs=12)
    torch.manual_seed(0)
    model = train(task.build_model(), task, epochs=12, lr=task.train.lr, seed=0)
    assert task.evaluate(model, "val") > 0.4  # chance is 0.1


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(AutoslimError, match="unknown mnist1d model"):
        make_task(model="lstm")
    with pytest.raises(AutoslimError, match="num_samples"):
        make_task(num_samples=10)
