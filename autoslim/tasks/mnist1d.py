"""MNIST-1D (Greydanus 2020): 1-D digit signals of length 40, generated offline.

The data comes from ``mnist1d.data.make_dataset`` with the package's own arguments, so
the numbers stay comparable to the paper's table (logistic 32 %, MLP 68 %, CNN 94 %).
``num_samples`` is the package's total before its own 80/20 train/test split; the
default 5,000 is the paper's 4,000 train / 1,000 test. Validation is carved out of the
package's train part with a fixed ``seed``, so the test split stays the paper's.

Generating takes seconds, so the arrays are cached once per process and on disk as
``.npz`` under ``$AUTOSLIM_CACHE/mnist1d`` (never pickle, unlike the package's own
cache). The generator reseeds Python's and NumPy's global RNGs; we restore both so a
task load never changes the randomness of the caller.

Four models: the paper's CNN, a residual 1-D CNN (residual adds and BatchNorm are what
dependency-aware pruning must get right), a transformer encoder (for head pruning) and
the paper's MLP. Every model exposes ``example_input_shape`` so structured pruning can
trace it when an artifact is rebuilt without its data.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from autoslim.baseline import cache_root
from autoslim.errors import AutoslimError
from autoslim.task import Split, Splits, Task, TrainSettings

SEQ_LEN = 40
NUM_CLASSES = 10
MODELS = ("cnn", "rescnn", "transformer", "mlp")


def _generate(num_samples: int, data_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = num_samples, data_seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


@functools.lru_cache(maxsize=4)
def load_arrays(num_samples: int, data_seed: int = 42) -> dict[str, np.ndarray]:
    """The generated arrays, from memory, the ``.npz`` cache, or freshly generated."""
    path = cache_file(num_samples, data_seed)
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    arrays = _generate(num_samples, data_seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return arrays


def load_splits(
    num_samples: int = 5000, seed: int = 0, val_fraction: float = 0.2, data_seed: int = 42
) -> Splits:
    arrays = load_arrays(num_samples, data_seed)
    x = torch.tensor(arrays["x"], dtype=torch.float32)
    y = torch.tensor(arrays["y"], dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(len(y) * val_fraction))
    val_idx, train_idx = order[:n_val], order[n_val:]
    return Splits(
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(
            torch.tensor(arrays["x_test"], dtype=torch.float32),
            torch.tensor(arrays["y_test"], dtype=torch.long),
        ),
    )


class ConvNet(nn.Module):
    """The paper's CNN: three stride-2 convs and a linear read-out (~5 k params at 25)."""

    example_input_shape = (SEQ_LEN,)

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c * 5, NUM_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class ResConvNet(nn.Module):
    """Stem conv, residual blocks with BatchNorm, two max-pools, global average pool."""

    example_input_shape = (SEQ_LEN,)

    def __init__(self, channels: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv1d(1, channels, 5, padding=2, bias=False), nn.BatchNorm1d(channels), nn.ReLU()
        )
        layers: list[nn.Module] = []
        for i in range(blocks):
            layers.append(ResBlock(channels))
            if i < 2:
                layers.append(nn.MaxPool1d(2))
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(x.unsqueeze(1)))
        return self.head(features.mean(dim=2))


class TransformerNet(nn.Module):
    """Patch embedding (4 samples per token), learned positions, encoder layers, mean pool."""

    example_input_shape = (SEQ_LEN,)

    def __init__(
        self,
        d_model: int = 64,
        heads: int = 8,
        layers: int = 2,
        ffn: int = 128,
        patch: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Conv1d(1, d_model, patch, stride=patch)
        self.pos = nn.Parameter(torch.zeros(1, SEQ_LEN // patch, d_model))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, heads, ffn, dropout=dropout, batch_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.unsqueeze(1)).transpose(1, 2) + self.pos
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(self.norm(tokens).mean(dim=1))


class MLP(nn.Module):
    """The paper's MLP: 40-100-100-10."""

    example_input_shape = (SEQ_LEN,)

    def __init__(self, hidden: int = 100) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(SEQ_LEN, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_model(model: str, width: int | None = None) -> nn.Module:
    if model == "cnn":
        return ConvNet(width or 32)
    if model == "rescnn":
        return ResConvNet(width or 64)
    if model == "transformer":
        return TransformerNet(width or 64)
    if model == "mlp":
        return MLP(width or 100)
    raise AutoslimError(f"unknown mnist1d model {model!r} (known: {', '.join(MODELS)})")


# Epochs and learning rates that reach the paper's accuracy in well under a minute on 2 cores.
DEFAULTS = {"cnn": (60, 1e-2), "rescnn": (15, 3e-3), "transformer": (40, 2e-3), "mlp": (100, 1e-2)}


def make_task(
    *,
    model: str = "cnn",
    width: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int = 64,
    num_samples: int = 5000,
    seed: int = 0,
    data_seed: int = 42,
) -> Task:
    if model not in MODELS:
        raise AutoslimError(f"unknown mnist1d model {model!r} (known: {', '.join(MODELS)})")
    if num_samples < 100:
        raise AutoslimError(f"mnist1d num_samples must be at least 100, got {num_samples}")
    default_epochs, default_lr = DEFAULTS[model]
    return Task(
        name=f"mnist1d-{model}",
        build_model=lambda: build_model(model, width),
        load_data=lambda: load_splits(num_samples, seed, data_seed=data_seed),
        train=TrainSettings(
            epochs=default_epochs if epochs is None else epochs,
            lr=lr or default_lr,
            batch_size=batch_size,
        ),
    )


def cache_file(num_samples: int, data_seed: int = 42) -> Path:
    """Where the generated arrays live on disk (for tests and cleanup)."""
    return cache_root() / "mnist1d" / f"mnist1d_n{num_samples}_s{data_seed}.npz"
