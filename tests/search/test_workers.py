"""Workers sharing a run folder get distinct sampler-seed slots; a lone worker gets 0."""

from __future__ import annotations

import os
import socket

from autoslim.search.local import worker_slot


def test_a_lone_worker_gets_slot_zero_and_dead_registrations_are_swept(tmp_path):
    folder = tmp_path / ".workers"
    folder.mkdir()
    (folder / f"{socket.gethostname()}-999999999").touch()  # no such pid: a dead worker
    assert worker_slot(tmp_path, shared_server=False) == 0
    assert sorted(p.name for p in folder.iterdir()) == [f"{socket.gethostname()}-{os.getpid()}"]


def test_a_live_worker_beside_this_one_moves_it_to_another_slot(tmp_path):
    folder = tmp_path / ".workers"
    folder.mkdir()
    (folder / f"{socket.gethostname()}-1").touch()  # pid 1 is alive and sorts first
    assert worker_slot(tmp_path, shared_server=False) == 1


def test_a_database_study_mixes_host_and_pid_into_the_slot(tmp_path):
    slot = worker_slot(tmp_path, shared_server=True)
    assert slot >= 1 and slot == worker_slot(tmp_path, shared_server=True)
