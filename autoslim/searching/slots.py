"""Worker slots: which of the workers sharing a run folder this process is.

Workers started beside each other on one study must not draw the same start-up points,
so each offsets its sampler seed by its slot; a lone worker holds slot 0, so a single
search stays reproducible.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import zlib
from pathlib import Path

# Slots this process holds: run folder → (slot, the open slot file whose lock is the claim).
_HELD_SLOTS: dict[Path, tuple[int, int]] = {}


def worker_slot(run_dir: Path, *, shared_server: bool) -> int:
    """0 for the only live worker on this run folder, 1, 2, ... for others started beside it.

    See :func:`claim_slot`. Workers on other machines (a database study) cannot see each
    other's run folders, so there the slot also mixes in the host and pid.
    """
    slot = claim_slot(run_dir / ".workers")
    if shared_server:
        slot += zlib.crc32(f"{socket.gethostname()}-{os.getpid()}".encode()) % 9973 + 1
    return slot


def claim_slot(folder: Path) -> int:
    """The lowest slot that no live process on this run folder holds; held until exit.

    Holding slot N is holding the exclusive ``flock`` on ``folder/slot-N``. Taking a lock
    is atomic, so workers started in the same instant get distinct slots, hence distinct
    sampler seeds (two workers on one seed run the same trials). The kernel drops the
    lock when its holder dies, however it dies: a dead worker's slot is free again at once,
    and a reused pid cannot keep it. The file names the holder's host and pid. A slot file
    of another host is never taken over: its lock may not be visible from here on a
    network filesystem.
    """
    key = folder.resolve()
    if key in _HELD_SLOTS:
        return _HELD_SLOTS[key][0]
    folder.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for slot in itertools.count():
        fd = os.open(folder / f"slot-{slot}", os.O_RDWR | os.O_CREAT, 0o644)
        if _lock_if_free(fd, folder / f"slot-{slot}", host):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{host} {os.getpid()}\n".encode(), 0)
            _HELD_SLOTS[key] = (slot, fd)
            return slot
        os.close(fd)
    raise AssertionError("unreachable: itertools.count() does not end")


def _lock_if_free(fd: int, path: Path, host: str) -> bool:
    """Lock the slot file open at ``fd`` unless a live process (or another host) holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        same_file = os.stat(path).st_ino == os.fstat(fd).st_ino  # not deleted meanwhile
    except FileNotFoundError:
        same_file = False
    owner = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    if same_file and (not owner or owner[0] == host):
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def release_worker_slot(run_dir: Path) -> None:
    """Give this process's slot on ``run_dir`` back (exiting does it too)."""
    held = _HELD_SLOTS.pop((run_dir / ".workers").resolve(), None)
    if held is not None:
        os.close(held[1])
