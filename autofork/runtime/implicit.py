"""What rewritten code calls: ``fork`` for a call whose value is used outside loops,
``Joiner`` for the forks of a loop (or of a ``try``/``with`` body, or of the rest of a
body whose results are thrown away), ``unwrap``/``settle`` where a result meets code
that needs the value.

The transformer inserts ``from autofork.runtime import implicit as _autofork_rt`` and::

    x = _autofork_rt.fork(f, a)                  # was: x = f(a)
    x = _autofork_rt.fork_recursive(f, a)        # was: x = f(a), inside f itself
    with _autofork_rt.Joiner() as _autofork_j1:  # around the outermost loop, try or body
        _autofork_j1.fork(g, b)                  # was: g(b)
        _autofork_j1.into(out).append(_autofork_j1.fork(f, b))   # was: out.append(f(b))
        acc = _autofork_j1.fold(acc, '+=', _autofork_j1.fork(f, b))  # was: acc += f(b)
    if _autofork_rt.unwrap(x) is None: ...       # was: if x is None: ...
    json.dumps(_autofork_rt.unwrap(x))           # was: json.dumps(x)
    xs = _autofork_rt.settle([_autofork_rt.fork(f, i) for i in y])
    _autofork_rt.settle_names('x')               # before a try/with whose body reads x

In a ``try`` or ``with`` body, a name bound from a fork is remembered, so that a failure
leaves it as the sequential program left it (the assignment of a failing call, and every
one after it, never happened)::

    try:  # autofork: names as before a call that failed
        with _autofork_rt.Joiner() as _autofork_j1:
            r = _autofork_j1.bind('r', _autofork_j1.fork(f, b))     # was: r = f(b)
    finally:  # autofork: names as before a call that failed
        if _autofork_j1.rebinds('r'): r = _autofork_j1.was('r')
        if _autofork_j1.unbinds('r'): del r

A Joiner keeps sequential meaning: when its block ends, every call forked through it has
finished, its reductions are applied in call order, the first failure in call order is
raised there, as it would have been raised sequentially (a note counts the others), and
the containers registered with ``into`` hold values in place of proxies.  When it raises
a failure, the entries those containers got from that call and from the calls after it
are taken out again (``settle.trim``), and ``rebinds``/``was``/``unbinds`` tell the
rewritten code what each name ``bind`` saw must hold again.
"""

from __future__ import annotations

import builtins
import sys
from typing import Any, Callable, Literal, Optional

from . import config, engine, output
from .errors import add_note
from .folds import Folds
from .granularity import UNSCANNED, call, running_inline, running_serial
from .proxy import ResultProxy, unwrap
from .settle import settle, settle_names, trim
from .task import DONE, stop_before_read, stopped_at

__all__ = ["fork", "fork_recursive", "Joiner", "unwrap", "settle", "settle_names"]


def _wrap_input() -> None:
    """``input`` of a rewritten program: its prompt would be queued behind the forks still
    running (and behind a failed one, for good), so it first waits for them and raises
    the failure of the first that failed (``task.stop_before_read``): the sequential
    program failed there before it prompted.  Nothing queued: the plain ``input``."""
    plain = builtins.input
    if getattr(plain, "_autofork_plain", None) is not None:
        return

    def input(prompt: object = "", /) -> str:  # noqa: A001 - stands in for the builtin
        if output.held():
            stop_before_read()
        return plain(prompt)

    input.__doc__ = plain.__doc__
    input._autofork_plain = plain  # type: ignore[attr-defined]
    builtins.input = input


_wrap_input()


def fork(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """A rewritten call whose value is used: a lazy proxy, or the value if it ran inline."""
    if fn in running_inline:
        # The hot path of a tiny marked function: a plain call, nothing else.
        return fn(*args, **kwargs) if kwargs else fn(*args)
    chain = running_serial.get(fn)
    if chain is not None and chain.countdown > 1 and not kwargs:
        for arg in args:  # (a loop costs less here than isdisjoint(map(type, args)))
            if type(arg) in UNSCANNED:
                break
        else:
            chain.countdown -= 1  # the hot path of a chain (granularity.running_serial)
            return fn(*args)
    return call(fn, args, kwargs)


def fork_recursive(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """``fork`` at a call site inside ``fn`` itself: the rewriter saw the recursion."""
    if fn in running_inline:
        return fn(*args, **kwargs) if kwargs else fn(*args)
    return call(fn, args, kwargs, True)


_PRUNE_AT = 1024
_NOTHING: Any = object()


class Joiner:
    """A loop's (or a body's) forks, finished when its ``with`` block exits.

    At the exit, in this order: every fork started through it has finished; the
    reductions it deferred are applied in call order; the first failure in call order
    (of a fork, or of a reduction step) is raised, with a note counting the others; the
    containers registered with ``into`` hold values instead of proxies (``settle``).
    """

    __slots__ = ("_tasks", "_count", "_containers", "_folds", "_bound", "_rewind")

    def __init__(self) -> None:
        self._tasks: list[tuple[int, Any]] = []  # (position in call order, task)
        self._count = 0
        self._containers: Optional[dict[int, Any]] = None
        self._folds: Optional[Folds] = None
        # (forks made before it, name, what the name held) of each ``bind``; after a
        # failure, {name: what it must hold again (_UNBOUND: nothing)}.
        self._bound: Optional[list[tuple[int, str, Any]]] = None
        self._rewind: Optional[dict[str, Any]] = None

    def __enter__(self) -> "Joiner":
        return self

    def fork(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Fork a call that is joined at the block's end; returns its proxy (or value)."""
        if fn in running_inline:
            return fn(*args, **kwargs) if kwargs else fn(*args)
        chain = running_serial.get(fn)
        if chain is not None and chain.countdown > 1 and not kwargs:
            for arg in args:
                if type(arg) in UNSCANNED:
                    break
            else:
                chain.countdown -= 1  # as in the module's fork
                return fn(*args)
        return self._join(call(fn, args, kwargs))

    def fork_recursive(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """``fork`` at a call site inside ``fn`` itself (see the module's ``fork_recursive``)."""
        if fn in running_inline:
            return fn(*args, **kwargs) if kwargs else fn(*args)
        return self._join(call(fn, args, kwargs, True))

    def _join(self, result: Any) -> Any:
        if type(result) is ResultProxy:
            tasks = self._tasks
            tasks.append((self._count, result._autofork_task))
            self._count += 1
            if len(tasks) >= _PRUNE_AT:
                # Keep memory flat in long loops: drop what finished well.
                tasks[:] = [e for e in tasks if e[1].state != DONE or e[1].failure is not None]
        return result

    def into(self, container: Any, value: Any = _NOTHING) -> Any:
        """Register ``container`` to be settled at the exit; ``value`` if given, else it."""
        containers = self._containers
        if containers is None:
            containers = self._containers = {}
        containers[id(container)] = container  # holding it keeps the id unique
        return container if value is _NOTHING else value

    def fold(self, acc: Any, op: str, value: Any) -> Any:
        """``acc op value`` (``"+="``, ``"+"``...) applied in call order: ``acc`` itself
        for an in-place step, else a proxy of the new value."""
        return self._reductions().fold(acc, op, value, self._count)

    def then(self, method: Callable[[Any], Any], value: Any) -> None:
        """``method(value)`` (``acc.update(v)``) applied in call order."""
        self._reductions().then(method, value, self._count)

    def bind(self, name: str, value: Any) -> Any:
        """``value``, about to be bound to the caller's ``name`` in the block: what the
        name holds now is kept, for a failure of a call made before the binding."""
        bound = self._bound
        if bound is None:
            bound = self._bound = []
        elif len(bound) >= _PRUNE_AT:
            low = self._earliest_failure()
            if bound[0][0] <= low:   # keep memory flat: no failure can come before low
                bound[:] = [entry for entry in bound if entry[0] > low]
        bound.append((self._count, name, _lookup(sys._getframe(1), name)))
        return value

    def inner(self, *names: str) -> "Joiner":
        """A new Joiner for a loop in this block that binds ``names``: what they hold now
        is kept, for a failure of a call of this block made before the loop."""
        frame = sys._getframe(1)
        bound = self._bound
        if bound is None:
            bound = self._bound = []
        for name in names:
            bound.append((self._count, name, _lookup(frame, name)))
        return Joiner()

    def _earliest_failure(self) -> int:
        """No failure of the block (a fork's, or a reduction step's) can come before
        this many forks: a binding made before them is never undone."""
        low = self._count
        for position, task in self._tasks:
            if task.state != DONE or task.failure is not None:
                low = position
                break
        folds = self._folds
        return low if folds is None else min(low, folds.earliest(low))

    def rebinds(self, name: str) -> bool:
        """After the block raised a failure: whether ``name`` must hold ``was(name)``."""
        rewind = self._rewind
        return rewind is not None and rewind.get(name, _UNBOUND) is not _UNBOUND

    def was(self, name: str) -> Any:
        """What ``name`` held before the failing call's binding (``rebinds`` said so)."""
        assert self._rewind is not None
        return self._rewind.pop(name)

    def unbinds(self, name: str) -> bool:
        """After the block raised a failure: whether ``name``, unbound before the failing
        call's binding and bound now, must be deleted."""
        rewind = self._rewind
        if rewind is None or name not in rewind or rewind[name] is not _UNBOUND:
            return False
        del rewind[name]
        return _lookup(sys._getframe(1), name) is not _UNBOUND

    def _reductions(self) -> Folds:
        folds = self._folds
        if folds is None:
            folds = self._folds = Folds()
        return folds

    def __exit__(self, kind: Any, value: Any, tb: Any) -> Literal[False]:
        if kind is not None and not issubclass(kind, Exception):
            return False  # KeyboardInterrupt, SystemExit: leave at once
        failed = _finish(self._tasks, value)
        self._tasks = []
        folds = self._folds
        if folds is not None:
            folds.drain(block=True)
            if folds.failure is not None:
                # After failed_at forks, before the next: between fork positions.
                failed.append((2 * folds.failed_at, folds.failure, -1))
                failed.sort(key=_first)
        bound, self._bound = self._bound, None
        if failed:
            if bound:
                self._rewind = _rewind(bound, failed[0][0])
            if self._containers and failed[0][2] >= 0:
                for container in self._containers.values():
                    trim(container, failed[0][2])
                self._containers = None
            _raise_first(failed, value)  # (returns when that failure is leaving already)
        if kind is None and self._containers:
            for container in self._containers.values():
                settle(container)
        self._containers = None
        return False


def _rewind(bound: list[tuple[int, str, Any]], failed_at: int) -> dict[str, Any]:
    """{name: what it held before the first binding made after the failure}.

    ``failed_at``: 2 * position + 1 of a failed fork, 2 * forks-before of a failed
    reduction step; a binding after ``count`` forks came after it when 2 * count is more.
    """
    rewind: dict[str, Any] = {}
    for count, name, held in bound:
        if 2 * count > failed_at and name not in rewind:
            rewind[name] = held
    return rewind


_UNBOUND: Any = object()
_CO_OPTIMIZED = 0x1   # a function's frame: its locals are fast locals, not a dict


def _lookup(frame: Any, name: str) -> Any:
    """What ``name`` holds in ``frame`` as the rewritten code there sees it (_UNBOUND: nothing)."""
    code = frame.f_code
    if code.co_flags & _CO_OPTIMIZED and not (
            name in code.co_varnames or name in code.co_cellvars or name in code.co_freevars):
        return frame.f_globals.get(name, _UNBOUND)   # a global of a function
    return frame.f_locals.get(name, _UNBOUND)  # module and class namespaces are dicts


def _first(entry: tuple[int, Any, int]) -> int:
    return entry[0]


def _finish(tasks: list[tuple[int, Any]], leaving: Optional[BaseException] = None,
            ) -> list[tuple[int, BaseException, int]]:
    """Wait for the tasks in call order up to the first that failed; (2 * position + 1,
    exception, output seq) of it and of the later ones that have failed already.  The
    exception is ``leaving`` (what leaves the block) when that is the failure's own.

    The calls after the first failure were never made by the sequential program, which
    stopped there: they are not waited for (``stopped_at`` drops what they print and
    cancels those not begun)."""
    failed = []
    for index, (position, task) in enumerate(tasks):
        task.wait()
        if task.failure is not None:
            for later_position, later in tasks[index:]:
                if later.state == DONE and later.failure is not None:
                    later.mark_observed()
                    later.failure.raised = True  # (see Failure.raised)
                    failure = later.failure
                    exc = (leaving if leaving is not None and failure.last is leaving
                           else failure.exception())
                    failure.last = None  # (no cycle through the traceback's frames)
                    failed.append((2 * later_position + 1, exc, later.seq))
                elif later.state != DONE:  # its failure, if any, is this block's: not lost
                    later.add_done_callback(_observe)
            break
    return failed


def _observe(task: Any) -> None:
    task.mark_observed()
    failure = task.failure
    if failure is not None:   # a call after the one raised: never made sequentially
        failure.raised = True  # (see Failure.raised)


def _raise_first(failed: list[tuple[int, BaseException, int]],
                 leaving: Optional[BaseException] = None) -> None:
    """Raise the first failure; if it is ``leaving`` (the body used the failed value),
    return instead: it goes on as it is, as it did sequentially."""
    first = failed[0][1]
    stopped_at(failed[0][2])  # what came after it never happened sequentially
    if len(failed) > 1:
        others = len(failed) - 1
        add_note(first, f"autofork: {others} later forked call"
                        f"{'s' if others > 1 else ''} in the same block failed too")
    if first is not leaving:
        raise first


# Rewritten code imports this module just before it runs: start the workers now, in the
# background, so that its first forks do not wait for them.
if config.enabled() and not config.IN_WORKER:
    engine.prestart()
