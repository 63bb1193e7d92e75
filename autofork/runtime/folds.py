"""Reductions in call order: ``acc += f(x)`` in a loop that does not otherwise read ``acc``.

``Counter.__iadd__`` (like ``dict.update``, ``list.extend`` and every in-place operator
written in C) reads its operand at once, so ``total += fork(f, x)`` would wait for each
result in turn.  Instead the rewriter hands the step to the loop's Joiner, which records
it here and returns at once; the steps are applied in call order, in the thread that
runs the loop, as their values arrive (checked at each new step) and at the loop's end.

Two kinds of step:

* in place: ``acc += v`` where ``type(acc)`` has the in-place method (``__iadd__``,
  ``__ior__``, ...), and ``acc.update(v)``-like method calls: the step is recorded and
  ``acc`` itself is returned, so the name keeps the very same object, changed later;
* new value: ``acc = acc + v``, or ``acc += v`` on an immutable ``acc`` (an ``int``, a
  ``str``): the step returns a proxy of the new value, a task that this queue completes
  when it applies the step.  A thread that waits for such a proxy applies the steps up
  to it itself (``steal``), so nobody waits for the loop.

Invariants: steps are applied strictly in the order they were recorded, each once, under
``_lock``; a step whose operand failed stops the queue (sequentially the loop ended
there): it and the steps after it are not applied.  The proxy of such a new-value step
is the accumulator as it was before the step, as the name holds after the exception in
the sequential program (``total`` is the sum of the calls before the failing one, for a
program that catches the exception around the loop and goes on); it fails only if that
value itself failed.
"""

from __future__ import annotations

import operator
import threading
from collections import deque
from typing import Any, Callable, Optional, no_type_check

from .errors import AutoforkWarning, Failure
from .proxy import ResultProxy, new_proxy, unwrap
from .task import DONE, QUEUED, Task

__all__ = ["Folds", "IN_PLACE", "BINARY"]

# The in-place method a type must define for ``acc op= v`` to change ``acc`` itself.
IN_PLACE: dict[str, tuple[str, Callable[[Any, Any], Any]]] = {
    "+=": ("__iadd__", operator.iadd), "-=": ("__isub__", operator.isub),
    "*=": ("__imul__", operator.imul), "/=": ("__itruediv__", operator.itruediv),
    "//=": ("__ifloordiv__", operator.ifloordiv), "%=": ("__imod__", operator.imod),
    "**=": ("__ipow__", operator.ipow), "@=": ("__imatmul__", operator.imatmul),
    "<<=": ("__ilshift__", operator.ilshift), ">>=": ("__irshift__", operator.irshift),
    "&=": ("__iand__", operator.iand), "|=": ("__ior__", operator.ior),
    "^=": ("__ixor__", operator.ixor),
}
BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "//": operator.floordiv, "%": operator.mod, "**": operator.pow, "@": operator.matmul,
    "<<": operator.lshift, ">>": operator.rshift, "&": operator.and_, "|": operator.or_,
    "^": operator.xor,
}


class _Step:
    """One recorded step: ``apply(value)``, and the task of its result (new-value steps)."""

    __slots__ = ("apply", "acc", "value", "task", "position", "same")

    def __init__(self, apply: Callable[..., Any], acc: Any, value: Any, task: Optional[Task],
                 position: int, same: Any) -> None:
        self.apply = apply        # apply(acc, value) -> the step's result
        self.acc = acc            # the left operand (a proxy for a chained new-value step)
        self.value = value        # the right operand, often a proxy
        self.task = task          # completed with the new value (None: in place)
        self.position = position  # how many forks of the loop came before the step
        self.same = same          # in place: the object the step must return (else None)


@no_type_check  # typeguard would read a proxy's __class__, which waits
def _ready(obj: Any) -> bool:
    return type(obj) is not ResultProxy or obj._autofork_task.state == DONE


class Folds:
    """The steps of one loop's reductions, applied in call order."""

    __slots__ = ("_steps", "_lock", "stopped", "failure", "failed_at", "__weakref__")

    def __init__(self) -> None:
        self._steps: deque[_Step] = deque()
        self._lock = threading.Lock()
        self.stopped: Optional[BaseException] = None  # why no further step is applied
        self.failure: Optional[BaseException] = None  # a step's own failure (not a fork's),
        self.failed_at = -1                           # and the number of forks before it

    @no_type_check
    def fold(self, acc: Any, op: str, value: Any, position: int) -> Any:
        """``acc op value`` (``op`` as written: ``"+="`` or ``"+"``), in call order."""
        in_place = IN_PLACE.get(op)
        if in_place is not None and type(acc) is not ResultProxy and hasattr(type(acc), in_place[0]):
            return self._record(in_place[1], acc, value, None, position, acc)
        function = in_place[1] if in_place is not None else BINARY[op]
        if not self._steps and _ready(acc) and _ready(value) and self.stopped is None:
            return function(unwrap(acc), unwrap(value))  # nothing pending: as plain code
        task = Task(function, (), {}, "lazy")  # completed by _apply, never submitted
        task.executor = self
        self._record(function, acc, value, task, position, None)
        return new_proxy(task)

    @no_type_check
    def then(self, method: Callable[[Any], Any], value: Any, position: int) -> None:
        """``method(value)`` (``acc.update(v)``), in call order."""
        self._record(_call, method, value, None, position, None)

    @no_type_check
    def _record(self, apply: Callable[..., Any], acc: Any, value: Any, task: Optional[Task],
                position: int, same: Any) -> Any:
        if not self._steps and self.stopped is None and _ready(value) and task is None:
            _check(apply(acc, unwrap(value)), same)  # nothing pending: as plain code
            return acc
        self._steps.append(_Step(apply, acc, value, task, position, same))
        self.drain(block=False)
        return acc

    @no_type_check
    def earliest(self, default: int) -> int:
        """How many forks came before the first step not applied yet (``default`` when
        every step is applied): a step's failure comes after them; -1 once stopped."""
        with self._lock:
            if self.stopped is not None:
                return -1
            return self._steps[0].position if self._steps else default

    def drain(self, block: bool, upto: Optional[Task] = None) -> None:
        """Apply the steps in order: those whose operands are ready, or all (``block``)."""
        with self._lock:
            steps = self._steps
            while steps:
                step = steps[0]
                if not block and not (_ready(step.value) and _ready(step.acc)):
                    return
                steps.popleft()
                self._apply(step)
                if upto is not None and step.task is upto:
                    return

    @no_type_check
    def _apply(self, step: _Step) -> None:
        if self.stopped is not None:
            _fail(step, self.stopped)
            return
        try:
            acc, value = unwrap(step.acc), unwrap(step.value)
        except Exception as exc:  # noqa: BLE001 - a fork failed: the Joiner raises it
            self.stopped = exc
            _fail(step, exc)
            return
        try:
            result = step.apply(acc, value)
        except Exception as exc:  # noqa: BLE001 - raised at the loop's end, in call order
            self.stopped = self.failure = exc
            self.failed_at = step.position
            _fail(step, exc)
            return
        if step.task is not None:
            step.task.claim()
            step.task.set_result(result)
        else:
            _check(result, step.same)

    # -- as the executor of the steps' tasks (runtime.executor.Executor) ----------------

    def submit(self, task: Task) -> None:
        """Steps are recorded by ``fold``; nothing else is taken."""
        raise TypeError("Folds takes steps through fold() and then(), not tasks")

    def steal(self, task: Task) -> bool:
        """A thread waits for the result of a step: apply the steps up to it, here."""
        if task.state == QUEUED:
            self.drain(block=True, upto=task)
        return task.state == DONE

    def close(self, kill: bool = False) -> None:
        """Apply every step (waiting for its operands); with ``kill``, only those ready."""
        self.drain(block=not kill)


def _call(method: Callable[[Any], Any], value: Any) -> Any:
    return method(value)


@no_type_check
def _fail(step: _Step, exc: BaseException) -> None:
    """A step not applied: the loop stopped at it or before it (see the invariants)."""
    if step.task is None or not step.task.claim():
        return
    try:
        before = unwrap(step.acc)  # ready: the value, or the step before's, settled already
    except Exception:  # noqa: BLE001 - the accumulator itself failed
        step.task.set_failure(Failure.local(exc, skip=0))
        step.task.mark_observed()  # the loop raises it; its proxy raises it again if used
        return
    step.task.set_result(before)


def _check(result: Any, same: Any) -> None:
    if same is not None and result is not same:
        import warnings

        warnings.warn(AutoforkWarning(
            f"{type(same).__qualname__}'s in-place operator returned a new object, not the "
            "one it was given: a reduction autofork deferred to the end of the loop kept "
            "the old one; write `acc = acc + value` in that loop instead"), stacklevel=4)
