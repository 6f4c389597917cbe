"""Tasks that live only in this process, handed to the processes a search starts.

A task handed to :func:`autoslim.compress`, registered with a factory
(:func:`autoslim.register_task`) or defined in a script's ``__main__`` cannot be imported
by a fresh measuring process. So, when a search starts, the task object itself (model,
data sources, metric, loss) is serialised once with cloudpickle, which pickles classes
and functions of ``__main__`` and notebooks by value, into a private folder (mode 0700)
that is removed when this process exits. The children find it through an environment
variable that names, per entry, the file to read.

This is not a way in for untrusted code: only this process writes the files, only for
tasks it already runs, and only its own children read them. Nothing of it reaches a run
folder, a recipe or an artifact; a later process that has neither the task nor an
importable entry is told so in one line (:func:`missing_task_message`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

from autoslim.errors import AutoslimError

SHARED_ENV = "AUTOSLIM_SHARED_TASKS"
# The module name of entries autoslim.compress registers: never an importable module.
SESSION_MODULE = "autoslim_session"

_folder: list[Path] = []


def share_task(entry: str, task: Any) -> None:
    """Make ``task`` loadable under ``entry`` in the processes this one starts from now on."""
    import cloudpickle

    path = _private_folder() / f"{len(_shared_paths())}.pkl"
    for module in _local_modules(task):
        # A fresh interpreter cannot import these (a notebook, a script's folder on the
        # path): their classes and functions travel by value.
        cloudpickle.register_pickle_by_value(module)
    try:
        payload = cloudpickle.dumps(task)
    except Exception as exc:  # noqa: BLE001 — whatever the model holds that cannot travel
        raise AutoslimError(
            f"the task {entry!r} cannot be handed to a measuring process: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        ) from None
    path.write_bytes(payload)
    os.environ[SHARED_ENV] = json.dumps({**_shared_paths(), entry: str(path)})
    _load.cache_clear()


def shared_task(entry: str) -> Any | None:
    """The task a parent process shared under ``entry``, or None."""
    path = _shared_paths().get(entry)
    return None if path is None else _load(path)


def is_shared(entry: str) -> bool:
    """Whether the process that started this one shared a task under ``entry``."""
    return entry in _shared_paths()


def missing_task_message(entry: str) -> str:
    return (
        f"the task {entry!r} was defined in another Python process (a script, a notebook or "
        "autoslim.compress) and cannot be imported here: pass it again from Python "
        "(autoslim.load(path, task=...), autoslim.apply(recipe, task=...)), or name an "
        "importable task entry"
    )


def _local_modules(task: Any) -> set[ModuleType]:
    """Modules defining the task's model layers, datasets and functions that a fresh
    interpreter would not find on its own ``sys.path``."""
    names = {type(m).__module__ for m in task.build_model().modules()}
    for split in ("train", "val", "test"):
        source = getattr(task.data.get(split), "source", None)
        for part in (source, getattr(source, "dataset", None), getattr(source, "collate_fn", None)):
            if part is not None:
                names.add(getattr(part, "__module__", None) or type(part).__module__)
    functions = (task.metric, task.loss, task.train.train_step, task.train.optimizer)
    names |= {getattr(f, "__module__", None) for f in functions if f is not None}
    candidates = sorted(n for n in names - {None, "__main__", "builtins"} if n in sys.modules)
    found = _found_by_fresh_interpreter(tuple(candidates))
    return {sys.modules[n] for n in candidates if n not in found}


@lru_cache(maxsize=8)
def _found_by_fresh_interpreter(names: tuple[str, ...]) -> frozenset[str]:
    """Which module names a new interpreter, started the way measuring processes are
    (the current folder off ``sys.path``), finds without running them."""
    code = (
        "import sys, json, importlib.util\n"
        "if sys.path and sys.path[0] == '': del sys.path[0]\n"
        "def found(n):\n"
        "    try:\n"
        "        return importlib.util.find_spec(n) is not None\n"
        "    except (ImportError, ValueError):\n"
        "        return False\n"
        "print(json.dumps([n for n in sys.argv[1:] if found(n)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *names], capture_output=True, text=True, check=True
    )
    return frozenset(json.loads(out.stdout))


def _shared_paths() -> dict[str, str]:
    try:
        paths = json.loads(os.environ.get(SHARED_ENV, "{}"))
    except json.JSONDecodeError:
        return {}
    return paths if isinstance(paths, dict) else {}


@lru_cache(maxsize=8)
def _load(path: str) -> Any:
    import cloudpickle

    try:
        return cloudpickle.loads(Path(path).read_bytes())
    except OSError:
        raise AutoslimError(f"the task shared by the parent process is gone ({path})") from None


def _private_folder() -> Path:
    if not _folder:
        folder = Path(tempfile.mkdtemp(prefix="autoslim-tasks-"))  # mode 0700
        atexit.register(shutil.rmtree, folder, True)
        _folder.append(folder)
    return _folder[0]
