"""The thread pool: I/O-bound forks run in threads of this process.

Threads start on demand, up to the configured number (256 by default, so that 200
concurrent sleeps of 50 ms take about 50 ms), and end after ``_IDLE_SECONDS`` without
work.  A pool thread that waits for a task still queued here, or any thread when the
pool is full, takes that task and runs it itself (``steal``), so forks inside forks
never deadlock on a full pool; otherwise an I/O fork always runs on a pool thread.
"""

from __future__ import annotations

import _thread
import os
import queue
import threading
import time
from typing import Optional

from . import stats
from .dataflow import start_when_ready
from .task import QUEUED, Task

__all__ = ["ThreadPool"]

_IDLE_SECONDS = 5.0


class ThreadPool:
    """Up to ``size`` threads taking tasks from one queue."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._queue: "queue.SimpleQueue[Optional[Task]]" = queue.SimpleQueue()
        # One token per idle thread.  ``list.pop`` and ``append`` are atomic: taking a
        # token costs one C call (a threading.Semaphore took a Condition and its lock, in
        # Python, on every fork and every finished task).
        self._idle: list[None] = []
        self._count = 0
        self._lock = threading.Lock()
        self._closing = False
        self._members: set[int] = set()  # idents of the pool's threads

    def submit(self, task: Task) -> None:
        """Queue ``task`` for a pool thread (once its inputs are ready)."""
        start_when_ready(task, self._put)

    def _put(self, task: Task) -> None:
        task.executor = self
        self._queue.put(task)
        if self._idle:
            try:
                self._idle.pop()
                return
            except IndexError:  # another fork took the last token meanwhile
                pass
        with self._lock:
            if self._count < self.size:
                self._count += 1
                # _thread, not threading.Thread: start() would wait for the new thread to
                # run (a handshake of ~0.1 ms, 20 ms for 200 concurrent sleeps).  The
                # threads are daemonic; the engine waits for their tasks at exit.
                _thread.start_new_thread(self._work, ())

    def steal(self, task: Task) -> bool:
        """Run a queued task in the thread that waits for it, when a pool thread may never
        come for it: the waiter is a pool thread itself (forks inside forks), or the pool
        is full.  Otherwise an I/O fork always runs on a pool thread."""
        if task.state != QUEUED:
            return False
        if _thread.get_ident() not in self._members and self._count < self.size:
            return False
        if task.claim():
            task.run_here()
            return True
        return False

    def close(self, kill: bool = False) -> None:
        """Let the threads end once the tasks queued before are done (``kill`` too: a
        thread cannot be stopped)."""
        self._closing = True
        with self._lock:
            for _ in range(self._count):
                self._queue.put(None)

    def _work(self) -> None:
        me = _thread.get_ident()
        self._members.add(me)
        try:
            self._serve()
        finally:
            self._members.discard(me)

    def _serve(self) -> None:
        get = self._queue.get
        idle = self._idle
        while True:
            try:
                task = get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                # Exit only if this thread's idle token is still there: a submit that took
                # it expects this thread to take the task it queued.
                try:
                    self._idle.pop()
                except IndexError:
                    continue
                with self._lock:
                    self._count -= 1
                return
            if task is None:
                return
            if task.claim():
                if stats.active:
                    began = time.perf_counter()
                    task.run_here()
                    stats.ran(task, "thread", os.getpid(), began, time.perf_counter())
                else:
                    task.run_here()
            del task
            idle.append(None)
