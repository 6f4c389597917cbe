"""``autoslim.compress``: a user's trained model and DataLoaders, no task module, no YAML."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from user_models import CifarResNet, OddMix, loaders

import autoslim
from autoslim.errors import AutoslimError
from autoslim.shared_tasks import SHARED_ENV
from autoslim.task import accuracy

QUANT_ONLY = [{"type": "quantize.weight", "bits": [8, 4]}]
QUICK_TARGET = {"batch_size": 4, "repeats": 3, "warmup": 1}


def trained(model: nn.Module, train: DataLoader, epochs: int = 2) -> nn.Module:
    """The user's own training loop: the model arrives trained."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(epochs):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    data = loaders("image", sizes=(128, 64, 64), image_size=8)
    model = trained(CifarResNet(widths=(8, 16, 16)), data["train"])
    run = autoslim.compress(
        model,
        train=data["train"],
        val=data["val"],
        test=data["test"],
        space=QUANT_ONLY,
        trials=2,
        target=QUICK_TARGET,
        out=tmp_path_factory.mktemp("runs") / "cifar",
        device="cpu",
        progress=False,
    )
    return model, data, run


def test_the_model_handed_in_is_the_baseline_and_is_never_retrained(cifar_run):
    model, data, run = cifar_run
    assert run.baseline["accuracy"] == pytest.approx(accuracy(model, data["val"]))
    assert run.baseline["test_accuracy"] == pytest.approx(accuracy(model, data["test"]))
    loaded = run.load()  # the baseline artifact, through the task this process holds
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_trials_complete_and_their_artifacts_load_as_the_users_class(cifar_run):
    model, _, run = cifar_run
    table = run.table()
    assert list(table["state"]) == ["COMPLETE", "COMPLETE"]
    front = run.front()
    assert len(front) >= 1
    point = int(front["trial"][0])
    compressed = run.load(point)
    assert type(compressed) is CifarResNet
    assert front["size_bytes"][0] < 0.5 * run.baseline["size_bytes"]
    x = torch.randn(4, 3, 8, 8)
    assert compressed(x).shape == (4, 10)


def test_the_run_folder_serves_the_command_line(cifar_run, tmp_path):
    _, _, run = cifar_run
    listed = subprocess.run(
        [sys.executable, "-m", "autoslim.cli", "pareto", str(run.path), "--json"],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0, listed.stderr
    assert {p["trial"] for p in json.loads(listed.stdout)["front"]} <= {0, 1}


def test_a_fresh_process_without_the_task_is_told_in_one_line(cifar_run):
    _, _, run = cifar_run
    artifact = run.path / "baseline"
    fresh = {k: v for k, v in os.environ.items() if k != SHARED_ENV}  # not a child of ours
    done = subprocess.run(
        [sys.executable, "-m", "autoslim.cli", "evaluate", str(artifact)],
        capture_output=True,
        text=True,
        env=fresh,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "defined in another Python process" in done.stderr


def test_a_notebook_model_dict_free_tuple_inputs_and_tied_weights(tmp_path):
    """A class defined where no fresh process can import it (as in a notebook), a tied
    embedding/head, and a GRU: the measuring processes get them by value."""

    class Notebook(OddMix):  # defined in this function: importable by nobody
        pass

    torch.manual_seed(0)
    data = loaders("tokens", sizes=(64, 32, 32))
    model = Notebook()
    run = autoslim.compress(
        model,
        train=data["train"],
        val=data["val"],
        space=QUANT_ONLY,
        trials=2,
        target=QUICK_TARGET,
        out=tmp_path / "odd",
        device="cpu",
        progress=False,
    )
    table = run.table()
    assert (table["state"] == "COMPLETE").all(), table["fail_reason"].tolist()
    point = int(run.front()["trial"][0])
    stored = run.load(point, runtime=False)  # as stored: on the torch runtime the head is int8
    assert stored.head.weight is stored.embed.weight
    with safe_open(str(run.path / f"artifacts/trial_{point}/weights.safetensors"), "pt") as f:
        assert not any(k.startswith("embed.weight") for k in f.keys())  # noqa: SIM118 — stored once


def test_tensor_pairs_and_a_custom_metric(tmp_path):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=generator)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))

    def agreement(m: nn.Module, loader: DataLoader) -> float:
        return accuracy(m, loader)

    run = autoslim.compress(
        model,
        train=(x, y),
        val=(x[:48], y[:48]),
        metric=agreement,
        space=QUANT_ONLY,
        trials=1,
        target=QUICK_TARGET,
        out=tmp_path / "pairs",
        device="cpu",
        progress=False,
    )
    assert list(run.objectives) == ["agreement", "size_bytes", "latency_ms"]
    assert run.study.metric_names == list(run.objectives)  # optuna-dashboard shows the names
    assert run.table()["state"].tolist() == ["COMPLETE"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"train": [1, 2, 3]}, "a split must be a Dataset, a DataLoader"),
        ({"space": "no_such_preset"}, "search space not found: no_such_preset"),
        ({"objectives": {"accuracy": "maximize", "speed": "minimize"}}, "unknown objective"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_arguments_fail_in_one_line_before_anything_is_written(kwargs, message, tmp_path):
    x, y = torch.randn(16, 4), torch.zeros(16, dtype=torch.long)
    arguments = {"train": (x, y), "val": (x, y), "out": tmp_path / "run", "progress": False}
    with pytest.raises(AutoslimError, match=message):
        autoslim.compress(nn.Linear(4, 2), **(arguments | kwargs))
    assert not (tmp_path / "run").exists()


def test_a_dataset_of_dicts_streams_batch_by_batch():
    from autoslim.data import LoaderSplit, batch_len

    class Dicts(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return {"input_ids": torch.full((3,), i), "labels": torch.tensor(i % 2)}

    split = LoaderSplit(Dicts())
    inputs, targets = split.take(4)
    assert inputs["input_ids"][:, 0].tolist() == [0, 1, 2, 3]
    assert targets.tolist() == [0, 1, 0, 1]
    seen = [batch_len(x) for x, _ in split.batches(4)]
    assert seen == [4, 4, 2]
    first = [x["input_ids"][0, 0].item() for x, _ in split.batches(4, shuffle=True, seed=1)]
    again = [x["input_ids"][0, 0].item() for x, _ in split.batches(4, shuffle=True, seed=1)]
    assert first == again  # the seed fixes the order


def test_a_tensor_dataset_keeps_the_users_loader_settings():
    from autoslim.data import LoaderSplit

    loader = DataLoader(TensorDataset(torch.arange(10.0), torch.arange(10)), batch_size=3)
    split = LoaderSplit(loader)
    assert split.loader(64) is loader  # evaluation reads the user's own loader
    assert [len(y) for _, y in split.batches(64, shuffle=True)] == [3, 3, 3, 1]


def test_a_run_folder_of_another_model_under_the_same_name_is_refused(tmp_path):
    x, y = torch.randn(32, 4), torch.zeros(32, dtype=torch.long)
    arguments = {
        "train": (x, y),
        "val": (x, y),
        "space": QUANT_ONLY,
        "trials": 1,
        "target": QUICK_TARGET,
        "out": tmp_path / "run",
        "name": "mine",
        "device": "cpu",
        "progress": False,
    }
    torch.manual_seed(0)
    run = autoslim.compress(nn.Linear(4, 2), **arguments)
    assert run.recipe(0).task.params["weights_sha"] == run.task.identity  # provenance
    torch.manual_seed(1)  # the same class, other weights: another baseline
    with pytest.raises(AutoslimError, match="holds a study whose task differ"):
        autoslim.compress(nn.Linear(4, 2), **arguments)
