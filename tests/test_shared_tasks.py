"""A task that lives in this process reaches its children, privately, and nobody else."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

from autoslim import shared_tasks
from autoslim.recipe import TaskRef
from autoslim.task import Split, Splits, Task, load_task

ENTRY = f"{shared_tasks.SESSION_MODULE}:here_only"
CHILD = (
    "import sys\nfrom autoslim.recipe import TaskRef\nfrom autoslim.task import load_task\n"
    "from autoslim.errors import AutoslimError\n"
    "try:\n    task = load_task(TaskRef(entry=sys.argv[1]))\n"
    "    print(task.name, sum(p.numel() for p in task.build_model().parameters()))\n"
    "except AutoslimError as exc:\n    print('refused:', exc)\n"
)


class DefinedHere(nn.Module):  # a class a fresh interpreter cannot import by this path
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def forward(self, x):
        return self.layer(x)


def make_task() -> Task:
    split = Split(torch.randn(8, 3), torch.zeros(8, dtype=torch.long))
    return Task(
        name="here_only", build_model=DefinedHere, load_data=lambda: Splits(split, split, split)
    )


def child(env: dict) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, ENTRY], capture_output=True, text=True, env=env
    )
    return done.stdout.strip() or done.stderr.strip()


def test_a_child_gets_the_task_by_value_and_a_stranger_is_refused(monkeypatch):
    monkeypatch.setenv(shared_tasks.SHARED_ENV, "{}")  # restored after the test
    shared_tasks.share_task(ENTRY, make_task())
    paths = json.loads(os.environ[shared_tasks.SHARED_ENV])
    folder = Path(paths[ENTRY]).parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # nobody else reads it
    assert child(dict(os.environ)) == "here_only 8"  # Linear(3, 2): 6 weights + 2 biases
    stranger = {k: v for k, v in os.environ.items() if k != shared_tasks.SHARED_ENV}
    out = child(stranger)
    assert out.startswith("refused:") and "defined in another Python process" in out


def test_this_process_resolves_its_own_task_without_unpickling(monkeypatch):
    monkeypatch.setenv(shared_tasks.SHARED_ENV, "{}")  # restored after the test
    from autoslim.trust import register_task, unregister_task

    task = make_task()
    register_task(ENTRY, lambda: task)
    try:
        assert load_task(TaskRef(entry=ENTRY)) is task
    finally:
        unregister_task(ENTRY)
