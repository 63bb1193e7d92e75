"""Dataflow: a call whose arguments hold pending proxies starts when they are ready.

``fork(g, fork(f, x))`` must block neither the caller nor any other call waiting to be
sent, so the arguments are scanned for pending proxies (at the top level, and inside a
plain list, tuple or dict of at most ``_SCAN_LIMIT`` items, two levels deep); the call
waits in state WAITING and is handed to its executor by the callback of its last input.
A failed input fails the call with the input's own failure.  Larger containers are not
scanned: a proxy inside one is sent by value (pickling it waits for it).
"""

from __future__ import annotations

import functools
import threading
from typing import Any, Callable

from .executor import submit_or_fail
from .proxy import ResultProxy
from .task import DONE, QUEUED, WAITING, ChunkItem, Task

__all__ = ["scan", "substitute", "when_ready", "start_when_ready"]

_SCAN_LIMIT = 256
_NOT_FOUND = (False, ())


def _task_of(obj: Any) -> Task | ChunkItem | None:
    return obj._autofork_task if type(obj) is ResultProxy else None


def scan(args: tuple, kwargs: dict) -> tuple[bool, list[Task | ChunkItem]]:
    """(whether any proxy is among the arguments, the tasks of those not ready).

    Not ready: pending, or failed.  A failed input goes through ``when_ready`` too, so
    that it fails the call with its failure whether it failed before the call was made
    or after (it is not raised by the ``fork`` that passes it).
    """
    found: list[Task | ChunkItem] = []
    seen = False
    for value in (*args, *kwargs.values()) if kwargs else args:
        kind = type(value)
        if kind is ResultProxy:
            seen = True
            task = value._autofork_task
            if task.state != DONE or task.failure is not None:
                found.append(task)
        elif kind is list or kind is tuple or kind is dict:
            seen = _scan_container(value, found, 2) or seen
    return seen, found


def _scan_container(container: Any, found: list[Task | ChunkItem], depth: int) -> bool:
    if len(container) > _SCAN_LIMIT or depth == 0:
        return False
    seen = False
    for value in (container.values() if type(container) is dict else container):
        task = _task_of(value)
        if task is not None:
            seen = True
            if task.state != DONE or task.failure is not None:
                found.append(task)
        elif type(value) in (list, tuple, dict):
            seen = _scan_container(value, found, depth - 1) or seen
    return seen


def _resolve(value: Any, depth: int = 2) -> Any:
    task = _task_of(value)
    if task is not None:
        return task.result()
    kind = type(value)
    if depth and kind in (list, tuple, dict) and len(value) <= _SCAN_LIMIT:
        if kind is dict:
            return {key: _resolve(item, depth - 1) for key, item in value.items()}
        return kind(_resolve(item, depth - 1) for item in value)
    return value


def substitute(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The arguments with every (finished) proxy replaced by its value."""
    return (tuple(_resolve(value) for value in args),
            {key: _resolve(value) for key, value in kwargs.items()})


def when_ready(task: Task, inputs: list[Task | ChunkItem], ready: Callable[[Task], None]) -> None:
    """Hold ``task`` until ``inputs`` are done, then call ``ready(task)``, or fail it."""
    task.state = WAITING
    task.inputs = inputs
    remaining = [len(inputs)]
    lock = threading.Lock()

    def input_done(done: Task | ChunkItem) -> None:
        if done.failure is not None:
            if task.claim():
                done.mark_observed()
                task.set_failure(done.failure)
            return
        with lock:
            remaining[0] -= 1
            last = remaining[0] == 0
        if last and task.state == WAITING:
            task.inputs = None
            task.state = QUEUED
            ready(task)

    for source in inputs:
        source.add_done_callback(input_done)


def start_when_ready(task: Task, send: Callable[..., None]) -> None:
    """``send(task)`` now, or once the pending proxies among its arguments are ready.

    Before ``send``, every proxy among the arguments is replaced by its value.  A ``send``
    made later, from the callback of the last input, fails the task if it raises (an
    input that cannot be pickled, say); a ``send`` made now raises to the caller.
    """
    seen, pending = scan(task.args, task.kwargs)
    if pending:
        when_ready(task, pending,
                   functools.partial(submit_or_fail, functools.partial(_send_values, send)))
        return
    if seen:
        task.args, task.kwargs = substitute(task.args, task.kwargs)
    send(task)


def _send_values(send: Callable[..., None], task: Task) -> None:
    task.args, task.kwargs = substitute(task.args, task.kwargs)
    send(task)

