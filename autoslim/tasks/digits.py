"""A small CNN on scikit-learn's bundled handwritten digits (1,797 real 8×8 images).

The split is stratified and fixed by ``split_seed`` (60 % train, 20 % validation,
20 % test), so every trial of a search sees the same validation set and the test set is
only read to report chosen points.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from autoslim.task import Split, Splits, Task, TrainSettings


class DigitsCNN(nn.Module):
    """Three conv blocks and a two-layer classifier (~90 k parameters at width 32)."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            nn.Conv2d(1, w1, 3, padding=1),
            nn.BatchNorm2d(w1),
            nn.ReLU(),
            nn.Conv2d(w1, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w2, w2, 3, padding=1),
            nn.BatchNorm2d(w2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(w2 * 4, 128),
            nn.ReLU(),
            nn.Dropout(0.2),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_splits(split_seed: int = 0) -> Splits:
    digits = load_digits()
    x = torch.tensor(digits.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = torch.arange(len(y)).numpy()
    train_idx, rest = train_test_split(
        idx, test_size=0.4, stratify=y.numpy(), random_state=split_seed
    )
    val_idx, test_idx = train_test_split(
        rest, test_size=0.5, stratify=y.numpy()[rest], random_state=split_seed
    )
    return Splits(
        train=Split(x[train_idx], y[train_idx]),
        val=Split(x[val_idx], y[val_idx]),
        test=Split(x[test_idx], y[test_idx]),
    )


def make_task(*, width: int = 32, epochs: int = 30, lr: float = 2e-3, split_seed: int = 0) -> Task:
    return Task(
        name="digits",
        build_model=lambda: DigitsCNN(width=width),
        load_data=lambda: load_splits(split_seed),
        train=TrainSettings(epochs=epochs, lr=lr, batch_size=64),
    )
