"""Workers sharing a run folder get distinct sampler-seed slots; a lone worker gets 0."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import socket

from autoslim.searching.slots import release_worker_slot, worker_slot


def slot_file(run_dir, slot: int, owner: str | None = None):
    folder = run_dir / ".workers"
    folder.mkdir(exist_ok=True)
    path = folder / f"slot-{slot}"
    path.write_text(owner if owner is not None else "")
    return path


def test_a_lone_worker_takes_slot_zero_from_a_dead_holder(tmp_path):
    slot_file(tmp_path, 0, f"{socket.gethostname()} 999999999\n")  # its holder died: no lock
    assert worker_slot(tmp_path, shared_server=False) == 0
    assert (
        tmp_path / ".workers" / "slot-0"
    ).read_text() == f"{socket.gethostname()} {os.getpid()}\n"
    release_worker_slot(tmp_path)


def test_a_live_holder_moves_the_next_worker_to_the_next_free_slot(tmp_path):
    held = os.open(slot_file(tmp_path, 0, f"{socket.gethostname()} 1\n"), os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # a live worker holds slot 0
    try:
        assert worker_slot(tmp_path, shared_server=False) == 1
    finally:
        release_worker_slot(tmp_path)
        os.close(held)


def test_another_hosts_slot_is_never_taken_over(tmp_path):
    slot_file(tmp_path, 0, "some-other-host 4242\n")  # its lock may be invisible from here
    assert worker_slot(tmp_path, shared_server=False) == 1
    release_worker_slot(tmp_path)
    assert (tmp_path / ".workers" / "slot-0").read_text() == "some-other-host 4242\n"


def test_a_process_keeps_its_slot_until_it_gives_it_back(tmp_path):
    assert worker_slot(tmp_path, shared_server=False) == 0
    assert worker_slot(tmp_path, shared_server=False) == 0  # asked again: the same slot
    probe = os.open(tmp_path / ".workers" / "slot-0", os.O_RDWR)
    try:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = False
        except BlockingIOError:
            held = True
        assert held
        release_worker_slot(tmp_path)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again: no BlockingIOError
    finally:
        os.close(probe)


def test_a_database_study_mixes_host_and_pid_into_the_slot(tmp_path):
    slot = worker_slot(tmp_path, shared_server=True)
    assert slot >= 1 and slot == worker_slot(tmp_path, shared_server=True)
    release_worker_slot(tmp_path)


def _claim_together(run_dir, start, hold, slots, die: bool) -> None:
    start.wait()  # every worker asks in the same instant
    slots.put(worker_slot(run_dir, shared_server=False))
    slots.close()
    slots.join_thread()  # the queue's feeder thread has written the slot before a SIGKILL
    hold.wait()  # all hold their slots until every one has claimed
    if die:
        os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all


def test_workers_started_in_the_same_instant_get_distinct_slots(tmp_path):
    n = 4
    ctx = multiprocessing.get_context("fork")
    start, hold, slots = ctx.Barrier(n), ctx.Barrier(n), ctx.Queue()
    procs = [
        ctx.Process(target=_claim_together, args=(tmp_path, start, hold, slots, i % 2 == 0))
        for i in range(n)
    ]
    for proc in procs:
        proc.start()
    claimed = sorted(slots.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(timeout=60)
    assert claimed == [0, 1, 2, 3]
    assert sorted(p.exitcode for p in procs) == [-signal.SIGKILL, -signal.SIGKILL, 0, 0]
    # all gone, two of them killed: a lone worker is back on slot 0
    assert worker_slot(tmp_path, shared_server=False) == 0
    release_worker_slot(tmp_path)
