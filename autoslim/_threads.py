"""The thread count training runs at, fixed so a recipe replays to the same bits."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# CPU reductions split work by thread, so the thread count changes the trained bits; it is
# fixed here (and part of the baseline's cache key) so a recipe replays identically.
TRAIN_THREADS = 2


@contextmanager
def fixed_threads(threads: int = TRAIN_THREADS) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
