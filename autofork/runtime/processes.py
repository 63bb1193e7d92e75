"""The process pool: CPU-bound forks run in worker processes.

Data flow::

    fork() in any thread                 dispatcher thread                worker process
    --------------------                 -----------------                --------------
    pickle (fn, args) -> call bytes
    queue.append((task, call)) --wake-->  take calls from the queue
                                          batch per worker  ------------>  run each call
                                          set results       <------------  [outcomes]
                                          worker died? fail what it ran,
                                          requeue what it never began,
                                          start a replacement

The arguments are pickled in the thread that forks, so an argument that cannot be sent
fails the ``fork`` call itself, naming the argument; and no pending proxy is ever pickled
by the dispatcher (dataflow holds such calls back until their inputs are ready).

Batching: the pool learns each function's mean run time from the outcomes, and sends a
worker enough calls for about ``_BATCH_SECONDS`` of work at once (one call at a time
until it knows better), keeping a second batch in flight only when every worker has
work.  A ``Chunk`` (granularity) is one queued task holding many short calls.

While the dispatcher sleeps, a forking thread hands its call straight to an idle worker
(``_send_direct``): one call at a time then costs two thread switches less.

Start: the dispatcher thread starts the workers, never the forking thread.  With
``start_method="forkserver"`` it first starts the template process (``template``) and
forks the workers from it once calls are coming (the first queued call, or
``ready()``), so that the modules imported by then are preloaded; with ``"spawn"`` each
worker is a fresh interpreter.  A worker gets calls only after its hello (the first,
empty message); until one is ready, a thread that waits for a call the rewriter forked
runs it itself (``steal``), as a worker would, from the pickled call: the program never
waits for a worker to start.

Close: after the calls held (at exit, ``engine`` has waited for every fork already).
Waiting for the template's answer is a wait on the wake-up pipe too, so close never
waits for the pool to start: the template (killed) and the workers that never got a call
(killed) hold nothing of the program's; the others are told to stop (their ``atexit``
handlers run).

A worker writes the id of the call it starts and of the call it finishes into shared
memory; when it dies, the pool fails the call it was running with ``WorkerCrashed``,
re-queues those it had not begun, and starts a replacement.  A large immutable argument
is pickled once and sent once per worker (``_Blobs``).
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import pickle
import sys
import threading
import time
import types
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Optional

from .. import _phases
from . import context, freshness, output, stats
from .errors import Failure, NotSendable, WorkerCrashed
from .freshness import Watch
from .dataflow import start_when_ready
from .plain import for_workers
from .serialize import Pickler, cloud_dumps, dumps
from .task import QUEUED, Chunk, Task

# What only the dispatcher thread needs to start and talk to workers (the template,
# sockets, shared memory, subprocess) is imported there, when it first does: not in the
# program's thread, before its first fork (some 25 ms of start-up).
if TYPE_CHECKING:
    import mmap
    import subprocess
    from multiprocessing.connection import Connection

    from .template import Template

__all__ = ["ProcessPool", "unsendable_argument"]

log = logging.getLogger("autofork")

_BATCH_SECONDS = 0.004
_MAX_BATCH = 512
_MAX_FAILED_STARTS = 3
_MAX_QUEUED = 10_000  # calls waiting to be sent; past it, fork() waits (back-pressure)
_STOP_SECONDS = 2.0  # at shutdown, how long a worker told to stop may take to end


class _Worker:
    """One worker process and the calls it holds."""

    def __init__(self, path: list[str], template: Optional[Template] = None) -> None:
        from multiprocessing.connection import Connection

        parent_end, child_end = _socketpair()
        shm_fd, self.shm = _shared_slot()
        forked = template.fork(child_end, shm_fd, path) if template is not None else None
        self.process: Any = forked if forked is not None else _spawn(child_end, shm_fd, path)
        os.close(child_end)
        os.close(shm_fd)
        self.conn = Connection(parent_end)
        self.ready = False  # the worker said hello: it runs a call as soon as it gets one
        self.held: dict[int, tuple] = {}  # queue entries sent, unanswered, in send order
        self.blobs: set[int] = set()  # keys of the large arguments this worker holds
        self.answered: dict[int, tuple[Task, int]] = {}  # answered, being completed
        self.batches: deque[int] = deque()  # unanswered calls of each batch in flight
        self.known: set[int] = set()  # keys of the functions this worker has
        self.states: dict[int, int] = {}  # key -> state of that function's globals here
        self.where = -1  # the caller's directory/environment generation it is in (context)
        self.sent: dict[int, float] = {}  # --stats: when each call held was sent
        self.last_end = 0.0  # --stats: when the call it ran last ended

    def progress(self) -> tuple[int, int]:
        """(id of the call begun last, id of the call finished last), -1 for none."""
        from .worker import SLOT

        return SLOT.unpack_from(self.shm, 0)

    def held_done(self, task_id: int) -> None:
        """The worker answered ``task_id``: move it from the held calls to ``answered``."""
        task, key = self.held.pop(task_id)[:2]
        self.answered[task_id] = (task, key)
        self.batches[0] -= 1
        if self.batches[0] == 0:
            self.batches.popleft()

    def sort_held(self) -> tuple[list, list, list]:
        """Split the held calls at a crash: (finished, running, never begun)."""
        started, finished = self.progress()
        done: list[tuple] = []
        running: list[tuple] = []
        later: list[tuple] = []
        ids = list(self.held)
        cut = ids.index(finished) + 1 if finished in self.held else 0
        for task_id in ids[:cut]:
            done.append(self.held[task_id])
        for task_id in ids[cut:]:
            (running if task_id == started and started != finished else later).append(
                self.held[task_id])
        return done, running, later

    def close(self) -> None:
        self.conn.close()
        self.shm.close()
        from .template import Forked

        if type(self.process) is Forked:
            self.process.close()


def _spawn(child_end: int, shm_fd: int, path: list[str]) -> subprocess.Popen:
    """``start_method="spawn"``: the worker is a fresh interpreter."""
    import subprocess

    code = ("import sys; from autofork.runtime.worker import main; "
            f"main({child_end}, {shm_fd}, {os.getpid()}, sys.argv[1:])")
    return subprocess.Popen(
        # -W: the program's warning options hold in the workers too ("error" raises there)
        [sys.executable, *(f"-W{option}" for option in sys.warnoptions), "-c", code, *path],
        pass_fds=(child_end, shm_fd), close_fds=True,
        # Its own session: a terminal's Ctrl-C (sent to the foreground process group)
        # reaches only this process, which then kills the workers.  (No preexec_fn:
        # it is not safe in a process with threads, and deadlocked here.)
        stdin=subprocess.DEVNULL, start_new_session=True,
    )


# The GIL's switch interval while the workers start (see start); Python's default is 5 ms.
_STARTING_SWITCH_INTERVAL = 0.0005


def _import_for_workers() -> None:
    """Import what starting and talking to workers needs, before the first call.

    Done later, while the program's thread runs a call itself (``steal``), each file an
    import reads releases the GIL, and taking it back from a thread that computes costs
    a switch interval (5 ms): importing these took 0.6 s there, and the workers started
    that much later.
    """
    import mmap  # noqa: F401
    import select  # noqa: F401
    import socket  # noqa: F401
    from multiprocessing import connection  # noqa: F401

    from . import worker  # noqa: F401  (SLOT)


def _socketpair() -> tuple[int, int]:
    import socket

    a, b = socket.socketpair()
    return a.detach(), b.detach()


def _shared_slot() -> tuple[int, mmap.mmap]:
    """A file descriptor for the worker and this side's map of the same memory."""
    import mmap

    from .worker import SLOT

    if hasattr(os, "memfd_create"):  # Linux: no file, and no tempfile import (~5 ms)
        fd = os.memfd_create("autofork-slot")
        try:
            os.write(fd, SLOT.pack(-1, -1))
            return os.dup(fd), mmap.mmap(fd, SLOT.size)
        finally:
            os.close(fd)
    import tempfile

    with tempfile.TemporaryFile() as handle:
        handle.write(SLOT.pack(-1, -1))
        handle.flush()
        return os.dup(handle.fileno()), mmap.mmap(handle.fileno(), SLOT.size)


class _FunctionCache:
    """Each function is pickled once; workers keep it under a small integer key.

    Equal payloads share a key: a loop that forks ``lambda x: x + 1`` makes a new function
    object each time, and without this every worker (and ``ProcessPool._data``) would
    keep one copy per iteration.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[int, bytes, Any, Optional[Watch]]] = {}
        self._by_bytes: dict[bytes, int] = {}
        self._keys = itertools.count()
        self._lock = threading.Lock()

    def key_of(self, fn: Callable[..., Any]) -> Optional[int]:
        entry = self._by_id.get(id(fn))
        return entry[0] if entry is not None and entry[2]() is fn else None

    def get(self, fn: Callable[..., Any]) -> tuple[int, bytes, Optional[Watch]]:
        """(key, pickled function, the watch of the globals it reads)."""
        entry = self._by_id.get(id(fn))
        if entry is not None and entry[2]() is fn:
            return entry[0], entry[1], entry[3]
        watch = freshness.watch(fn)  # the values pickled below are its state 0
        data = cloud_dumps(for_workers(fn))
        fn_id = id(fn)
        with self._lock:
            key = self._by_bytes.get(data)
            if key is None:
                key = self._by_bytes[data] = next(self._keys)
            try:
                ref: Any = weakref.ref(fn, lambda _: self._by_id.pop(fn_id, None))
            except TypeError:  # builtins take no weak references: keep them alive
                ref = (lambda kept: (lambda: kept))(fn)
            self._by_id[fn_id] = (key, data, ref, watch)
        return key, data, watch


def _split_method(task: Task) -> tuple[Callable[..., Any], tuple]:
    """A bound method travels as its function plus ``self`` (pickled with each call)."""
    fn = task.fn
    if isinstance(fn, types.MethodType):
        return fn.__func__, (fn.__self__, *task.args)
    return fn, task.args


class ProcessPool:
    """Worker processes, a queue of pickled calls, and the thread that connects them."""

    def __init__(self, workers: int, start_method: str = "forkserver") -> None:
        self.size = workers
        self._start_method = start_method
        context.install()  # before any worker starts: each later change is counted
        self._template: Optional[Template] = None
        self._ready = 0  # workers that said hello
        self._wanted = False  # somebody asked for workers (ready()): fork them now
        # task, fn key, call, blob keys, state of the function's globals (freshness),
        # generation of the caller's directory and environment (context)
        self._queue: deque[tuple[Task, int, bytes, tuple, Optional[tuple], int]] = deque()
        self._blobs = _Blobs()
        self._workers: dict[Connection, _Worker] = {}
        self._functions = _FunctionCache()
        self._data: dict[int, bytes] = {}
        self._means: dict[int, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        self._sleeping = False
        self._closing = False
        self._killing = False
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self.busy = 0  # calls sent and not yet answered
        self._failed_starts = 0  # workers in a row that died before running anything
        self._room_freed = threading.Condition()
        # Held by whoever sends or books answers: the dispatcher, or a forking thread
        # that sends straight to an idle worker (_send_direct).
        self._send_lock = threading.Lock()
        self._blocked = 0  # callers waiting for room in the queue
        self._answered = False  # a worker has answered (for the DEBUG timing of phases)
        # Held while the dispatcher starts a process (template, spawned worker) and by
        # close: once closing, no process is started that close would not see.
        self._start_lock = threading.Lock()
        # The queue entries of calls made while no worker was ready, by id of their task:
        # a thread that waits for one may run it itself (steal).
        self._early: dict[int, tuple] = {}
        self._stealing = 0  # calls running in the caller's threads (steal): each is a core
        self._interval: Optional[float] = None  # the GIL's switch interval before start

    # -- the caller's side ---------------------------------------------------------

    def submit(self, task: Task) -> None:
        """Queue ``task`` (once its inputs are ready); raises NotSendable naming what
        cannot be pickled."""
        start_when_ready(task, self._enqueue)

    def _enqueue(self, task: Task) -> None:
        if self._closing:
            raise RuntimeError("autofork's process pool is closed (its workers could not start, "
                               "or the program is exiting)")
        fn, args = _split_method(task)
        key, data, watch = self._function(task, fn)
        self._data[key] = data
        if type(task) is Chunk:
            call, blobs, state = _pickle_chunk(task), (), task.snapshot
        else:
            call, blobs = _pickle_call(task, args, self._blobs)
            state = None if watch is None else watch.state_for(task.name)
        task.executor = self
        if len(self._queue) >= _MAX_QUEUED and threading.current_thread() is not self._thread:
            self._wait_for_room()
        # A chunk runs where its calls were made (it is closed when that changes).
        generation = task.generation if type(task) is Chunk else -1  # type: ignore[attr-defined]
        entry = (task, key, call, blobs, state, generation if generation >= 0 else context.current())
        if not self._ready and not blobs:
            self._early[id(task)] = entry
        self._queue.append(entry)
        if self._thread is None:
            self.start()
        if self._sleeping and not self._send_direct():
            self._sleeping = False
            os.write(self._wake_w, b"\0")

    def _function(self, task: Task, fn: Callable[..., Any]) -> tuple[int, bytes, Optional[Watch]]:
        try:
            return self._functions.get(fn)
        except Exception as error:  # noqa: BLE001
            raise NotSendable(f"fork({task.name}, ...): the function cannot be sent to a worker "
                              f"process: {type(error).__name__}: {error}. Mark it @io_bound to "
                              "run it in a thread of this process.") from error

    def watch_of(self, fn: Callable[..., Any]) -> Optional[Watch]:
        """The watch of the globals that ``fn`` reads (see ``freshness``); raises
        NotSendable if ``fn`` cannot be pickled."""
        return self._function(Task(fn, (), {}, "cpu"), fn)[2]

    def _send_direct(self) -> bool:
        """While the dispatcher sleeps, hand the queue to an idle worker from this thread.

        Saves two thread switches per call when calls come one at a time (a chain of
        dependent forks, a recursion).  True when nothing is left for the dispatcher.
        """
        if threading.current_thread() is self._thread:
            return False
        with self._send_lock:
            if not self._queue:
                return True  # the dispatcher took it meanwhile
            if not self._sleeping or self._closing:
                return False
            for worker in self._workers.values():
                if not worker.batches and self._room(worker):
                    return self._send_batch(worker) and not self._queue
        return False

    def _wait_for_room(self) -> None:
        """Back-pressure: a loop that forks faster than the workers finish waits here."""
        with self._room_freed:
            self._blocked += 1
            try:
                while len(self._queue) >= _MAX_QUEUED // 2 and not self._closing:
                    self._room_freed.wait(0.1)
            finally:
                self._blocked -= 1

    def steal(self, task: Task) -> bool:
        """While no worker is ready, run a call the rewriter forked in the waiting thread
        (the program never waits for a worker to start).  Never an explicit ``fork``: it
        runs in a worker, with its own pid, memory and crash.

        It runs as a worker would run it: the plain function (its marked calls are plain
        calls, so its value is a value, never a proxy of more forks), on a copy of its
        arguments as they were pickled at the fork; and only while what it reads is as
        it was then (the globals its function reads, the directory and environment), else
        it waits for a worker, which gets them as they were (``freshness``, ``context``).
        """
        if self._ready or not task.caller_may_run:
            return False
        entry = self._early.get(id(task))
        if entry is None or entry[0] is not task or not _unchanged(entry, self._functions):
            return False
        if not task.claim():
            return False  # the dispatcher skips a claimed entry of the queue
        self._early.pop(id(task), None)
        began = time.perf_counter()
        self._stole(+1)
        try:
            self._run_stolen(task, entry[2])
        finally:
            self._stole(-1)
            if self._sleeping and not self._closing:  # a worker may get a call now
                self._sleeping = False
                os.write(self._wake_w, b"\0")
        if stats.active:
            stats.ran_here(task, time.perf_counter() - began, "starting")
        return True

    def _stole(self, change: int) -> None:
        """Count the calls the caller's threads run (a worker gets a call only while a
        core is free: ``_room``)."""
        with self._lock:
            self._stealing += change

    @staticmethod
    def _run_stolen(task: Task, call: bytes) -> None:
        if type(task) is Chunk:
            task.fn = for_workers(task.fn)
            _run_chunk_here(task, call)  # type: ignore[arg-type]
            return
        task.fn = fn = for_workers(_split_method(task)[0])
        task.output = captured = None if task.seq < 0 else []
        try:
            args, kwargs = pickle.loads(call)
        except BaseException as exc:  # noqa: BLE001 - as a worker that cannot load it
            ok, outcome = False, Failure.local(exc, skip=0)
        else:
            ok, outcome = _run_copy(fn, args, kwargs, captured)
        if ok:
            task.set_result(outcome)
        else:
            task.set_failure(outcome)

    def mean_seconds(self, fn: Callable[..., Any]) -> Optional[float]:
        """The measured mean run time of one call of ``fn`` in a worker, if known."""
        key = self._functions.key_of(fn)
        return None if key is None else self._means.get(key)

    def pending(self) -> int:
        """Calls queued or running."""
        return len(self._queue) + self.busy

    def idle(self) -> int:
        """How many workers have nothing to do right now."""
        return max(0, self.size - self.busy - len(self._queue))

    def close(self, kill: bool = False) -> None:
        """Stop the workers: at once with ``kill``, else after the calls they hold."""
        self._closing = True
        self._killing = kill
        thread = self._thread
        if thread is not None and not kill:
            with self._start_lock:
                unstarted = not self._workers and self.busy == 0 and self._nothing_to_send()
            if unstarted:
                # The dispatcher has started no worker, and now never will (it checks
                # _closing under the same lock): exit does not wait for its imports
                # (80-130 ms under load, for a program that never needed a worker).  The
                # template, if started, is killed when the dispatcher ends, or dies with
                # the program (end of file on its socket, PR_SET_PDEATHSIG).
                os.write(self._wake_w, b"\0")
                return
        if thread is not None:
            if kill:
                for worker in list(self._workers.values()):
                    if worker.process.poll() is None:
                        worker.process.kill()
            os.write(self._wake_w, b"\0")
            if kill:
                thread.join(timeout=2.0)
            else:  # after the calls it holds (none at exit): past 2 s, the log says why
                _phases.wait("pool: dispatcher stopped", lambda timeout: _join(thread, timeout),
                             warn=self.busy == 0 and self._nothing_to_send())
        if thread is None or not thread.is_alive():
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- the dispatcher thread ------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher, which starts the workers (the first submit does it too)."""
        with self._lock:
            if self._thread is not None:
                return
            # The workers start in the dispatcher thread: the forking thread goes on at
            # once (a loop of tiny calls is measured and run inline meanwhile).
            self._thread = threading.Thread(target=self._dispatch, args=(list(sys.path),),
                                            name="autofork-dispatcher", daemon=True)
            # Until the workers are up, the dispatcher that starts them takes the GIL back
            # after each of its system calls from a program thread that computes (a call
            # it runs itself, a recursion's top levels): each time after a switch
            # interval (5 ms), which made the workers ready ~0.2-0.6 s late.
            self._interval = sys.getswitchinterval()
            sys.setswitchinterval(min(self._interval, _STARTING_SWITCH_INTERVAL))
            self._thread.start()

    def _started(self) -> None:
        """The workers are up (or will not be): the switch interval is the program's again."""
        with self._lock:
            interval, self._interval = self._interval, None
            if interval is not None and sys.getswitchinterval() == min(
                    interval, _STARTING_SWITCH_INTERVAL):  # unless the program changed it
                sys.setswitchinterval(interval)

    def _dispatch(self, path: list[str]) -> None:
        try:
            self._start_workers(path)
            if self._closing and self.busy == 0 and self._nothing_to_send():
                return  # the program ended while the pool started
            from multiprocessing.connection import wait

            while True:
                if not self._killing:
                    with self._send_lock:
                        self._send_work()
                if self._closing and (self._killing or self.busy == 0 and self._nothing_to_send()):
                    break
                self._sleeping = True
                if self._queue and self._has_room():
                    self._sleeping = False
                    continue
                ready = wait([self._wake_r, *self._workers])
                self._sleeping = False
                for source in ready:
                    if source == self._wake_r:
                        os.read(self._wake_r, 4096)
                    else:
                        self._receive(self._workers[source])  # type: ignore[index]
        finally:
            self._started()
            self._stop_workers()

    def _start_workers(self, path: list[str]) -> None:
        if self._closing and self._nothing_to_send():
            return  # the program ended before this thread ran: exit waits for no start
        from .template import Template, preload_names

        began = time.perf_counter()
        if self._start_method == "forkserver":
            with self._start_lock:
                if self._closing and self._nothing_to_send():
                    return  # closed while this thread imported: close did not wait for it
                self._template = Template(path)
            log.debug("template process %d started", self._template.process.pid)
            _import_for_workers()
            # Fork the workers at the first call, not before: the modules the program has
            # imported by then are imported in the template first (its preload).
            if not self._wait_until(lambda: bool(self._queue or self._wanted)):
                return  # exit does not start workers that nothing is left for
            self._template.preload(preload_names())
            if not self._wait_until(self._template_answered):
                return  # nor wait for the template to start or to import
        else:
            _import_for_workers()
        for _ in range(self.size):
            with self._start_lock:
                if self._closing and self._nothing_to_send():
                    break
                self._add_worker(path)
        _phases.note("pool: %d workers started", began, len(self._workers))
        log.debug("started %d worker processes (%s)", len(self._workers), self._start_method
                 if self._template is None or not self._template.broken else "spawn")

    def _wait_until(self, done: Callable[[], bool]) -> bool:
        """Wait for ``done()`` (checked at each wake-up, and when the template answers);
        False if the pool closes first with no queued call left to run."""
        import select

        while not done():
            if self._closing and self._nothing_to_send():
                return False
            self._sleeping = True
            if done():  # a call queued before _sleeping was set did not wake us
                self._sleeping = False
                continue
            sources: list[Any] = [self._wake_r]
            if self._template is not None and not self._template.broken:
                sources.append(self._template)
            ready = select.select(sources, [], [])[0]
            self._sleeping = False
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
        return True

    def _template_answered(self) -> bool:
        """Whether the template answered the preload (or died: then workers are spawned)."""
        import select

        template = self._template
        if template is None or template.broken or template.answered:
            return True  # (asked again by _wait_until after the answer was read: a hang)
        if not select.select([template], [], [], 0)[0]:
            return False
        template.preloaded()
        return True

    def _nothing_to_send(self) -> bool:
        """Whether every queued call was taken by a waiting thread (a stolen call stays
        in the queue until a batch skips it).  Closing waits for the others only: before
        this, a call the caller ran itself while the pool started kept the dispatcher
        waiting at exit for workers that were never started (a hang)."""
        return all(entry[0].state != QUEUED for entry in list(self._queue))

    def _add_worker(self, path: list[str]) -> None:
        template = self._template
        worker = _Worker(path, template if template is not None and not template.broken
                         else None)
        with self._send_lock:
            self._workers[worker.conn] = worker
        log.debug("worker process %d started", worker.process.pid)

    def ready(self) -> bool:
        """Whether a worker is up and can run a call at once (not while they start).

        Asking means calls are coming: the pool starts, and forks its workers now.
        """
        if self._ready:
            return True
        if not self._wanted:
            self._wanted = True
            if self._thread is None:
                self.start()
            os.write(self._wake_w, b"\0")
        return False

    def _room(self, worker: _Worker) -> bool:
        if not worker.ready:
            return False  # until then a waiting caller may still run a call itself
        if not worker.batches and self._stealing:
            # A call the caller runs itself holds a core: one more worker would compete
            # with it and with the others (a coarse job then ends later, not sooner).
            working = sum(1 for other in self._workers.values() if other.batches)
            return working + self._stealing < self.size
        # A second batch in flight hides the round trip for short calls; only when there
        # is work for every worker, else one worker would hold what another could run.
        if not worker.batches:
            return True
        return (len(worker.batches) < 2 and self._short()
                and len(self._queue) >= 2 * len(self._workers))

    def _has_room(self) -> bool:
        return any(self._room(worker) for worker in self._workers.values())

    def _short(self) -> bool:
        """Whether the next queued call is known to be short enough to batch."""
        mean = self._means.get(self._queue[0][1]) if self._queue else None
        return mean is not None and mean < _BATCH_SECONDS

    def _send_work(self) -> None:
        for worker in sorted(self._workers.values(), key=lambda w: len(w.batches)):
            while self._queue and self._room(worker) and self._send_batch(worker):
                pass
        if self._blocked and len(self._queue) < _MAX_QUEUED // 2:
            with self._room_freed:
                self._room_freed.notify_all()

    def _send_batch(self, worker: _Worker) -> bool:
        batch: list[tuple] = []
        size = self._batch_size()
        while self._queue and len(batch) < size:
            entry = self._queue.popleft()
            task, key, call, blobs, state, where = entry
            if self._early:
                self._early.pop(id(task), None)
            if not task.claim():
                self._blobs.release(blobs)
                continue  # a waiting thread took it
            fn_bytes, update = _function_and_globals(worker, key, state, self._data)
            moved = None
            if where != worker.where:
                moved, worker.where = context.snapshot(where), where
            batch.append((id(task), key, fn_bytes, call, type(task) is Chunk,
                          self._blobs.missing(worker.blobs, blobs), bool(blobs), update, moved))
            worker.held[id(task)] = entry
        if not batch:
            return False
        if stats.active:
            sent = time.perf_counter()
            for item in batch:
                worker.sent[item[0]] = sent
        worker.batches.append(len(batch))
        self.busy += len(batch)
        forget = self._blobs.forgotten(worker.blobs)
        try:
            worker.conn.send_bytes(pickle.dumps((forget, batch), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # the worker is dead: _receive sees EOF and settles what it held
        return True

    def _batch_size(self) -> int:
        mean = self._means.get(self._queue[0][1])
        if mean is None or mean >= _BATCH_SECONDS:
            return 1
        fair = -(-len(self._queue) // max(1, len(self._workers)))
        return max(1, min(_MAX_BATCH, int(_BATCH_SECONDS / max(mean, 1e-6)), fair))

    def _receive(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._crashed(worker)
            return
        received = time.perf_counter()
        outcomes = pickle.loads(message)
        if not outcomes:  # the worker's hello: it is ready
            if not worker.ready:
                worker.ready = True
                self._ready += 1
                if self._ready == 1:
                    _phases.note("pool: a worker is ready")
                    self._early.clear()  # from now on, waiting threads wait for workers
                if self._ready == self.size:
                    self._started()
            return
        self._failed_starts = 0
        if not self._answered:
            self._answered = True
            _phases.note("pool: first result")
        with self._send_lock:  # the books; the tasks are completed outside the lock
            for entry in outcomes:
                self._blobs.release(worker.held[entry[0]][3])
                worker.held_done(entry[0])
            self.busy -= len(outcomes)
        for task_id, ok, outcome, begin, end, written in outcomes:
            task, key = worker.answered.pop(task_id)
            task.output = written
            calls = len(task.items) if type(task) is Chunk else 1  # type: ignore[attr-defined]
            seconds = (end - begin) / calls
            mean = self._means.get(key)
            self._means[key] = seconds if mean is None else 0.8 * mean + 0.2 * seconds
            if stats.active:
                stats.ran(task, "process", worker.process.pid, begin, end, calls,
                          _overhead(worker, task_id, begin, end, received - outcomes[-1][4]))
            if not ok:
                task.set_failure(pickle.loads(outcome))
            elif type(task) is Chunk:
                task.set_outcomes(pickle.loads(outcome))
            else:
                task.set_result(pickle.loads(outcome))

    def _crashed(self, worker: _Worker) -> None:
        with self._send_lock:
            self._settle_crash(worker)

    def _settle_crash(self, worker: _Worker) -> None:
        cause = _describe_exit(worker.process.wait())
        if worker.progress()[0] == -1:
            self._failed_starts += 1
        if self._failed_starts >= _MAX_FAILED_STARTS:
            self._killing = self._closing = True
            log.error("worker processes die before running anything (%s); giving up", cause)
            cause += "; worker processes cannot start, see their error output"
        done, running, later = worker.sort_held()
        self.busy -= len(worker.held)
        if worker.ready:
            self._ready -= 1
        del self._workers[worker.conn]
        worker.close()
        if not self._killing:
            log.warning("a worker process died (%s); starting another", cause)
        for entry in (*running, *done, *(later if self._killing else ())):
            self._blobs.release(entry[3])
        for task, *_ in running:
            task.set_failure(_crash_failure(task, cause, ""))
        for task, *_ in done:
            task.set_failure(_crash_failure(task, cause, "the call had finished, but its "
                                            "result was lost with the worker"))
        if self._killing:
            for task, *_ in later:
                task.set_failure(_crash_failure(task, cause, "autofork was shutting down"))
            return
        for entry in reversed(later):
            entry[0].requeue()
            self._queue.appendleft(entry)
        template = self._template
        replacement = _Worker(list(sys.path), template if template is not None
                              and not template.broken else None)
        self._workers[replacement.conn] = replacement

    def _stop_workers(self) -> None:
        """Exit waits only for the workers that ran calls: told to stop, each runs its
        ``atexit`` handlers and ends (milliseconds).  A worker never given a call (idle,
        or still starting) and the template are killed: nothing of the program's is in
        them, and exit never waits for a process to start."""
        workers = list(self._workers.values())
        told = []
        for worker in workers:
            if worker.known or worker.held:
                told.append(worker)
                try:
                    worker.conn.send_bytes(pickle.dumps(None))
                except OSError:
                    pass  # already dead: wait() below reads its status
            else:
                from .template import discard

                discard(worker.process)
        # They end at once when told to (worker._exit_now); one that does not is killed,
        # and the log says so: exit never waits long in silence.
        deadline = time.monotonic() + (0.5 if self._killing else _STOP_SECONDS)
        for worker in told:
            import subprocess  # for its TimeoutExpired; not when no worker ran a call

            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker process %d did not stop within %.1f s of being told to; "
                            "killing it", worker.process.pid, _STOP_SECONDS)
                worker.process.kill()
                worker.process.wait()
            for task, *_ in worker.held.values():
                task.set_failure(_crash_failure(task, _describe_exit(worker.process.returncode),
                                                "autofork was shutting down"))
        for worker in workers:
            worker.close()
        self._workers = {}
        self._ready = 0
        if self._template is not None:
            self._template.close()
            self._template = None
        for task, *_ in list(self._queue):
            if task.claim():
                task.set_failure(_crash_failure(task, "not started", "autofork was shutting down"))
        self._queue.clear()
        self._early.clear()


def _function_and_globals(worker: _Worker, key: int, state: Optional[tuple[int, Optional[bytes]]],
                          functions: dict[int, bytes]) -> tuple[Optional[bytes], Optional[bytes]]:
    """What a worker needs besides the call: the function's bytes if it lacks them (or
    must start again from them), and the globals rebound since, if its state differs."""
    number, update = state or (0, None)
    if key not in worker.known:
        worker.known.add(key)
        worker.states[key] = number
        return functions[key], update
    if worker.states.get(key, 0) == number:
        return None, None
    worker.states[key] = number
    if number == 0:
        return functions[key], None  # the state it was pickled with: load it afresh
    return None, update


def _join(thread: threading.Thread, timeout: Optional[float]) -> bool:
    """Join ``thread`` for up to ``timeout`` seconds; True once it has ended."""
    thread.join(timeout)
    return not thread.is_alive()


def _unchanged(entry: tuple, functions: _FunctionCache) -> bool:
    """Whether what a queued call reads is as it was when it was made: the globals its
    function reads (their state then: ``entry[4]``) and the directory and environment
    (their generation then: ``entry[5]``)."""
    if entry[5] != context.current():
        return False
    state = entry[4]
    if state is None:
        return True
    task = entry[0]
    fn = task.fn if type(task) is Chunk else _split_method(task)[0]
    try:
        watch = functions.get(fn)[2]
        return watch is not None and watch.state()[0] == state[0]
    except Exception:  # noqa: BLE001 - a rebound global that cannot be pickled: changed
        return False


def _overhead(worker: _Worker, task_id: int, begin: float, end: float, back: float) -> float:
    """What autofork added to one call: the trip to the worker once it could run there
    (not the time it waited in the queue or behind the calls before it), and the trip
    of its result back (``back``, not the time it waited for the rest of its message)."""
    sent = worker.sent.pop(task_id, begin)
    there = max(0.0, begin - max(sent, worker.last_end))
    worker.last_end = end
    return there + back


def _run_chunk_here(chunk: Chunk, call: bytes) -> None:
    """Run a claimed chunk's calls in this thread (their arguments are in ``call``)."""
    outcomes: list = []
    written: list = []
    try:
        calls = pickle.loads(call)
    except BaseException as exc:  # noqa: BLE001 - every call of it fails, none hangs
        failure = Failure.local(exc, skip=0)
        chunk.set_outcomes([(False, failure)] * len(chunk.items))
        return
    for item, (args, kwargs) in zip(chunk.items, calls):
        captured: Optional[list] = None if item.seq < 0 else []
        outcomes.append(_run_copy(chunk.fn, args, kwargs, captured))
        written.append(captured or None)
    chunk.output = written if any(written) else None
    chunk.set_outcomes(outcomes)


def _run_copy(fn: Callable[..., Any], args: tuple, kwargs: dict,
              captured: Optional[list]) -> tuple[bool, Any]:
    """One call in this thread, on copies of the caller's arguments, as a worker runs it:
    (True, value) or (False, Failure); what it writes, and the arguments it changes in
    place (``changes``), go to ``captured`` (None: not ordered, it writes at once)."""
    from . import changes

    before = changes.before(fn, args, kwargs)
    try:
        if captured is None:
            return True, fn(*args, **kwargs)
        return True, output.run_captured(fn, args, kwargs, captured)
    except BaseException as exc:  # noqa: BLE001 - the caller sees it where it uses the value
        # The traceback starts at the function's own frame, as in the sequential program.
        return False, Failure.local(exc, skip=1 if captured is None else 2)
    finally:
        if before is not None:
            changes.report(fn, before, captured)


def _describe_exit(code: int) -> str:
    import signal

    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _crash_failure(task: Task, cause: str, detail: str) -> Failure:
    error = WorkerCrashed(task.name, cause, detail)
    return Failure(cloud_dumps(error), [], task.site)


def _pickle_call(task: Task, args: tuple, blobs: Optional[_Blobs] = None) -> tuple[bytes, tuple]:
    """The pickled call, and the keys of the large arguments it refers to."""
    kwargs = task.kwargs
    large = {id(a): a for a in (*args, *kwargs.values()) if _is_blob(a)} if blobs else None
    try:
        if not large:
            return dumps((args, kwargs)), ()
        keys = {ident: blobs.key(value) for ident, value in large.items()}  # type: ignore[union-attr]
        try:
            with io.BytesIO() as buffer:
                pickler = _RefPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
                pickler.refs = keys
                pickler.dump((args, kwargs))
                return buffer.getvalue(), tuple(keys.values())
        except BaseException:
            blobs.release(tuple(keys.values()))  # type: ignore[union-attr]  # not queued
            raise
    except Exception as error:  # noqa: BLE001
        raise unsendable_argument(task, error) from error


# -- large arguments, sent once per worker ----------------------------------------------

_BLOB_BYTES = 1 << 20  # an immutable argument this large is pickled once and sent once
_BLOB_BUDGET = 512 << 20  # the most bytes of such arguments kept for the workers


def _is_blob(value: Any) -> bool:
    """A large value that cannot change: bytes, str, or a read-only NumPy array.

    Only immutable values qualify: a list or a writable array may change between two
    forks, and each call must see it as it was when it was forked.
    """
    kind = type(value)
    if kind is bytes or kind is str:
        return len(value) >= _BLOB_BYTES
    if kind.__name__ == "ndarray" and kind.__module__ == "numpy":
        return not value.flags.writeable and value.nbytes >= _BLOB_BYTES
    return False


class _RefPickler(Pickler):
    """Pickles a call, writing its large arguments as references to blobs."""

    refs: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Optional[int]:
        return self.refs.get(id(obj))


class _Blobs:
    """Large immutable arguments, pickled once, each sent at most once to each worker.

    Kept (with a reference to the value, so that its id stays its own) until
    ``_BLOB_BUDGET`` is passed; then the oldest go, and the workers forget them too.
    A blob that a call still queued or running refers to (each ``key`` pins it until
    ``release``) is never dropped: past the budget, the queue's blobs are all kept.
    """

    def __init__(self) -> None:
        self._by_id: dict[int, tuple[Any, int]] = {}
        self.data: dict[int, bytes] = {}
        self._pins: dict[int, int] = {}  # key -> calls queued or running that refer to it
        self._keys = itertools.count()
        self._size = 0
        self._lock = threading.Lock()

    def key(self, value: Any) -> int:
        """The key of ``value``'s blob, pinned for one call (see ``release``)."""
        with self._lock:
            entry = self._by_id.get(id(value))
            if entry is not None and entry[0] is value:
                self._pins[entry[1]] = self._pins.get(entry[1], 0) + 1
                return entry[1]
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            key = next(self._keys)
            self._by_id[id(value)] = (value, key)
            self.data[key] = data
            self._pins[key] = 1
            self._size += len(data)
            self._evict()
        return key

    def release(self, keys: tuple) -> None:
        """A call that referred to ``keys`` is answered (or will never be sent)."""
        if not keys:
            return
        with self._lock:
            for key in keys:
                left = self._pins.get(key, 0) - 1
                if left > 0:
                    self._pins[key] = left
                else:
                    self._pins.pop(key, None)
            self._evict()

    def _evict(self) -> None:
        """Drop the oldest blobs no call refers to, while over the budget."""
        if self._size <= _BLOB_BUDGET:
            return
        for ident, (_, key) in list(self._by_id.items()):
            if self._size <= _BLOB_BUDGET or len(self._by_id) <= 1:
                return
            if key not in self._pins:
                del self._by_id[ident]
                self._size -= len(self.data.pop(key))

    def missing(self, known: set[int], keys: tuple) -> Optional[list]:
        """(key, data) of the blobs among ``keys`` that a worker does not hold yet."""
        if not keys:
            return None
        send = [(key, self.data[key]) for key in keys if key not in known]
        known.update(keys)
        return send

    def forgotten(self, known: set[int]) -> list[int]:
        """Keys a worker holds that are gone from here: the worker may drop them."""
        gone = [key for key in known if key not in self.data] if known else []
        known.difference_update(gone)
        return gone


def _pickle_chunk(chunk: Chunk) -> bytes:
    calls = [(item.args, item.kwargs) for item in chunk.items]
    for item in chunk.items:
        item.args = item.kwargs = None  # type: ignore[assignment]  # sent: free them
    try:
        return dumps(calls)
    except Exception:  # noqa: BLE001 - name the culprit, as fork() does for one call
        for item, (args, kwargs) in zip(chunk.items, calls):
            item.args, item.kwargs = args, kwargs
            _pickle_call(item, args)  # type: ignore[arg-type]
        raise


def unsendable_argument(task: Task, error: Exception) -> NotSendable:
    """The error for a call whose arguments do not pickle: it names the first argument
    that does not, and says what to do (also used by the Dask engine)."""
    named = [(f"argument {i + 1}", value) for i, value in enumerate(task.args)]
    named += [(f"keyword argument {key!r}", value) for key, value in task.kwargs.items()]
    culprit = "an argument"
    for label, value in named:
        try:
            cloud_dumps(value)
        except Exception:  # noqa: BLE001
            culprit = f"{label} ({type(value).__name__} {_short_repr(value)})"
            break
    return NotSendable(
        f"fork({task.name}, ...): {culprit} cannot be sent to a worker process: "
        f"{type(error).__name__}: {error}. Pass something picklable, or mark "
        f"{task.name} @io_bound to run it in a thread of this process.")


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
