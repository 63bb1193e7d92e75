"""Task: one forked call and its outcome (autofork's own small future).

A task moves WAITING (for pending inputs) -> QUEUED -> RUNNING -> DONE.  Whoever
*claims* a queued task runs it: a pool thread, a worker's sender, or a thread that waits
for it and finds it still queued (so a thread waiting on its own pool never deadlocks).
Claiming is a ``list.pop`` on a one-item list: atomic, so exactly one claimer wins
(``requeue`` puts the item back when a worker died before beginning the task).

Completion releases a lock that was taken at creation (a latch: each waiter acquires
and releases it), then runs the done-callbacks.  Callbacks that complete further tasks
are run from a per-thread queue, not recursively, so a chain of 100,000 lazy additions
completes without deep recursion.
"""

from __future__ import annotations

import pickle
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import output
from .errors import Failure, Frame, site_at

if TYPE_CHECKING:  # typing only: executor.py builds on this module
    from .executor import Executor

__all__ = ["Task", "Chunk", "ChunkItem", "WAITING", "QUEUED", "RUNNING", "DONE", "track",
           "untrack", "live_tasks", "unobserved_failures", "stopped_at", "stop_before_read"]

WAITING, QUEUED, RUNNING, DONE = 0, 1, 2, 3

_local = threading.local()
_unobserved: dict[int, Any] = {}  # tasks and chunk items that failed, unseen yet
_live: set["Task"] = set()  # forked and not finished: waited for at exit


class Task:
    """One call: its function, arguments, state and outcome."""

    __slots__ = ("fn", "args", "kwargs", "kind", "site", "state", "value", "failure",
                 "_latch", "_callbacks", "_claim", "inputs", "executor", "seq", "output",
                 "waited_at", "caller_may_run", "after",
                 "__weakref__")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, kind: str,
                 site: Optional[Frame] = None) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.kind = kind
        self.site = site
        self.state = QUEUED
        self.value: Any = None
        self.failure: Optional[Failure] = None
        self._latch = threading.Lock()
        self._latch.acquire()
        self._callbacks: Optional[list] = None
        self._claim = [True]
        self.inputs: Optional[list[Task]] = None  # pending inputs, while WAITING
        # The executor that holds the task while it is queued, asked to steal it when
        # somebody waits for it.  None while WAITING, and for a lazy operator.
        self.executor: Optional[Executor] = None
        # Its place in the ordered output (output.begin), -1 if not ordered; and what the
        # call wrote, set by whoever ran it, emitted in call order when the task is done.
        self.seq = -1
        self.output: Optional[list] = None
        # A lazy operation: the latest ``seq`` among the forks it computes from, -1 if
        # none (a loop's container that failed drops it with that fork: settle.trim).
        self.after = -1
        # When somebody first waited for it unfinished (granularity learns from it
        # whether forking overlapped anything); None while nobody has.
        self.waited_at: Optional[float] = None
        # A call the rewriter forked: while no worker is ready, a thread that waits for
        # it may run it itself (an explicit fork always runs in a worker).
        self.caller_may_run = False

    @property
    def name(self) -> str:
        fn = self.fn
        return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)

    # -- claiming and running ------------------------------------------------------

    def claim(self) -> bool:
        """Take the task to run it; True for exactly one caller."""
        try:
            self._claim.pop()
        except IndexError:
            return False
        self.state = RUNNING
        return True

    def requeue(self) -> None:
        """Give a claimed task back, unstarted (its worker died before beginning it): it
        is QUEUED again, and the next ``claim`` wins it, as the first one did."""
        self._claim.append(True)
        self.state = QUEUED

    def run_here(self) -> None:
        """Run a claimed task in this thread and record its outcome."""
        fn, args, kwargs = self.fn, self.args, self.kwargs
        try:
            if self.seq < 0:
                value = fn(*args, **kwargs)
            else:
                captured: list = []
                self.output = captured
                value = output.run_captured(fn, args, kwargs, captured)
        except BaseException as exc:  # noqa: BLE001 - every failure is the caller's to see
            self.set_failure(Failure.local(exc, skip=1))
            del exc
        else:
            self.set_result(value)

    # -- completion --------------------------------------------------------------------

    def set_result(self, value: Any) -> None:
        self.value = value
        self._finish()

    def set_failure(self, failure: Failure) -> None:
        if failure.site is None:
            failure.site = self.site
        if self.caller_may_run and failure.seq < 0:
            failure.seq = self.seq
        self.failure = failure
        if not (failure.raised or self.caller_may_run and output.voided(self.seq)):  # see stopped_at
            _unobserved[id(self)] = self
        self._finish()

    def _finish(self) -> None:
        # Free the inputs: a finished task keeps only its outcome.
        self.args = self.kwargs = None  # type: ignore[assignment]
        self.state = DONE
        _live.discard(self)
        self._end_output()
        self._latch.release()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks:
            for callback in callbacks:
                _schedule(callback, self)

    def _end_output(self) -> None:
        if self.seq >= 0:
            output.end(self.seq, self.output or None,
                       self.failure is not None and self.caller_may_run, self)

    def add_done_callback(self, callback: Callable[["Task"], None]) -> None:
        """Call ``callback(task)`` once the task is done (now, if it is)."""
        if self.state != DONE:
            with _callback_lock:
                if self.state != DONE:
                    if self._callbacks is None:
                        self._callbacks = []
                    self._callbacks.append(callback)
                    return
        _schedule(callback, self)

    # -- waiting -----------------------------------------------------------------------

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until done; run the task here if it is still queued.  False on timeout."""
        if self.state == DONE:
            return True
        if self.waited_at is None:
            self.waited_at = time.perf_counter()
        if self.state == WAITING and self.inputs:
            _help(self.inputs)
        executor = self.executor
        if self.state == QUEUED and executor is not None and executor.steal(self):
            return True
        if timeout is None:
            self._latch.acquire()
        elif not self._latch.acquire(timeout=max(timeout, 0)):
            return False
        self._latch.release()
        return True

    def result(self, timeout: Optional[float] = None) -> Any:
        """The value, waiting for it; re-raises the call's exception."""
        if self.state != DONE and not self.wait(timeout):
            raise TimeoutError(f"{self.name}() did not finish within {timeout} s")
        failure = self.failure
        if failure is None:
            return self.value
        self.mark_observed()
        if self.caller_may_run:  # a rewritten call
            stopped_at(self.seq)
        elif failure.seq >= 0:  # a lazy operation on a rewritten call that failed
            stopped_at(failure.seq)
        raise failure.exception()

    def mark_observed(self) -> None:
        _unobserved.pop(id(self), None)


def stopped_at(seq: int) -> None:
    """The failure of the rewritten call ``seq`` is raised in the caller: the sequential
    program stopped at that call.  What came after it never happened: its output is
    dropped (``output.raised``), and so are the failures of the rewritten calls made after
    it (those failed already here; those that fail later, by ``output.voided``), which
    would otherwise be reported at exit as failures nobody saw."""
    if seq < 0:
        return
    output.raised(seq)
    for key, task in list(_unobserved.items()):
        if (task.seq > seq and getattr(task, "caller_may_run", True)
                or getattr(task, "after", -1) > seq):   # a lazy operation on a later call
            _unobserved.pop(key, None)
    # Those not begun yet are not run at all (a loop of a thousand calls that fails at
    # its third ends now, not after the other 997, also at exit).
    for task in list(_live):
        if task.state == QUEUED and _never_made(task) and task.claim():
            failure = Failure.local(NeverMade(
                f"{task.name}() was called after a call whose failure was raised; the "
                "sequential program never made this call, so it was not run"), skip=0)
            failure.raised = True
            task.set_failure(failure)


def stop_before_read() -> None:
    """The caller is about to wait for its user (``input``) while its writes are queued:
    wait for the rewritten calls they are queued behind (the prompt could not show
    before them anyway), and raise the failure of the first that failed, in call order,
    as the sequential program did before it ever prompted."""
    for task in list(_live):
        if getattr(task, "caller_may_run", False):
            task.wait()
    failed = [task for task in list(_unobserved.values())
              if getattr(task, "caller_may_run", True) and task.seq >= 0
              and not getattr(task.failure, "raised", False)]
    if failed:
        min(failed, key=lambda task: task.seq).result()  # raises (and stopped_at)


class NeverMade(Exception):
    """The failure of a rewritten call made after one whose failure was raised (the
    sequential program stopped there): autofork does not run it.  Nothing can see it:
    the program went on from the exception."""


def _never_made(task: "Task") -> bool:
    if type(task) is Chunk:
        return all(output.voided(item.seq) for item in task.items)  # type: ignore[attr-defined]
    return task.caller_may_run and output.voided(task.seq)


def _help(inputs: list) -> None:
    """Run (or send) what the inputs of a waiting task still wait for.

    Iterative, not recursive: a running total of 100,000 lazy additions is a chain of
    100,000 inputs.
    """
    stack = list(inputs)
    seen: set[int] = set()
    while stack:
        task = stack.pop()
        if id(task) in seen:
            continue
        seen.add(id(task))
        target = getattr(task, "chunk", task)
        state = target.state
        if state == QUEUED and target.executor is not None:
            target.executor.steal(target)
        elif state == WAITING and target.inputs:
            stack.extend(target.inputs)


class Chunk(Task):
    """Several short calls of one function, sent to a worker as one task (see granularity).

    Internal: its calls are ``ChunkItem`` views of one slot each of its outcomes, so a
    call in a chunk costs no lock and no completion of its own.
    """

    __slots__ = ("items", "outcomes", "snapshot", "generation")

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__(fn, (), {}, "cpu")
        self.items: list[ChunkItem] = []
        self.outcomes: Optional[list] = None
        # The state of the globals its calls read, when they were made (freshness), and
        # the generation of the caller's directory and environment (context): a chunk is
        # closed when a global its function reads is rebound, or the directory changes.
        self.snapshot: Optional[tuple] = None
        self.generation = -1

    def set_outcomes(self, outcomes: list) -> None:
        """Each item's outcome: (True, value) or (False, pickled Failure)."""
        self.outcomes = outcomes
        for item, (ok, _) in zip(self.items, outcomes):
            if not ok and not output.voided(item.seq):
                _unobserved[id(item)] = item
        self.set_result(None)

    def _end_output(self) -> None:
        # self.output: each item's captured output (None: no item wrote anything).
        outputs = self.output or ()
        outcomes = self.outcomes
        for item in self.items:
            if item.seq >= 0:
                failed = self.failure is not None or (
                    outcomes is not None and not outcomes[item.index][0])
                output.end(item.seq, outputs[item.index] if outputs else None, failed, item)

    def set_failure(self, failure: Failure) -> None:
        self.failure = failure
        for item in self.items:
            if not output.voided(item.seq):
                _unobserved[id(item)] = item
        self._finish()


class ChunkItem:
    """One call of a chunk, with the face of a Task for proxies, dataflow and joins."""

    __slots__ = ("chunk", "index", "fn", "args", "kwargs", "where", "seq", "__weakref__")

    kind = "cpu"
    inputs = None

    def __init__(self, chunk: Chunk, index: int, args: tuple, kwargs: dict, where: Any) -> None:
        self.chunk = chunk
        self.index = index
        self.fn = chunk.fn
        self.args = args
        self.kwargs = kwargs
        self.where = where  # (code, line, lasti) of the call site: cheaper than a Frame
        self.seq = -1  # its place in the ordered output, as Task.seq

    @property
    def name(self) -> str:
        return self.chunk.name

    @property
    def site(self) -> Optional[Frame]:
        return site_at(*self.where)

    @property
    def state(self) -> int:
        return self.chunk.state

    @property
    def executor(self) -> Optional[Executor]:
        return self.chunk.executor

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.chunk.wait(timeout)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.chunk.add_done_callback(lambda _: callback(self))

    @property
    def value(self) -> Any:
        return self.chunk.outcomes[self.index][1]  # type: ignore[index]

    @property
    def failure(self) -> Optional[Failure]:
        chunk = self.chunk
        if chunk.state != DONE:
            return None
        if chunk.failure is not None:
            failure = Failure(chunk.failure.payload, chunk.failure.frames, self.site)
            failure.seq = self.seq
            return failure
        ok, outcome = chunk.outcomes[self.index]  # type: ignore[index]
        if ok:
            return None
        failure = pickle.loads(outcome) if isinstance(outcome, bytes) else outcome
        chunk.outcomes[self.index] = (False, failure)  # type: ignore[index]
        if failure.site is None:
            failure.site = self.site
        if failure.seq < 0:
            failure.seq = self.seq
        return failure

    def result(self, timeout: Optional[float] = None) -> Any:
        chunk = self.chunk
        if chunk.state != DONE and not chunk.wait(timeout):
            raise TimeoutError(f"{self.name}() did not finish within {timeout} s")
        if chunk.failure is None:
            ok, value = chunk.outcomes[self.index]  # type: ignore[index]
            if ok:
                return value
        self.mark_observed()
        stopped_at(self.seq)
        raise self.failure.exception()  # type: ignore[union-attr]

    def mark_observed(self) -> None:
        _unobserved.pop(id(self), None)


_callback_lock = threading.Lock()


def _schedule(callback: Callable[[Task], None], task: Task) -> None:
    """Run ``callback(task)``; nested completions are queued, not recursed into."""
    queue = getattr(_local, "queue", None)
    if queue is not None:
        queue.append((callback, task))
        return
    _local.queue = queue = deque([(callback, task)])
    try:
        while queue:
            callback, task = queue.popleft()
            try:
                callback(task)
            except BaseException:  # noqa: BLE001 - a callback must not break the caller
                sys.excepthook(*sys.exc_info())  # type: ignore[arg-type]
    finally:
        _local.queue = None


def track(task: Task) -> None:
    """Count ``task`` among the live ones (waited for at exit) until it finishes."""
    _live.add(task)


def untrack(task: Task) -> None:
    """Stop counting ``task`` (it was never started: its arguments could not be sent)."""
    _live.discard(task)


def live_tasks() -> list[Task]:
    """Forked tasks not finished yet."""
    return list(_live)


def unobserved_failures() -> list[Task]:
    """Failed tasks whose failure nobody has seen yet, oldest first."""
    return [task for task in list(_unobserved.values())
            if not getattr(task.failure, "raised", False)]
