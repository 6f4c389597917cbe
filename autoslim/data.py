"""The data a task streams: splits over in-memory tensors, Datasets or DataLoaders.

A model's input may be one tensor, a tuple of tensors (``model(*inputs)``) or a dict of
tensors (``model(**inputs)``, the Hugging Face way). Everything autoslim does with data,
training, calibration, measurement, goes through the few helpers here, so every
technique sees the same three shapes and none of them assumes a split fits in memory.

Batches from a user's loader are split into ``(inputs, targets)`` by :func:`split_batch`:
a pair ``(x, y)``, a longer tuple ``(x1, x2, ..., y)``, or a dict whose ``labels`` (or
``label``) entry is the target and whose other entries are the inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    SequentialSampler,
    TensorDataset,
)

from autoslim.errors import AutoslimError

Inputs = torch.Tensor | tuple | dict
TARGET_KEYS = ("labels", "label")


# --- inputs of any of the three shapes -----------------------------------------------


def map_tensors(inputs: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``fn`` applied to every tensor of a tensor, tuple/list or dict, keeping the shape."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(v, fn) for v in inputs)
    return inputs


def first_tensor(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, torch.Tensor):
        return inputs
    values = inputs.values() if isinstance(inputs, dict) else inputs
    for value in values:
        if isinstance(value, (torch.Tensor, tuple, list, dict)):
            return first_tensor(value)
    raise AutoslimError(f"the model's inputs hold no tensor ({type(inputs).__name__})")


def batch_len(inputs: Any) -> int:
    """Rows in a batch: the first dimension of its first tensor."""
    return len(first_tensor(inputs))


def to_device(inputs: Any, device: str | torch.device) -> Any:
    return map_tensors(inputs, lambda t: t.to(device, non_blocking=True))


def rows(inputs: Any, start: int, stop: int) -> Any:
    return map_tensors(inputs, lambda t: t[start:stop])


def concat(parts: list[Any]) -> Any:
    """Batches of one shape joined along their first dimension."""
    head = parts[0]
    if isinstance(head, torch.Tensor):
        return torch.cat(parts)
    if isinstance(head, dict):
        return {k: concat([p[k] for p in parts]) for k in head}
    if isinstance(head, (tuple, list)):
        return type(head)(concat([p[i] for p in parts]) for i in range(len(head)))
    raise AutoslimError(f"cannot join batches of {type(head).__name__}")


def tile(inputs: Any, size: int) -> Any:
    """Exactly ``size`` rows: the batch repeated as often as needed, then cut."""
    reps = -(-size // batch_len(inputs))
    return map_tensors(inputs, lambda t: t.repeat(reps, *([1] * (t.dim() - 1)))[:size].contiguous())


def model_output(out: Any) -> torch.Tensor:
    """The tensor a model's call means: itself, ``.logits`` (Hugging Face outputs), or
    the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise AutoslimError(f"the model returned {type(out).__name__}, not a tensor or logits")


def call_model(model: nn.Module | Callable, inputs: Any) -> torch.Tensor:
    """``model`` on ``inputs`` the way their shape says, reduced to its output tensor."""
    if isinstance(inputs, dict):
        return model_output(model(**inputs))
    if isinstance(inputs, (tuple, list)):
        return model_output(model(*inputs))
    return model_output(model(inputs))


def example_args(inputs: Any) -> tuple[tuple, dict]:
    """(positional, keyword) arguments of one call, for tracers and exporters."""
    if isinstance(inputs, dict):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    return (inputs,), {}


def split_batch(batch: Any) -> tuple[Any, Any]:
    """A loader's batch as ``(inputs, targets)`` (see the module doc)."""
    if isinstance(batch, dict):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        if key is None:
            raise AutoslimError(
                f"a dict batch needs a 'labels' entry for its targets (keys: {sorted(batch)})"
            )
        return {k: v for k, v in batch.items() if k != key}, batch[key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise AutoslimError(
        f"a batch must be (inputs, targets) or a dict with 'labels', not {type(batch).__name__}"
    )


# --- splits ----------------------------------------------------------------------------


class _Batches:
    """``batches``: a split's loader, each batch as ``(inputs, targets)``."""

    def batches(
        self, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[Any, Any]]:
        for batch in self.loader(batch_size, shuffle=shuffle, seed=seed):
            yield split_batch(batch)


@dataclass(frozen=True)
class Split(_Batches):
    """One data split held in memory as tensors (inputs, targets): the fast path."""

    inputs: Any
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        # A seeded generator makes the shuffling order part of the recipe's determinism.
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        if isinstance(self.inputs, torch.Tensor):
            dataset = TensorDataset(self.inputs, self.targets)
        else:
            dataset = _RowDataset(self.inputs, self.targets)
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)

    def take(self, n: int) -> tuple[Any, torch.Tensor]:
        """The first ``n`` samples (all if fewer) as one batch."""
        return rows(self.inputs, 0, n), self.targets[:n]


class _RowDataset(Dataset):
    """Rows of a tuple or dict of tensors, for a DataLoader."""

    def __init__(self, inputs: Any, targets: torch.Tensor) -> None:
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        return map_tensors(self.inputs, lambda t: t[i]), self.targets[i]


class LoaderSplit(_Batches):
    """A split streamed from a user's ``Dataset`` or ``DataLoader``, batch by batch.

    A ``DataLoader`` keeps its collate function, workers and batch size; autoslim swaps in
    a seeded sampler when it shuffles (training) and reads in order otherwise (a shuffling
    loader would draw from the global generator), so the order is part of a recipe's
    determinism. An ``IterableDataset`` streams as it is: it cannot be shuffled.
    """

    def __init__(self, source: Dataset | DataLoader) -> None:
        if not isinstance(source, (Dataset, DataLoader)):
            raise AutoslimError(
                f"a split must be a Dataset, a DataLoader or (inputs, targets) tensors, "
                f"not {type(source).__name__}"
            )
        self.source = source
        self.dataset = source.dataset if isinstance(source, DataLoader) else source
        self.batch_size = source.batch_size if isinstance(source, DataLoader) else None

    def __len__(self) -> int:
        try:
            return len(self.dataset)
        except TypeError:
            raise AutoslimError("this split streams an IterableDataset of unknown length") from None

    def loader(self, batch_size: int, *, shuffle: bool = False, seed: int = 0) -> DataLoader:
        size = self.batch_size or batch_size
        if isinstance(self.dataset, IterableDataset):
            return (
                self.source
                if isinstance(self.source, DataLoader)
                else DataLoader(self.dataset, batch_size=size)
            )
        if (
            isinstance(self.source, DataLoader)
            and not shuffle
            and self.source.batch_size
            and isinstance(self.source.sampler, SequentialSampler)
        ):
            return self.source  # evaluation reads the user's own loader as it is
        settings = {}
        if isinstance(self.source, DataLoader):
            settings = {
                "collate_fn": self.source.collate_fn,
                "num_workers": self.source.num_workers,
                "pin_memory": self.source.pin_memory,
            }
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(
            self.dataset, batch_size=size, shuffle=shuffle, generator=generator, **settings
        )

    def take(self, n: int) -> tuple[Any, torch.Tensor]:
        """The first ``n`` samples in the split's own order, read batch by batch."""
        inputs, targets, have = [], [], 0
        for x, y in self.batches(min(n, 256)):
            inputs.append(x)
            targets.append(y)
            have += batch_len(x)
            if have >= n:
                break
        if not inputs:
            raise AutoslimError("a data split is empty")
        return rows(concat(inputs), 0, n), concat(targets)[:n]


def as_split(source: Any) -> Split | LoaderSplit:
    """A :class:`Split` for a ``(inputs, targets)`` pair of tensors, else a
    :class:`LoaderSplit` over a Dataset or DataLoader."""
    if isinstance(source, (Split, LoaderSplit)):
        return source
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and isinstance(source[1], torch.Tensor)
    ):
        return Split(source[0], source[1])
    return LoaderSplit(source)


# --- the example a tracer runs ---------------------------------------------------------

# Rows of the example batch that tracers (dependency graphs, exporters) run: two, so a
# batch dimension is never mistaken for a constant of size one.
TRACE_ROWS = 2

_TRACE: ContextVar[Callable[[], Any] | None] = ContextVar("autoslim_trace_example", default=None)


@contextlib.contextmanager
def tracing_example(task: Any) -> Iterator[None]:
    """Within this block, :func:`current_example` gives ``TRACE_ROWS`` rows of the task's
    validation inputs, read on first use (a task without data gives None), so structural
    stages trace the model with real inputs of the real dtype, tuple or dict."""
    cached: list[Any] = []

    def fetch() -> Any:
        if not cached:
            try:
                cached.append(None if task is None else task.example_batch(TRACE_ROWS))
            except AutoslimError:  # a task given as a model factory alone has no data
                cached.append(None)
        return cached[0]

    token = _TRACE.set(fetch)
    try:
        yield
    finally:
        _TRACE.reset(token)


def current_example() -> Any | None:
    """The example inputs of the enclosing :func:`tracing_example`, or None."""
    fetch = _TRACE.get()
    return None if fetch is None else fetch()
