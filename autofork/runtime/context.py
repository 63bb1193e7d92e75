"""The working directory and environment a call runs in: the caller's, when it forked.

A worker process starts with the directory and environment the program had when the
pool started, which is before the script's first line runs.  The program may change
them later: ``os.chdir(data_dir)`` at its top, ``os.environ["MODE"] = "fast"`` before a
loop, a ``chdir`` per folder in a loop.  A call must see them as they were when it was
made, as it would sequentially.  So, in the calling process, ``install`` wraps
``os.chdir`` and ``os.fchdir`` and the setting and deleting of ``os.environ`` items
(every other change of ``os.environ``, ``update``, ``pop``, ``clear``, ``|=``, goes
through those two), and each change starts a new *generation* with a snapshot of both;
a call records the generation it was made in (``current``: one global read); the pool
sends a worker the snapshot of a call's generation when the worker is in another one
(and with the first call each worker gets), and the worker applies it (``apply``)
before the call.

Not seen: ``os.putenv`` and ``os.unsetenv`` called directly (they do not change
``os.environ`` either, so a sequential ``os.environ`` lookup would not see them),
changes made by C code, and calls on the Dask backend (its workers have their own).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, Optional

__all__ = ["install", "current", "snapshot", "apply"]

Snapshot = tuple[str, dict[str, str]]

_lock = threading.Lock()
_generation = 0
_used = False  # a call was made in the current generation (its snapshot must be kept)
_snapshots: dict[int, Snapshot] = {}
_installed = False


def _take() -> Snapshot:
    try:
        where = os.getcwd()
    except OSError:  # the directory was removed: the workers keep theirs
        where = ""
    return where, dict(os.environ)


def _changed() -> None:
    global _generation, _used
    state = _take()
    with _lock:
        if not _used:
            _snapshots.pop(_generation, None)  # no call needs it
        _generation += 1
        _used = False
        _snapshots[_generation] = state


def _counting(change: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(change)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return change(*args, **kwargs)
        finally:
            _changed()
    return wrapper


def install() -> None:
    """Count the changes of this process's directory and environment (once; idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
        _snapshots[0] = _take()
    for name in ("chdir", "fchdir"):
        if hasattr(os, name):
            setattr(os, name, _counting(getattr(os, name)))
    environ = type(os.environ)
    for name in ("__setitem__", "__delitem__"):
        setattr(environ, name, _counting(getattr(environ, name)))


def current() -> int:
    """The generation a call made now runs in."""
    global _used
    _used = True
    return _generation


def snapshot(generation: int) -> Optional[Snapshot]:
    """(directory, environment) of ``generation``; None if it was never recorded."""
    return _snapshots.get(generation)


def apply(state: Snapshot) -> None:
    """In a worker: take the caller's directory and environment of a call."""
    where, environment = state
    if where:
        try:
            if os.getcwd() != where:
                os.chdir(where)
        except OSError:
            pass  # gone since: the call fails as it would have there
    environ = os.environ
    for key in [key for key in environ if key not in environment]:
        del environ[key]
    for key, value in environment.items():
        if environ.get(key) != value:
            environ[key] = value
