"""The explicit API: fork, evaluate, evaluate_all, wait, as_completed, scope."""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator, Literal,
                    NamedTuple, Optional, TypeVar, overload)

from . import config, engine, output, stats
from . import lazy  # noqa: F401 - adds the lazy arithmetic operators to ResultProxy
from .errors import add_note, call_site
from .marks import kind_of
from .proxy import ResultProxy, new_proxy, unwrap
from .task import DONE, Task, track, untrack

from typing import ParamSpec

if TYPE_CHECKING:  # annotations only: typeguard would check the protocol on every fork
    from .executor import Executor

__all__ = ["fork", "evaluate", "evaluate_all", "wait", "as_completed", "scope",
           "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "DoneAndNotDone"]

P = ParamSpec("P")
R = TypeVar("R")

# The values of concurrent.futures (not imported: it costs 8 ms at import).
FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"

_GENERATOR_FLAGS = 0x20 | 0x200  # CO_GENERATOR | CO_ASYNC_GENERATOR
_scope: contextvars.ContextVar[Optional[list[Task]]] = contextvars.ContextVar(
    "autofork_scope", default=None)


@overload
def fork(fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
@overload
def fork(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
def fork(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:  # noqa: E301
    """Start ``fn(*args, **kwargs)`` in the background and return a lazy proxy at once.

    CPU-bound functions (the default) run in a worker process, ``@io_bound`` ones in a
    thread, ``async def`` ones on a shared event loop; ``@unsafe`` ones run inline and
    their value is returned.  With ``AUTOFORK=0`` every call runs inline.  The proxy acts
    like the value and waits for it only when the value is used.
    """
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & _GENERATOR_FLAGS:
        raise TypeError(f"fork({fn.__qualname__}): {fn.__qualname__} is a generator function; "
                        "its values are produced lazily and cannot be forked. Fork a function "
                        "that returns a list instead.")
    kind = kind_of(fn)
    if kind == "unsafe" or kind == "cpu" and config.IN_WORKER:
        return fn(*args, **kwargs)
    if not config.enabled():
        return _inline(fn, args, kwargs, kind)
    if not callable(fn):
        raise TypeError(f"fork() needs a callable first argument, got {fn!r}")
    return new_proxy(start(fn, args, kwargs, kind))


def _inline(fn: Callable[..., Any], args: tuple, kwargs: dict, kind: str) -> Any:
    """``AUTOFORK=0``: the call's value, as a sequential program gets it.

    A coroutine function's value is its coroutine's result, run to completion here
    (``asyncio.run``), as ``evaluate`` of its proxy would give it; inside a running
    event loop that cannot block, so the coroutine itself is returned, to be awaited
    as the proxy would have been.
    """
    value = fn(*args, **kwargs)
    if kind != "async":
        return value
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(value)
    return value


def start(fn: Callable[..., Any], args: tuple, kwargs: dict, kind: str) -> Task:
    """Create the task for a call, hand it to its executor (which holds it until its
    inputs are ready), and return it."""
    task = Task(fn, args, kwargs, kind, call_site())
    if kind != "async":  # a coroutine's writes go out as they happen, as in asyncio
        task.seq = output.begin()
    track(task)  # before submit: a task may be done when submit returns
    try:
        _executor(kind).submit(task)
    except BaseException:
        untrack(task)  # not started: an argument that cannot be sent, say
        if task.seq >= 0:
            output.end(task.seq, None)
        raise
    if stats.active:
        stats.forked(task)
    tasks = _scope.get()
    if tasks is not None:
        tasks.append(task)
    return task


def _executor(kind: str) -> Executor:
    if kind == "io":
        return engine.threads()
    if kind == "async":
        return engine.event_loop()
    return engine.backend()


# -- getting values -------------------------------------------------------------------

def evaluate(x: Any) -> Any:
    """The real value of a proxy (waiting for it, re-raising its exception); any other
    object as it is."""
    return unwrap(x)


def evaluate_all(iterable: Iterable[Any]) -> list[Any]:
    """``[evaluate(x) for x in iterable]``."""
    return [unwrap(x) for x in iterable]


class DoneAndNotDone(NamedTuple):
    """What ``wait`` returns: lists (a proxy's hash is its value's, so no sets)."""

    done: list
    not_done: list


def _task_of(x: Any) -> Optional[Task]:
    return x._autofork_task if type(x) is ResultProxy else None


def wait(proxies: Iterable[Any], timeout: Optional[float] = None,
         return_when: str = ALL_COMPLETED) -> DoneAndNotDone:
    """Wait as ``concurrent.futures.wait`` does, for proxies (other objects count as done)."""
    items = list(proxies)
    condition = threading.Condition()

    def reached() -> bool:
        states = [_task_of(x) for x in items]
        finished = [t for t in states if t is None or t.state == DONE]
        if return_when == FIRST_COMPLETED:
            return bool(finished) or not items
        if return_when == FIRST_EXCEPTION and any(
                t is not None and t.state == DONE and t.failure is not None for t in states):
            return True
        return len(finished) == len(items)

    def notify(_: Task) -> None:
        with condition:
            condition.notify_all()

    for item in items:
        task = _task_of(item)
        if task is not None and task.state != DONE:
            task.add_done_callback(notify)
    with condition:
        condition.wait_for(reached, timeout)
    done = [x for x in items if (_task_of(x) or _DONE_TASK).state == DONE]
    not_done = [x for x in items if (_task_of(x) or _DONE_TASK).state != DONE]
    return DoneAndNotDone(done, not_done)


class _Done:
    state = DONE


_DONE_TASK = _Done()


def _put(queue: Any, item: Any, _: Any) -> None:
    queue.put(item)


def as_completed(proxies: Iterable[Any], timeout: Optional[float] = None) -> Iterator[Any]:
    """Yield the proxies as their calls finish, as ``concurrent.futures.as_completed``."""
    import queue
    import time

    items = list(proxies)
    finished: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
    for item in items:
        task = _task_of(item)
        if task is None:
            finished.put(item)
        else:
            task.add_done_callback(functools.partial(_put, finished, item))
    deadline = None if timeout is None else time.monotonic() + timeout
    for count in range(len(items)):
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            yield finished.get(timeout=remaining)
        except queue.Empty:
            raise TimeoutError(f"{len(items) - count} (of {len(items)}) forks did not finish "
                               f"within {timeout} s") from None


# -- scope ------------------------------------------------------------------------------

class scope:
    """Every fork started inside the block is finished when it exits.

    Used as ``with scope():`` or as a decorator.  A failure of a fork inside is raised at
    the exit (several: an ``ExceptionGroup``); if the block itself raised, its exception
    goes on, with a note about the forks that failed too.
    """

    def __init__(self) -> None:
        self._tokens: list[tuple[contextvars.Token, list[Task]]] = []

    def __enter__(self) -> "scope":
        tasks: list[Task] = []
        self._tokens.append((_scope.set(tasks), tasks))
        return self

    def __exit__(self, kind: Any, value: Any, tb: Any) -> Literal[False]:
        token, tasks = self._tokens.pop()
        _scope.reset(token)
        if kind is not None and not issubclass(kind, Exception):
            return False  # KeyboardInterrupt, SystemExit: leave at once
        failures = _join(tasks)
        if not failures:
            return False
        if value is not None:
            add_note(value, _count_note(len(failures), "also failed"))
            return False
        if len(failures) == 1:
            raise failures[0]
        raise _group(failures)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def scoped(*args: Any, **kwargs: Any) -> Any:
            with scope():
                return fn(*args, **kwargs)

        return scoped  # type: ignore[return-value]


def _join(tasks: list[Task]) -> list[BaseException]:
    """Wait for every task; their failures in call order (each marked as seen)."""
    failures = []
    for task in tasks:
        task.wait()
        if task.failure is not None:
            task.mark_observed()
            failures.append(task.failure.exception())
    return failures


def _count_note(count: int, what: str) -> str:
    calls = "call" if count == 1 else "calls"
    return f"autofork: {count} forked {calls} {what}"


def _group(failures: list[BaseException]) -> BaseException:
    try:
        group = ExceptionGroup  # type: ignore[name-defined]  # noqa: F821
    except NameError:  # Python 3.10: the first failure, the others counted in a note
        first = failures[0]
        add_note(first, _count_note(len(failures) - 1, "failed as well"))
        return first
    if all(isinstance(f, Exception) for f in failures):
        return group("several forked calls failed", failures)  # type: ignore[type-var]
    return BaseExceptionGroup("several forked calls failed", failures)  # type: ignore[name-defined,type-var]  # noqa: F821
