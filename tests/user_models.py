"""Models and data written the way their users write them, not for autoslim.

- :class:`CifarResNet`: a torchvision-style basic-block ResNet for 32x32 images (no
  torchvision import: PyPI's torchvision does not load beside the CPU torch build here).
- :func:`bert_classifier`: a ``transformers`` ``BertForSequenceClassification`` on token
  ids, fed Hugging Face style: dict batches with ``input_ids``, ``attention_mask`` and
  ``labels``; it returns a ``SequenceClassifierOutput``, not a tensor.
- :class:`OddMix`: Embedding, depthwise and grouped Conv1d, a GRU, LayerNorm, and an
  output head tied to the embedding (``head.weight is embed.weight``).

Each comes with DataLoaders over a small synthetic task it can learn, all random-init
and offline. Shared by the tests of every package that must handle such models.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

# --- a torchvision-style ResNet ---------------------------------------------------------


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), blocks=(1, 1, 1), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, inplanes = [], widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(count):
                stage.append(BasicBlock(inplanes, width, stride if j == 0 else 1))
                inplanes = width
            layers.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def image_data(n: int, seed: int, size: int = 16, noise: float = 0.8) -> TensorDataset:
    """Images whose class is which quadrant-colour pattern they carry, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    patterns = torch.randn(10, 3, size, size, generator=torch.Generator().manual_seed(99))
    images = patterns[labels] + noise * torch.randn(n, 3, size, size, generator=g)
    return TensorDataset(images, labels)


# --- a Hugging Face BERT classifier on token ids ----------------------------------------

VOCAB = 120
SEQ = 16


def bert_classifier(num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config).eval()


class TokenDataset(Dataset):
    """Hugging Face style samples: a dict of input_ids, attention_mask and labels. The
    label is whether token 7 occurs among the real (unpadded) tokens: at position 1, or
    ``anywhere`` among them (harder for a recurrent model)."""

    def __init__(self, n: int, seed: int, anywhere: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(10, VOCAB, (n, SEQ), generator=g)
        lengths = torch.randint(SEQ // 2, SEQ + 1, (n,), generator=g)
        self.mask = (torch.arange(SEQ)[None, :] < lengths[:, None]).long()
        plant = torch.rand(n, generator=g) < 0.5
        where = torch.ones(n, dtype=torch.long)
        if anywhere:
            where = (torch.rand(n, generator=g) * lengths).long()
        self.ids[plant, where[plant]] = 7
        self.ids = self.ids * self.mask
        self.labels = plant.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


# --- a model of odd parts ---------------------------------------------------------------


class OddMix(nn.Module):
    """Token ids in, class logits per sequence out, through an embedding, a depthwise and
    a grouped Conv1d, a GRU and LayerNorm; the vocabulary head of an auxiliary
    language-model output shares the embedding's weight."""

    def __init__(self, vocab: int = VOCAB, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.depthwise = nn.Conv1d(dim, dim, 3, padding=1, groups=dim)
        self.grouped = nn.Conv1d(dim, 2 * dim, 3, padding=1, groups=4)
        self.norm = nn.LayerNorm(2 * dim)
        self.gru = nn.GRU(2 * dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied, as language models do
        self.classify = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).transpose(1, 2)
        x = F.gelu(self.grouped(F.gelu(self.depthwise(x)))).transpose(1, 2)
        out, _ = self.gru(self.norm(x))
        vocab_logits = self.head(out[:, -1])  # the tied head takes part in every forward
        return self.classify(out[:, -1]) + 0.0 * vocab_logits[:, :1]


def token_data(n: int, seed: int, anywhere: bool = False) -> TensorDataset:
    """(tokens, label) pairs for OddMix: the label is whether token 7 occurs."""
    data = TokenDataset(n, seed, anywhere)
    return TensorDataset(data.ids, data.labels)


def loaders(
    kind: str,
    sizes=(256, 128, 128),
    batch_size: int = 32,
    image_size: int = 16,
    hard: bool = False,
) -> dict[str, DataLoader]:
    """Train, val and test DataLoaders for ``"image"``, ``"bert"`` or ``"tokens"``;
    ``hard``: noisier images, and the token planted anywhere."""
    make = {
        "image": lambda n, seed: image_data(n, seed, image_size, 2.0 if hard else 0.8),
        "bert": lambda n, seed: TokenDataset(n, seed, hard),
        "tokens": lambda n, seed: token_data(n, seed, hard),
    }[kind]
    return {
        name: DataLoader(make(n, seed), batch_size=batch_size, shuffle=(name == "train"))
        for name, n, seed in zip(("train", "val", "test"), sizes, (1, 2, 3), strict=True)
    }


class CountingTokens(Dataset):
    """The BERT dataset (dicts of tensors), counting every sample read: a streamed split
    whose reads a test can check."""

    def __init__(self, n: int, seed: int) -> None:
        self.data, self.reads = TokenDataset(n, seed), 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        self.reads += 1
        return self.data[i]


def loader_task(
    kind: str,
    build_model,
    *,
    train=None,
    device: str = "cpu",
    sizes=(96, 32, 32),
    batch_size: int = 16,
):
    """An ``autoslim.Task`` built the way a user would, from their own DataLoaders
    (``train`` replaces the train loader, e.g. with a bare Dataset)."""
    from autoslim.data import as_split
    from autoslim.task import Splits, Task, TrainSettings

    def splits() -> Splits:
        data = loaders(kind, sizes=sizes, batch_size=batch_size)
        if train is not None:
            data["train"] = train
        return Splits(**{name: as_split(source) for name, source in data.items()})

    return Task(
        name=kind,
        build_model=build_model,
        load_data=splits,
        train=TrainSettings(epochs=0, batch_size=batch_size, device=device),
    )
