"""The dask backend: CPU-bound forks run as tasks of an existing Dask distributed cluster.

Selected by ``configure(backend="dask", address="tcp://host:8786")``, ``AUTOFORK_BACKEND=dask``
with ``AUTOFORK_DASK_ADDRESS``, or ``python -m autofork --backend dask --address ...``.
I/O-bound forks and coroutines stay on this machine's threads and event loop.

Data flow::

    fork(f, x) --submit--> pickle (f, args, kwargs) -- client.submit(_run, key, call, timed, *futures)
                           a proxy of a task that runs                       |
                           on Dask is pickled as a slot;                     v
                           its Dask future goes along     Dask worker: _run unpickles the call,
                           as a dependency of the task    fills the slots with the inputs' values
                                                           (Dask waited for them), runs f; an
                                                           exception becomes _Failed(Failure)
    task.set_result / set_failure <-- collector thread <-- _fetch on the client's event loop
                                                           (client.gather: Dask merges the
                                                           gathers of a burst)

Invariants:

* Each task accepted here is completed exactly once: ``_running`` holds the tasks sent
  to Dask, and whoever pops a task from it (the collector, or ``close``) completes it.
* Dataflow uses Dask's own dependency tracking: a proxy whose task runs on Dask travels
  as its Dask future (at any depth: the pickler sees every object), and the caller never
  waits.  Only a pending input that Dask does not know (an I/O-bound fork, a lazy
  operator) holds the task here until it is ready (``dataflow.when_ready``; no thread
  blocks).
* A failed input fails the dependent call with the input's failure: on Dask the dependent
  task errs with the input's ``_Failed`` exception without running.
* The function and arguments are pickled here, with autofork's pickler (cloudpickle
  keeps the real file name of ``__main__`` functions, so remote tracebacks show source
  lines).  Results travel the Dask way.
* Nested CPU forks inside a Dask task run inline (``config.IN_WORKER``), as in the local
  backend's workers, so a task never waits on the cluster it occupies (no ``secede``
  needed: nothing inside a task blocks on another Dask task).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from queue import SimpleQueue
from typing import Any, Optional

from distributed import Client, Future

from . import config, serialize, stats
from .dataflow import scan, when_ready
from .errors import Failure, WorkerCrashed
from .executor import submit_or_fail
from .proxy import ResultProxy
from .task import DONE, Task

__all__ = ["DaskBackend", "DaskConnectionError", "client", "connect", "CONNECT_TIMEOUT"]

log = logging.getLogger("autofork")

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler, at start and after losing it
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_CLIENT_HERE = False  # True in a process that runs a DaskBackend (see _run)
_NO_VALUE = object()
_in_task = threading.local()  # .active: this thread runs a Dask task of this very process


class DaskConnectionError(ConnectionError):
    """The Dask scheduler cannot be reached, or the connection to it was lost."""

    def __init__(self, address: str, message: str) -> None:
        self.address = address
        self.message = message
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.address, self.message))


class _Failed(Exception):
    """Raised by ``_run`` on a worker: the call's Failure, and the key of the task that failed.

    Its ``str`` stays short (Dask truncates long exception messages, and shows this one
    in the worker's log); the traceback travels inside the Failure.
    """

    def __init__(self, failure: Failure, key: str, summary: str) -> None:
        super().__init__(failure, key, summary)
        self.failure = failure
        self.key = key
        self.summary = summary

    def __str__(self) -> str:
        return self.summary

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Failed, (self.failure, self.key, self.summary))


class _InputFailed(Exception):
    """Raised while pickling the arguments: a proxy among them stands for a failed call."""

    def __init__(self, task: Task) -> None:
        super().__init__(task.name)
        self.task = task


# -- the worker's side ------------------------------------------------------------------

class _CallUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, inputs: tuple) -> None:
        super().__init__(io.BytesIO(data))
        self.inputs = inputs

    def persistent_load(self, slot: Any) -> Any:
        value = self.inputs[slot]
        return value.value if type(value) is _Timed else value


class _Timed:
    """A value with when and where it was computed: what ``_run`` returns under ``--stats``
    or ``--trace`` (wall-clock times, so that they compare across machines)."""

    __slots__ = ("value", "begin", "end", "pid")

    def __init__(self, value: Any, begin: float, end: float, pid: int) -> None:
        self.value, self.begin, self.end, self.pid = value, begin, end, pid

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Timed, (self.value, self.begin, self.end, self.pid))


def _run(key: str, call: bytes, timed: bool, *inputs: Any) -> Any:
    """Runs on a Dask worker: unpickle ``(fn, args, kwargs)``, fill in the inputs, call."""
    if _CLIENT_HERE:  # a cluster inside this very process (threads): flag this thread only
        _in_task.active = True
    else:
        config.enter_worker()  # nested CPU forks run inline in this worker process
    try:
        fn, args, kwargs = _CallUnpickler(call, inputs).load()
        if not timed:
            return fn(*args, **kwargs)
        begin = time.time()
        value = fn(*args, **kwargs)
        return _Timed(value, begin, time.time(), os.getpid())
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
        failure = Failure.capture(exc, skip=1)
        summary = f"{type(exc).__qualname__}: {exc}"[:500]
    finally:
        _in_task.active = False
    # Raised outside the except block, so it has no __context__: Dask pickles an error
    # with its whole chain (tblib), and the user's exception may not pickle at all.
    raise _Failed(failure, key, summary)


# -- the caller's side ----------------------------------------------------------------

class _CallPickler(pickle.Pickler):
    """Pickles a call; proxies of Dask-run tasks and Dask futures become numbered slots."""

    def __init__(self, file: Any, backend: "DaskBackend") -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self.backend = backend
        self.futures: list[Future] = []
        self._slots: dict[Any, int] = {}  # Dask key -> slot

    def persistent_id(self, obj: Any) -> Optional[int]:
        kind = type(obj)
        if kind is ResultProxy:
            task = obj._autofork_task
            if task.state == DONE and task.failure is not None:
                raise _InputFailed(task)
            future = self.backend._futures.get(task)
            return None if future is None else self._slot(future)
        if kind is Future:
            return self._slot(obj)
        return None

    def _slot(self, future: Future) -> int:
        slot = self._slots.get(future.key)
        if slot is None:
            slot = self._slots[future.key] = len(self.futures)
            self.futures.append(future)
        return slot


# cloudpickle's Pickler that keeps file names (named _Pickler before serialize made it public)
_CloudPickler: Any = getattr(serialize, "Pickler", None) or getattr(serialize, "_Pickler")


class _CloudCallPickler(_CloudPickler):  # type: ignore[misc,valid-type]
    """The same, for what plain pickle cannot take (lambdas, ``__main__`` functions)."""

    def __init__(self, file: Any, backend: "DaskBackend") -> None:
        super().__init__(file, protocol=_PROTOCOL)
        self.backend = backend
        self.futures: list[Future] = []
        self._slots: dict[Any, int] = {}  # Dask key -> slot

    persistent_id = _CallPickler.persistent_id
    _slot = _CallPickler._slot


def _pickle_call(backend: "DaskBackend", call: tuple) -> tuple[bytes, list[Future]]:
    """Plain pickle when the payload names no ``__main__`` object, cloudpickle otherwise."""
    try:
        with io.BytesIO() as buffer:
            pickler: Any = _CallPickler(buffer, backend)
            pickler.dump(call)
            data = buffer.getvalue()
        if b"__main__" not in data:
            return data, pickler.futures
    except _InputFailed:
        raise
    except Exception:  # noqa: BLE001 - whatever plain pickle refuses, cloudpickle may take
        pass
    with io.BytesIO() as buffer:
        pickler = _CloudCallPickler(buffer, backend)
        pickler.dump(call)
        return buffer.getvalue(), pickler.futures


class DaskBackend:
    """CPU-bound forks as tasks of the Dask cluster whose scheduler is at ``address``.

    An ``executor.Engine``; it takes the pending proxies among a call's arguments itself
    (those of its own tasks go to Dask as futures).
    """

    def __init__(self, address: Optional[str]) -> None:
        global _CLIENT_HERE
        if not address:
            raise ValueError(
                "the dask backend needs the address of a Dask scheduler: "
                "configure(backend='dask', address='tcp://host:8786'), "
                "AUTOFORK_DASK_ADDRESS=tcp://host:8786, or --address tcp://host:8786")
        self.address = address
        try:
            self.client = Client(address, set_as_default=False, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as error:
            raise DaskConnectionError(address, (
                f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT:g} s "
                f"({type(error).__name__}: {error}). Start one (dask scheduler; dask worker "
                f"{address}) or fix the address (configure(address=...), "
                "AUTOFORK_DASK_ADDRESS, --address).")) from error
        _CLIENT_HERE = True
        self._futures: "weakref.WeakKeyDictionary[Task, Future]" = weakref.WeakKeyDictionary()
        self._by_key: "weakref.WeakValueDictionary[Any, Task]" = weakref.WeakValueDictionary()
        self._taken_over: set[str] = set()  # failed keys whose failure a dependent re-raised
        self._running: dict[Task, Future] = {}
        self._unwatched: list[tuple[Task, Future]] = []
        self._lock = threading.Lock()
        self._done: "SimpleQueue[Optional[tuple[Task, Future, Any]]]" = SimpleQueue()
        self._closed = False
        self._threads = (0, 0.0)  # (threads in the cluster, when counted)
        self._collector = threading.Thread(target=self._collect, name="autofork-dask",
                                           daemon=True)
        self._collector.start()
        log.debug("autofork: CPU-bound forks go to the Dask scheduler at %s", address)

    # -- sending ---------------------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Send ``task`` to Dask, or hold it until its inputs unknown to Dask are ready."""
        task.executor = self
        if getattr(_in_task, "active", False):  # a fork inside a Dask task of this process
            if task.claim():
                task.run_here()
            return
        _, pending = scan(task.args, task.kwargs)
        foreign = [t for t in pending if t not in self._futures]
        if foreign:
            when_ready(task, foreign, functools.partial(submit_or_fail, self._send))
        else:
            self._send(task)

    def _send(self, task: Task) -> None:
        try:
            call, futures = _pickle_call(self, (task.fn, task.args, task.kwargs))
        except _InputFailed as failed:
            if task.claim():
                failed.task.mark_observed()
                task.set_failure(failed.task.failure)  # type: ignore[arg-type]
            return
        except Exception as error:  # noqa: BLE001
            raise _unsendable(task, error) from error
        if not task.claim():
            return  # cancelled meanwhile
        status = self.client.status
        if self._closed or status != "running":
            task.set_failure(self._lost_failure(task, f"the Dask client is {status}"))
            return
        key = f"{task.name.replace('-', '_')}-{uuid.uuid4().hex}"
        try:
            future = self.client.submit(_run, key, call, stats.active, *futures, key=key,
                                        pure=False)
        except Exception as error:  # noqa: BLE001 - the client closed under us
            task.set_failure(self._lost_failure(task, f"{type(error).__name__}: {error}"))
            return
        with self._lock:
            self._running[task] = future
        self._futures[task] = future
        self._by_key[key] = task
        self._watch(task, future)

    def _watch(self, task: Task, future: Future) -> None:
        """Fetch the value on the client's event loop once the task is done; queue it.

        The loop is woken once per burst of forks, not once per fork (each wake-up is a
        write to its self-pipe and a thread switch).
        """
        with self._lock:
            self._unwatched.append((task, future))
            first = len(self._unwatched) == 1
        if first:
            loop: Any = self.client.loop  # set while the client is open
            loop.add_callback(self._watch_all)

    def _watch_all(self) -> None:
        with self._lock:
            batch, self._unwatched = self._unwatched, []
        for task, future in batch:
            asyncio.ensure_future(self._fetch(task, future))

    async def _fetch(self, task: Task, future: Future) -> None:
        # Runs on the client's event loop.  Concurrent gathers are merged by Dask into
        # one request per worker.  (Not Future.add_done_callback: its thread pool refuses
        # work once the interpreter begins to exit, before autofork's exit hook has
        # waited for the tasks.)
        try:
            value = await self.client.gather(future, asynchronous=True)
        except BaseException:  # noqa: BLE001 - the collector reads the future's status
            self._done.put((task, future, _NO_VALUE))
        else:
            self._done.put((task, future, value))

    # -- receiving ---------------------------------------------------------------------

    def _collect(self) -> None:
        """Complete the tasks whose outcome ``_fetch`` queued (in this thread, not the loop's:
        completing a task runs its done-callbacks, such as lazy operators)."""
        while True:
            item = self._done.get()
            if item is None:
                return
            task, future, value = item
            try:
                if value is _NO_VALUE:
                    self._complete_one(task, future)
                elif self._release(task):
                    task.set_result(_untimed(task, value))
            except BaseException:  # noqa: BLE001 - the collector must go on
                log.exception("autofork: error while completing %s()", task.name)

    def _release(self, task: Task) -> bool:
        """True for the one caller that is to complete ``task``."""
        with self._lock:
            return self._running.pop(task, None) is not None

    def _complete_one(self, task: Task, future: Future) -> None:
        if future.status == "finished":
            try:
                value = future.result()
            except Exception as error:  # noqa: BLE001
                failure = self._fetch_failure(task, future, error)
            else:
                if self._release(task):
                    task.set_result(_untimed(task, value))
                return
        elif future.status == "error":
            failure = self._error_failure(task, future)
        elif future.status in ("pending", "lost") and self.client.status == "running":
            self._watch(task, future)  # its data was lost with a worker: Dask recomputes it
            return
        else:  # cancelled: the scheduler went away (or someone cancelled the key)
            failure = self._lost_failure(task, _cancel_reason(future))
        if self._release(task):
            task.set_failure(failure)
            if future.key in self._taken_over:
                self._taken_over.discard(future.key)
                task.mark_observed()

    def _error_failure(self, task: Task, future: Future) -> Failure:
        try:
            exc = future.exception()
        except Exception as error:  # noqa: BLE001 - e.g. the connection went away
            return self._lost_failure(task, f"{type(error).__name__}: {error}")
        if isinstance(exc, _Failed):
            failure = exc.failure
            if exc.key != future.key:  # an input failed: Dask did not run this call
                self._take_over(exc.key)
                origin = self._by_key.get(exc.key)
                failure.site = origin.site if origin is not None else None
            return failure
        try:
            from distributed.scheduler import KilledWorker
        except ImportError:  # pragma: no cover - every distributed has it
            KilledWorker = ()  # type: ignore[assignment,misc]  # noqa: N806
        if isinstance(exc, KilledWorker):
            return self._crash_failure(task, future, exc)
        return Failure.capture(exc, skip=0)

    def _take_over(self, key: str) -> None:
        origin = self._by_key.get(key)
        if origin is not None and origin.state == DONE:
            origin.mark_observed()
        else:
            self._taken_over.add(key)

    def _crash_failure(self, task: Task, future: Future, exc: BaseException) -> Failure:
        origin = self._by_key.get(getattr(exc, "task", None) or future.key) or task
        tries = getattr(exc, "allowed_failures", 0) + 1
        last = getattr(getattr(exc, "last_worker", None), "address", None) or "?"
        error = WorkerCrashed(origin.name, "the Dask worker process running it died", (
            f"{tries} worker(s) died while running it, the last one {last}; Dask gives up "
            f"after distributed.scheduler.allowed-failures={tries - 1} retries (KilledWorker)"))
        return Failure(pickle.dumps(error, protocol=_PROTOCOL), [], origin.site)

    def _fetch_failure(self, task: Task, future: Future, error: Exception) -> Failure:
        if future.status != "finished" or self.client.status != "running":
            return self._lost_failure(task, f"{type(error).__name__}: {error}")
        problem = TypeError(f"the result of {task.name}() cannot be sent back to the caller "
                            f"from the Dask worker: {type(error).__name__}: {error}")
        return Failure(pickle.dumps(problem, protocol=_PROTOCOL), [], task.site)

    def _lost_failure(self, task: Task, detail: str) -> Failure:
        error = DaskConnectionError(self.address, (
            f"{task.name}() did not run to the end: the connection to the Dask scheduler at "
            f"{self.address} is lost or closed ({detail}). Check the scheduler, then run "
            "the program again."))
        return Failure(pickle.dumps(error, protocol=_PROTOCOL), [], task.site)

    # -- the rest of the interface -------------------------------------------------------

    def steal(self, task: Task) -> bool:
        """Never: a CPU-bound call runs on the cluster."""
        return False

    def start(self) -> None:
        """Nothing to start: the client connected when this engine was made."""

    def pending(self) -> int:
        """Calls sent to Dask and not yet completed here."""
        return len(self._running)

    def mean_seconds(self, fn: Any) -> Optional[float]:
        """Not measured on Dask (granularity measures only the local engine)."""
        return None

    def ready(self) -> bool:
        """The cluster's workers are already running."""
        return True

    def idle(self) -> int:
        """Threads of the cluster minus the calls in flight (the count refreshed each second)."""
        threads, when = self._threads
        now = time.monotonic()
        if now - when > 1.0:
            try:
                threads = sum(self.client.nthreads().values())
            except Exception:  # noqa: BLE001 - no scheduler, no capacity
                threads = 0
            self._threads = (threads, now)
        return max(0, threads - len(self._running))

    def close(self, kill: bool = False) -> None:
        """Wait for the calls in flight (or, with ``kill``, cancel them), then disconnect."""
        if self._closed:
            return
        if not kill:
            for task in list(self._running):
                task.wait()
        self._closed = True
        with self._lock:
            left, self._running = self._running, {}
        if left:
            try:
                self.client.cancel(list(left.values()), force=True)
            except Exception:  # noqa: BLE001 - the scheduler may be gone
                pass
        for task in left:
            error = WorkerCrashed(task.name, "cancelled", "autofork was shutting down")
            task.set_failure(Failure(pickle.dumps(error, protocol=_PROTOCOL), [], task.site))
        self._done.put(None)
        try:
            self.client.close(timeout=2)
        except Exception:  # noqa: BLE001 - closing must go on
            log.debug("autofork: error while closing the Dask client", exc_info=True)


def client() -> Client:
    """The Dask client of autofork's dask backend (connected on first use).

    For what autofork does not do by itself, such as sending a large argument once::

        [data] = client().scatter([big], broadcast=True)   # a Dask future
        results = [fork(work, data, i) for i in range(100)]  # Dask passes the data along
    """
    current = config.settings()
    if current.backend != "dask":
        raise RuntimeError("autofork's backend is not dask; first configure(backend='dask', "
                           "address='tcp://host:8786') or set AUTOFORK_BACKEND=dask")
    return connect(current.address).client


_connected: Optional[DaskBackend] = None  # the engine connected last (until it closes)
_connecting = threading.Lock()


def connect(address: Optional[str]) -> DaskBackend:
    """The open dask engine for the scheduler at ``address``, connected now if there is none.

    ``engine.backend()`` and ``client()`` share it, whichever of them asks first.
    """
    global _connected
    with _connecting:
        current = _connected
        if current is None or current._closed or current.address != address:
            current = _connected = DaskBackend(address)
        return current


def _untimed(task: Task, value: Any) -> Any:
    """The value; under ``--stats``, recorded with where and when it was computed."""
    if type(value) is not _Timed:
        return value
    offset = time.time() - time.perf_counter()  # wall clock -> perf_counter
    stats.ran(task, "dask", value.pid, value.begin - offset, value.end - offset)
    return value.value


def _cancel_reason(future: Future) -> str:
    try:
        future.result(timeout=1)
    except BaseException as error:  # noqa: BLE001 - FutureCancelledError names the reason
        return f"{type(error).__name__}: {error}".replace("\n", " ")
    return f"Dask future {future.status}"


def _unsendable(task: Task, error: Exception) -> TypeError:
    from .processes import unsendable_argument
    from .serialize import cloud_dumps

    try:
        cloud_dumps(task.fn)
    except Exception:  # noqa: BLE001
        return TypeError(f"fork({task.name}, ...): the function cannot be sent to a Dask "
                         f"worker: {type(error).__name__}: {error}. Mark it @io_bound to run "
                         "it in a thread of this process.")
    return unsendable_argument(task, error)
