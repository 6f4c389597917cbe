"""Leftovers of killed processes: private baseline copies in a run folder, scratch folders
in the temporary directory.

A process killed with SIGKILL (OOM killer, ``kill -9``, a lost terminal) runs no cleanup:
its ``TemporaryDirectory`` and its private copies stay on disk. Each search start removes
those that can no longer belong to a live process.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

# Scratch folders autoslim creates in the temporary directory: measuring
# (autoslim.measure.runner, the Ray measuring actor), Ray workers without a shared run
# folder, and test-split re-builds (autoslim.searching.outputs).
TEMP_PREFIXES = ("autoslim-measure-", "autoslim-ray-", "autoslim-test-")
# Measuring an artifact takes seconds to minutes. A folder untouched for an hour belongs to
# no live measurement, whoever created it.
STALE_AFTER_S = 3600.0

# A worker's private baseline copy (see measure_baseline), ``.baseline-HOST-PID``, and
# save_artifact's temporary folder for it, ``..baseline-HOST-PID.xxxx``; older run folders
# hold ``.baseline-PID``.
_BASELINE_COPY = re.compile(r"^\.\.?baseline-(?:(?P<host>.+)-)?(?P<pid>\d+)(?:\..*)?$")
# save_artifact's temporary folders (``.trial_N.xxxx``) and the atomic writes' temporaries.
_RUN_TEMPORARY = re.compile(r"^\.(trial_\d+|(run|summary)\.json|(trials|pareto)\.csv)\..+$")


def baseline_copy_name() -> str:
    """The name of this worker's private baseline copy in the run folder."""
    return f".baseline-{socket.gethostname()}-{os.getpid()}"


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (this process included)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_run_files(run_dir: Path, *, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove what killed workers left in ``run_dir``; return what was removed.

    A baseline copy goes when its pid is dead on this host (one of another host goes when
    untouched for ``older_than_s``: its pid means nothing here); a temporary artifact or
    file goes when untouched for ``older_than_s``, since no save takes that long.
    """
    removed: list[Path] = []
    for folder in (run_dir, run_dir / "artifacts"):
        for entry in _entries(folder):
            if _stale_in_run(entry, older_than_s):
                _remove(entry)
                removed.append(entry)
    return removed


def _stale_in_run(entry: Path, older_than_s: float) -> bool:
    match = _BASELINE_COPY.match(entry.name)
    if match and match["host"] in (None, socket.gethostname()):
        return not process_alive(int(match["pid"]))
    if match or _RUN_TEMPORARY.match(entry.name):
        return _age(entry) >= older_than_s
    return False


def remove_stale_temp_dirs(
    *, older_than_s: float = STALE_AFTER_S, root: str | Path | None = None
) -> list[Path]:
    """Remove autoslim's scratch folders that killed processes left in the temporary directory.

    Only folders (never links) whose name starts with one of :data:`TEMP_PREFIXES`, that
    belong to the current user, and in which nothing changed for ``older_than_s`` seconds.
    Returns what was removed.
    """
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    for entry in _entries(root):
        if not entry.name.startswith(TEMP_PREFIXES):
            continue
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        if _age(entry) >= older_than_s:
            _remove(entry)
            removed.append(entry)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder)]
    except OSError:
        return []


def _age(path: Path) -> float:
    """Seconds since anything in ``path`` (the path itself, or anything below it) changed."""
    newest = 0.0
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(parent, name)).st_mtime)
                except OSError:
                    continue
    return time.time() - newest


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
