"""The executor contract: what every pool and engine implements.

An *executor* takes tasks and completes each exactly once (``task.set_result`` or
``task.set_failure``): ``threads.ThreadPool`` (I/O-bound forks), ``aio.EventLoopThread``
(coroutines), and an *engine* for CPU-bound forks: ``processes.ProcessPool`` on this
machine, ``dask_backend.DaskBackend`` on a cluster.  ``engine`` starts them and closes
them; ``api`` and ``granularity`` hand them tasks; a task that somebody waits for asks its
executor (``task.executor``) to ``steal`` it.  A new engine is one module whose class has
these methods, plus one line in ``engine._ENGINES`` (see docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from .errors import Failure
from .task import Task

__all__ = ["Executor", "Engine", "submit_or_fail"]


class Executor(Protocol):
    """Runs tasks somewhere and completes each of them exactly once."""

    def submit(self, task: Task) -> None:
        """Take a new task: run it now, or once the pending proxies among its arguments
        are ready (``dataflow.start_when_ready`` does that for the local pools).

        Raises at once (``NotSendable``, naming the culprit) if the call cannot be sent;
        the task is then not taken.  Sets ``task.executor`` to the executor that holds
        the task while it is queued.
        """

    def steal(self, task: Task) -> bool:
        """Somebody waits for ``task``, still queued here: run it in the calling thread if
        this executor allows that, and say whether it did (the task is then done)."""

    def close(self, kill: bool = False) -> None:
        """Finish the work taken (or, with ``kill``, abandon it, failing its tasks) and
        release the threads, processes or connections."""


class Engine(Executor, Protocol):
    """The executor of CPU-bound forks, which ``granularity`` asks what calls cost."""

    def start(self) -> None:
        """Start the workers now, in the background (the first ``submit`` would)."""

    def ready(self) -> bool:
        """Whether a worker can run a call at once (False while they start: the caller
        then runs calls itself); asking starts the workers if they are not starting."""

    def idle(self) -> int:
        """How many more calls would start right away (idle workers)."""

    def pending(self) -> int:
        """Calls queued or running."""

    def mean_seconds(self, fn: Callable[..., Any]) -> Optional[float]:
        """The measured mean run time of one call of ``fn``, if known."""


def submit_or_fail(submit: Callable[..., None], task: Task) -> None:
    """``submit(task)``, failing the task with what it raises.

    For a task submitted from a callback (its inputs became ready, a chunk was flushed):
    nobody is left to raise to, and the task must still complete exactly once.
    """
    try:
        submit(task)
    except BaseException as exc:  # noqa: BLE001 - e.g. an input that cannot be pickled
        if task.claim():
            task.set_failure(Failure.local(exc, skip=0))
