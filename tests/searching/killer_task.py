"""A test task whose first fine-tune step inside a Ray worker kills that worker (SIGKILL).

The marker file makes it happen once, so a retried trial can then finish.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

from autoslim.task import Task, cross_entropy
from autoslim.tasks.digits import make_task as make_digits_task


def make_task(*, marker: str) -> Task:
    def loss(outputs, targets):
        if _in_ray_worker() and not Path(marker).exists():
            Path(marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return cross_entropy(outputs, targets)

    return dataclasses.replace(make_digits_task(width=4, epochs=3), loss=loss)


def _in_ray_worker() -> bool:
    import ray

    return ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
