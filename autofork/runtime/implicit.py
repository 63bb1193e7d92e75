"""What rewritten code calls: ``fork`` for a call whose value is used, ``Joiner`` for calls
whose value is thrown away, ``unwrap`` where a result meets ``is``, ``type()`` or ``id()``.

The transformer inserts ``from autofork.runtime import implicit as _autofork_rt`` and::

    x = _autofork_rt.fork(f, a)                  # was: x = f(a)
    with _autofork_rt.Joiner() as _autofork_j1:  # around the outermost loop, try or body
        _autofork_j1.fork(g, b)                  # was: g(b)
    if _autofork_rt.unwrap(x) is None: ...       # was: if x is None: ...

A Joiner keeps sequential meaning: when its block ends, every call forked through it has
finished, and the first failure in call order is raised there, as it would have been
raised sequentially (a note counts the others).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from . import config, engine, stats, worker
from .errors import add_note
from .granularity import _inline, call
from .proxy import ResultProxy, unwrap
from .task import DONE, Task

__all__ = ["fork", "Joiner", "unwrap"]


def fork(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """A rewritten call whose value is used: a lazy proxy, or the value if it ran inline."""
    if fn in _inline:
        # The hot path of a tiny marked function: a plain call, nothing else.
        return fn(*args, **kwargs) if kwargs else fn(*args)
    return call(fn, args, kwargs)


_PRUNE_AT = 1024


class Joiner:
    """Joins the forks whose results were discarded, when its ``with`` block exits."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: list[Task] = []

    def __enter__(self) -> "Joiner":
        return self

    def fork(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Fork a call that is joined at the block's end; returns its proxy (or value)."""
        if fn in _inline:
            return fn(*args, **kwargs) if kwargs else fn(*args)
        result = call(fn, args, kwargs)
        if type(result) is ResultProxy:
            tasks = self._tasks
            tasks.append(result._autofork_task)
            if len(tasks) >= _PRUNE_AT:
                # Keep memory flat in long loops: drop what finished well.
                tasks[:] = [t for t in tasks if t.state != DONE or t.failure is not None]
        return result

    def __exit__(self, kind: Any, value: Any, tb: Any) -> Literal[False]:
        if kind is not None and not issubclass(kind, Exception):
            return False  # KeyboardInterrupt, SystemExit: leave at once
        tasks, self._tasks = self._tasks, []
        failed = []
        for task in tasks:
            task.wait()
            if task.failure is not None:
                task.mark_observed()
                failed.append(task)
        if failed:
            first = failed[0].failure.exception()  # type: ignore[union-attr]
            if len(failed) > 1:
                others = len(failed) - 1
                add_note(first, f"autofork: {others} later forked call"
                                f"{'s' if others > 1 else ''} in the same block failed too")
            raise first
        return False


# Rewritten code imports this module just before it runs: start the workers now, in the
# background, so that its first forks do not wait for them.
if config.enabled() and not worker.IN_WORKER:
    engine.prestart()
