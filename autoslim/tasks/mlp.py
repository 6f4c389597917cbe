"""A Linear-heavy MLP (768-3072-768, then a 10-way head) on a synthetic teacher task.

Inputs are Gaussian; the label is the argmax of a fixed random linear teacher. It is not
a benchmark of learning; it gives the big Linear layers real trained weights and a real
accuracy so kernel speed-ups and quantization damage are measured on one model.
"""

from __future__ import annotations

import torch
from torch import nn

from autoslim.task import Split, Splits, Task, TrainSettings


def make_mlp(width: int = 768, hidden: int = 3072, classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Linear(width, hidden),
        nn.ReLU(),
        nn.Linear(hidden, width),
        nn.ReLU(),
        nn.Linear(width, classes),
    )


def teacher_splits(width: int, classes: int, samples: int, seed: int) -> Splits:
    generator = torch.Generator().manual_seed(seed)
    teacher = torch.randn(width, classes, generator=generator)

    def split(n: int) -> Split:
        x = torch.randn(n, width, generator=generator)
        return Split(x, (x @ teacher).argmax(dim=1))

    return Splits(train=split(samples), val=split(samples // 4), test=split(samples // 4))


def make_task(
    *, width: int = 768, hidden: int = 3072, samples: int = 4096, epochs: int = 3, seed: int = 0
) -> Task:
    return Task(
        name="mlp",
        build_model=lambda: make_mlp(width, hidden),
        load_data=lambda: teacher_splits(width, 10, samples, seed),
        train=TrainSettings(epochs=epochs, lr=1e-3, batch_size=64),
    )
