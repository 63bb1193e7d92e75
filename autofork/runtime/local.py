"""The local backend: CPU-bound forks run in worker processes on this machine."""

from __future__ import annotations

from .backend import Backend
from .errors import Failure
from .processes import ProcessPool
from .task import QUEUED, Task

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    """A ``ProcessPool`` of ``workers`` processes."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.pool = ProcessPool(workers)

    def submit(self, task: Task) -> None:
        self.pool.submit(task)

    def cancel(self, task: Task) -> bool:
        if task.state == QUEUED and task.claim():
            from concurrent.futures import CancelledError

            task.set_failure(Failure.local(CancelledError(f"{task.name}() was cancelled"), 0))
            return True
        return False

    def capacity(self) -> int:
        return self.pool.idle()

    def shutdown(self, kill: bool = False) -> None:
        self.pool.close(kill=kill)
