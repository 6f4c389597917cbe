"""Progress bars for long work: training, applying a recipe, rebuilding a report.

Off by default, so library calls and tests stay silent. A command or a search turns it on
for its duration (:func:`showing_progress`); bars then appear on stderr below the search's
own bar, and vanish when done. They never show when stderr is not a terminal (a log
file, CI), nor under ``--quiet``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")

_ENABLED: ContextVar[bool] = ContextVar("autoslim_progress", default=False)


@contextlib.contextmanager
def showing_progress(enabled: bool = True) -> Iterator[None]:
    """Within this block, :func:`progress` draws bars (if stderr is a terminal)."""
    token = _ENABLED.set(enabled)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it"
) -> Iterable[T]:
    """``iterable`` under a transient tqdm bar where progress is on; as is otherwise."""
    if not _ENABLED.get() or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        file=sys.stderr,
        dynamic_ncols=True,
    )
