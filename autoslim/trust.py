"""Which task code autoslim may run: a recipe is data, and naming code does not trust it.

A recipe, an experiment or an artifact names its task as ``package.module:function``.
Importing that module and calling that function runs code, so, as with Hugging Face's
``trust_remote_code``, autoslim only resolves entries the user has trusted:

- the tasks bundled with autoslim;
- tasks that installed packages declare in the ``autoslim.tasks`` entry-point group
  (installing a package is trusting it);
- entries registered in this process with :func:`register_task`, optionally with the
  factory itself, so a task defined in a notebook or script needs no import at all;
- entries trusted for one command or call: ``--trust-task`` on the command line,
  ``trust_task=True`` in Python, or the ``AUTOSLIM_TRUST_TASKS`` environment variable
  (comma-separated entries, or ``*`` for all), which is also how trust reaches the
  measuring processes and Ray workers a search starts.

Anything else is refused with one line before a module is imported. autoslim never puts
the current folder or an artifact's folder on ``sys.path``, so a module shipped beside a
recipe cannot stand in for a trusted one.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from autoslim.errors import AutoslimError

TRUST_ENV = "AUTOSLIM_TRUST_TASKS"
TRUST_ALL = "*"
ENTRY_POINT_GROUP = "autoslim.tasks"
BUNDLED_TASKS = frozenset(
    {
        "autoslim.tasks.digits:make_task",
        "autoslim.tasks.mnist1d:make_task",
        "autoslim.tasks.minilm:make_task",
        "autoslim.tasks.mlp:make_task",
    }
)

_registered: dict[str, Callable[..., Any] | None] = {}


def register_task(entry: str, factory: Callable[..., Any] | None = None) -> None:
    """Trust ``entry`` (``module:function``) in this process.

    With ``factory``, autoslim calls it for that entry instead of importing anything, so
    a task defined in a notebook or a script works; without, the entry is imported as
    usual. The measuring processes autoslim starts inherit the trust
    (:func:`child_environment`) for entries that they can import.
    """
    _check_form(entry)
    if factory is not None and not callable(factory):
        raise AutoslimError(f"register_task({entry!r}): the factory is not callable")
    _registered[entry] = factory


def registered_factory(entry: str) -> Callable[..., Any] | None:
    """The factory registered for ``entry`` in this process, if any."""
    return _registered.get(entry)


def is_local_entry(entry: str) -> bool:
    """Whether ``entry`` can only be resolved in the process that defined it: a task of
    ``autoslim.compress``, of a script's ``__main__``, or registered with a factory."""
    from autoslim.shared_tasks import SESSION_MODULE

    module = entry.partition(":")[0]
    return module in ("__main__", SESSION_MODULE) or registered_factory(entry) is not None


def unregister_task(entry: str) -> None:
    """Forget a :func:`register_task` (tests, notebooks re-running a cell)."""
    _registered.pop(entry, None)


@lru_cache(maxsize=1)
def _entry_point_tasks() -> frozenset[str]:
    """``module:function`` values of installed packages' ``autoslim.tasks`` entry points."""
    return frozenset(ep.value.replace(" ", "") for ep in entry_points(group=ENTRY_POINT_GROUP))


def _env_entries() -> set[str]:
    return {part.strip() for part in os.environ.get(TRUST_ENV, "").split(",") if part.strip()}


def is_trusted(entry: str) -> bool:
    """Whether resolving ``entry`` may import and call its code."""
    from autoslim.shared_tasks import is_shared

    env = _env_entries()
    return (
        entry in BUNDLED_TASKS
        or entry in _registered
        or is_shared(entry)  # handed over by the process that started this one
        or TRUST_ALL in env
        or entry in env
        or entry in _entry_point_tasks()
    )


def _joined(entries: set[str]) -> str:
    return TRUST_ALL if TRUST_ALL in entries else ",".join(sorted(entries))


def _export_to_children(*entries: str) -> None:
    """Add entries to the trust variable, which child processes inherit."""
    os.environ[TRUST_ENV] = _joined(_env_entries() | set(entries))


def child_environment() -> dict[str, str]:
    """The trust variable for a process autoslim starts: what this process trusts through
    the variable plus what it registered (the child imports those entries itself)."""
    entries = _env_entries() | set(_registered)
    return {TRUST_ENV: _joined(entries)} if entries else {}


@contextlib.contextmanager
def trusted(entries: Iterable[str] | bool = True) -> Iterator[None]:
    """Trust ``entries`` (``True``: every entry) for the duration, in this process and in
    the processes it starts; the previous trust comes back afterwards."""
    if entries is False:
        yield
        return
    before = os.environ.get(TRUST_ENV)
    _export_to_children(*([TRUST_ALL] if entries is True else list(entries)))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = before


def _check_form(entry: str) -> tuple[str, str]:
    module, sep, function = str(entry).partition(":")
    if not sep or not module or not function:
        raise AutoslimError(f"task entry {entry!r} is not of the form package.module:function")
    return module, function


def untrusted_message(entry: str) -> str:
    module, _ = _check_form(entry)
    return (
        f"task entry {entry!r} is not trusted: autoslim would import and run module {module!r}; "
        "if you trust it, pass --trust-task (Python: trust_task=True) or register it "
        "(autoslim.register_task, or the 'autoslim.tasks' entry-point group)"
    )


def require_trusted(entry: str) -> None:
    """Refuse an untrusted entry now, before a process is started to resolve it."""
    from autoslim.shared_tasks import SESSION_MODULE, is_shared, missing_task_message

    module, function = _check_form(entry)
    elsewhere = module == SESSION_MODULE or (module == "__main__" and not _main_defines(function))
    if elsewhere and _registered.get(entry) is None and not is_shared(entry):
        raise AutoslimError(missing_task_message(entry))
    if not is_trusted(entry):
        raise AutoslimError(untrusted_message(entry))


def resolve_factory(entry: str) -> Callable[..., Any]:
    """The callable behind a trusted entry; an untrusted one is refused before any import."""
    module_name, function = _check_form(entry)
    if _registered.get(entry) is not None:
        return _registered[entry]
    require_trusted(entry)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AutoslimError(f"cannot import task module {module_name!r}: {exc}") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise AutoslimError(f"task entry {entry!r}: {module_name} has no function {function!r}")
    return factory


def _main_defines(function: str) -> bool:
    """Whether this process's ``__main__`` (a script, a notebook) defines ``function``."""
    import sys

    return callable(getattr(sys.modules.get("__main__"), function, None))
