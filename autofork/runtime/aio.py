"""Coroutines: ``fork(async_fn, ...)`` runs on one shared event loop in a background thread."""

from __future__ import annotations

import threading
from typing import Any, Optional

from .dataflow import start_when_ready
from .errors import Failure
from .task import Task

__all__ = ["EventLoopThread"]


class EventLoopThread:
    """One asyncio loop, run forever by a daemon thread, started on first use."""

    def __init__(self) -> None:
        self._loop: Optional[Any] = None  # asyncio's loop; asyncio is imported on first use
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def _running_loop(self) -> Any:
        loop = self._loop
        if loop is None:
            with self._lock:
                if self._loop is None:
                    import asyncio

                    loop = asyncio.new_event_loop()
                    self._thread = threading.Thread(target=_run, args=(loop,),
                                                    name="autofork-asyncio", daemon=True)
                    self._thread.start()
                    self._loop = loop
                loop = self._loop
        return loop

    def submit(self, task: Task) -> None:
        """Start the coroutine on the loop (once the task's inputs are ready)."""
        start_when_ready(task, self._call_soon)

    def _call_soon(self, task: Task) -> None:
        task.executor = self
        self._running_loop().call_soon_threadsafe(self._begin, task)

    def steal(self, task: Task) -> bool:
        """Never: a coroutine runs on the loop, not in the thread that waits for it."""
        return False

    def _begin(self, task: Task) -> None:
        if not task.claim():
            return
        try:
            coroutine = task.fn(*task.args, **task.kwargs)
        except BaseException as exc:  # noqa: BLE001
            task.set_failure(Failure.local(exc, skip=1))
            return
        import asyncio

        future = asyncio.ensure_future(coroutine)
        future.add_done_callback(lambda done: _settle(task, done))

    def close(self, kill: bool = False) -> None:
        """Stop the loop, after its running coroutines unless ``kill``."""
        loop = self._loop
        if loop is not None:
            if not kill and self._thread is not threading.current_thread():
                import asyncio

                # The coroutines still running finish first, as the pools' calls do.
                asyncio.run_coroutine_threadsafe(_drain(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=1.0)


async def _drain() -> None:
    import asyncio

    me = asyncio.current_task()
    while True:
        others = [task for task in asyncio.all_tasks() if task is not me]
        if not others:
            return
        await asyncio.wait(others)


def _run(loop: Any) -> None:
    try:
        loop.run_forever()
    finally:
        loop.close()  # its selector's file descriptors


def _settle(task: Task, future: Any) -> None:
    if future.cancelled():
        import asyncio

        task.set_failure(Failure.local(asyncio.CancelledError(), skip=0))
        return
    exc = future.exception()
    if exc is None:
        task.set_result(future.result())
    else:
        task.set_failure(Failure.local(exc, skip=0))
