"""Granularity: a marked function runs forked, in chunks, or inline, by what it costs.

``@implicit_fork`` turns every call into a fork, and a call of a few microseconds costs
more to send to a process than to run.  So for the calls the rewriter forks (and only
those: an explicit ``fork`` always forks), autofork learns each function's mean run time
and decides per call:

* unknown yet: fork; when ``_MEASURE_AFTER`` calls are already waiting (a loop forks
  faster than the pool answers), or ``_MEASURE_STARTING`` while no worker is ready yet
  (the caller would run them itself), run the next one inline, timed, so the cost of a
  tiny function is known at once instead of after thousands of needless forks;
* under ``_INLINE_BELOW`` (10 µs): run inline: no fork can pay for itself; from then on
  ``implicit.fork`` calls it after one set lookup (``running_inline``), for the rest of the run;
* under ``_CHUNK_BELOW`` (2 ms): gather calls into a chunk of about ``_CHUNK_SECONDS`` of
  work, sent to a worker as one task and answered as one message, each call still with
  its own proxy; a chunk goes when it is full, when one of its results is waited for,
  or after ``_CHUNK_WAIT`` seconds;
* longer: fork each call;
* a function that calls itself (``fib(n-1) + fib(n-2)``) forks only while a worker is
  idle, and only below its top levels: a call from outside and the calls of the first
  few levels under it run in the caller, so that each fork is a fraction of the work;
  with every worker busy, a call runs as the plain function (``plain``).  Recursion is
  what the rewriter saw: it rewrites a function's calls of itself into
  ``fork_recursive`` (not ``fork``), so ``def save(img): img.save()`` is not recursive;
* while no worker is ready yet (the pool is starting), a call is queued as usual, and a
  thread that waits for it runs it itself (``ProcessPool.steal``): the program never
  waits for a worker to start; a recursive call below the top levels forks while fewer
  calls than workers are queued, and runs here as the plain function otherwise.

Whatever the run time, forking pays only if something overlaps the call.  A chain, where
each call takes the previous call's result (``state = step(state, k)``) or the caller
needs each value as soon as it asked for it, gains nothing and pays a round trip per
call.  So autofork watches what the caller does with each forked call of a function:
when the next call comes, was the previous one still running, and did the new call
depend on it, or did the caller wait for it soon after forking it?  After
``_SERIAL_AFTER`` such calls in a row, the function's calls run here, in the caller
(``serial``: ``implicit.fork`` makes them after one dict lookup, ``running_serial``);
one call in ``probe`` is forked again to see whether overlap has
appeared (the next call came while it ran, and did not need it), in which case the
function forks again; else the probe interval doubles, up to ``_PROBE_MAX`` calls, and
never more than ``_PROBE_SECONDS`` of the function's run time, or 50 times what a probe
costs if more (at least ``_PROBE_MIN`` calls): a parallel loop of a 3 ms function after
a chain of it forks again within about 50 ms, not after 4,096 calls run here, while the
probes cost a chain at most about 2% of its time.

Only the local backend measures; elsewhere every call forks.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
import threading
import warnings
import time
import types
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import config, context, engine, output, stats
from .api import fork as _fork
from .api import start
from .dataflow import scan
from .errors import AutoforkWarning, NotSendable
from .executor import submit_or_fail
from .marks import kind_of
from .plain import for_workers
from .proxy import ResultProxy, new_proxy
from .task import DONE, QUEUED, Chunk, ChunkItem, Task, track

if TYPE_CHECKING:  # annotations only: typeguard would check the protocol on every fork
    from .executor import Engine

__all__ = ["call", "flush_all", "running_inline", "running_serial", "UNSCANNED"]

log = logging.getLogger("autofork")

_INLINE_BELOW = 10e-6
_CHUNK_BELOW = 2e-3
_CHUNK_SECONDS = 2e-3
_CHUNK_WAIT = 2e-3
_MAX_CHUNK = 1000
_SAMPLE_MASK = 1023  # an inline function is timed again once in 1,024 calls
# The rewritten call site, seen from _recursive or _chunked: they are called by _call,
# called by call, called by implicit.fork or Joiner.fork, called by the call site.
_CALLER = 4
_MEASURE_AFTER = 64  # calls of unknown cost waiting: time the next one inline
_MEASURE_STARTING = 8  # the same while no worker is ready (8 coarse calls still queue)
_QUICK = 200e-6  # a call this soon after the previous result: the caller was waiting for it
_SERIAL_AFTER = 8  # calls in a row that overlapped nothing: run the function here
_PROBE_FIRST = 64  # then fork one call in this many, to see whether overlap is back
_PROBE_MAX = 4096
_PROBE_SECONDS = 0.05  # ... nor more calls than take this long (or _PROBE_SHARE times
_PROBE_SHARE = 50  # what a probe costs the chain: on a busy machine a round trip is ms)
_PROBE_MIN = 8
_SPREAD_CALLS = 128  # the most calls of a recursion's top levels that run in the caller
# The rewriter calls this (not ``fork``) where a function calls itself.
RECURSIVE_CALL = "fork_recursive"


class _Function:
    """What autofork knows of one marked function."""

    __slots__ = ("eligible", "recursive", "plain", "mean", "inline", "size", "runs", "chunk",
                 "opened", "lock", "warned", "watch", "serial", "streak", "last", "last_at",
                 "probe_every", "countdown", "probing", "latency", "depth", "top", "spread")

    def __init__(self, eligible: bool, recursive: bool = False) -> None:
        self.eligible = eligible  # measured and chunked here (else: always fork)
        self.recursive = recursive  # it calls itself (by its global name)
        self.plain: Optional[Callable[..., Any]] = None  # its plain version, once needed
        self.mean: Optional[float] = None
        self.inline = False
        self.size = 0
        self.runs = 0
        self.chunk: Optional[Chunk] = None
        self.opened = 0.0
        self.lock = threading.Lock()
        self.warned = False  # about a call that could not be sent
        self.watch: Any = _UNSEEN  # freshness.Watch of the globals it reads, once asked
        # Overlap (see the module docstring): the last forked call and when it was made;
        # how many calls in a row overlapped nothing.
        self.serial = False  # its calls run here: they overlap nothing
        self.streak = 0
        self.last: Any = None
        self.last_at = 0.0
        self.probe_every = _PROBE_FIRST
        self.countdown = 0  # serial calls left before the next probe
        self.probing = False  # the last forked call was a probe
        self.latency: Optional[float] = None  # from fork to result, moving average
        # Recursion: the levels of it running here, and how many run here before a fork.
        self.depth = 0
        self.spread = 0  # calls run in the top levels since the outer call
        self.top = _top_levels(config.settings().workers) if recursive else 0


_UNSEEN = object()
_functions: dict[Any, _Function] = {}
# Functions that run inline, for implicit.fork's hot path: one set lookup, then the call.
# Once inline, a function stays inline for the run (a resample would cost every call).
# Read-only outside this module (the set is cleared in place, never replaced).
running_inline: set[Any] = set()
# Functions whose calls run in the caller because they overlap nothing (a chain), for
# the same hot path: while ``countdown`` > 1 and no argument is of a kind in ``UNSCANNED``
# (a proxy, or a container that may hold one), implicit.fork counts the call down and
# makes it, one dict lookup and no further call level; the call that reaches 1 goes
# through ``call``, which forks it as a probe.  Not with --stats (``call`` times them).
running_serial: dict[Any, "_Function"] = {}
UNSCANNED = frozenset((ResultProxy, list, tuple, dict))


def _learn(fn: Callable[..., Any]) -> _Function:
    eligible = (not config.IN_WORKER and type(fn) is types.FunctionType
                and kind_of(fn) == "cpu" and config.settings().backend == "local")
    return _functions.setdefault(fn, _Function(eligible, eligible and _calls_itself(fn)))


def _calls_itself(fn: Any) -> bool:
    """Whether the rewriter found a call of ``fn`` by itself (``fork_recursive``)."""
    names = fn.__code__.co_names
    return RECURSIVE_CALL in names


def call(fn: Callable[..., Any], args: tuple, kwargs: dict, recursive: bool = False) -> Any:
    """What a rewritten call site runs: a proxy, or the value when it ran inline.

    ``recursive``: the call site is inside ``fn`` itself (the rewriter's ``fork_recursive``).

    A call that cannot be sent to a worker (an open file, a lock among its arguments)
    runs here, as it did before the rewrite, with one AutoforkWarning per function: the
    rewriter made the fork, not the user, so it must not make the program fail.
    A call given an iterator runs here too (a rewritten program must see what the
    sequential one saw): a copy consumed in a worker would leave the caller's iterator
    where it was.
    """
    if _takes_iterator(args, kwargs):
        return fn(*args, **kwargs)
    try:
        return _call(fn, args, kwargs, recursive)
    except NotSendable as why:
        known = _functions.get(fn)
        if known is not None and not known.warned:
            known.warned = True
            warnings.warn(AutoforkWarning(f"{why}; running the call in this process "
                                          "instead"), stacklevel=3)
        return fn(*args, **kwargs)


_iterates: dict[type, bool] = {}  # per argument type: has __next__ (found once per type)


def _takes_iterator(args: tuple, kwargs: dict) -> bool:
    """Whether an argument is an iterator (a generator, ``iter(list)``, a file ...)."""
    for value in (*args, *kwargs.values()) if kwargs else args:
        kind = type(value)
        iterates = _iterates.get(kind)
        if iterates is None:
            iterates = _iterates[kind] = kind is not ResultProxy and hasattr(kind, "__next__")
        if iterates:
            return True
    return False


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict, recursive: bool) -> Any:
    known = _functions.get(fn)
    if known is None:
        known = _learn(fn)
    if known.serial and not (kwargs or _has_proxy(args)):
        known.countdown -= 1
        if known.countdown > 0:  # the hot path of a chain
            if stats.active:
                return _timed_serial(fn, args, kwargs)
            return fn(*args, **kwargs)
        known.serial = False
        running_serial.pop(fn, None)
        known.probing = True  # this call forks, and the next one tells what it overlapped
        known.last = None
    if known.inline:
        known.runs += 1
        if known.runs & _SAMPLE_MASK:
            if stats.active:
                stats.inline(fn.__qualname__, known.mean or 0.0, "small")
            return fn(*args, **kwargs)
        return _timed(fn, known, args, kwargs, "small")
    if not known.eligible:
        return _fork(fn, *args, **kwargs)
    mean = known.mean
    if known.size and not (kwargs or known.probing or _has_proxy(args)):
        return _chunked(fn, known, args, kwargs)  # the hot path of a short function
    pool = engine.backend()
    if known.recursive:
        return _recursive(fn, known, pool, args, kwargs, recursive)
    # Asking starts the workers; while none is ready, a caller that waits for one of
    # these calls runs it itself (processes.ProcessPool.steal).
    ready = pool.ready()
    if mean is None:
        mean = pool.mean_seconds(fn)
        if mean is not None:
            _settle(known, mean, fn)
        elif pool.pending() >= (_MEASURE_AFTER if ready else _MEASURE_STARTING):
            return _timed(fn, known, args, kwargs, "measure")
    seen, pending = scan(args, kwargs)
    _overlap(fn, known, pending)  # first: when it finds a chain, this call runs here
    if known.serial and not _waits_for_others(fn, pending):
        for task in pending:
            task.wait()  # its own earlier (probe) call: the chain goes on here
        return _timed_serial(fn, args, kwargs) if stats.active else fn(*args, **kwargs)
    if known.size and not seen and not known.probing:  # a probe is watched: forked alone
        return _chunked(fn, known, args, kwargs)
    task = start(fn, args, kwargs, "cpu")
    task.caller_may_run = True
    _watch(known, task)
    return new_proxy(task)


def _waits_for_others(fn: Callable[..., Any], pending: list) -> bool:
    """Whether a pending input comes from another function (then the call is forked,
    so that the caller does not wait for that input here)."""
    return any(task.fn is not fn for task in pending)


def _watch(known: _Function, task: Any) -> None:
    """Remember the call just forked, to see at the next call what it overlapped."""
    known.last = task
    known.last_at = time.perf_counter()
    task.add_done_callback(functools.partial(_finished, known))


def _finished(known: _Function, task: Any) -> None:
    if known.last is task:
        took = time.perf_counter() - known.last_at
        known.latency = took if known.latency is None else 0.8 * known.latency + 0.2 * took


def _overlap(fn: Callable[..., Any], known: _Function, pending: list) -> None:
    """Learn from the previous forked call whether forking ``fn`` overlaps anything.

    What a fork costs beyond the run time (``cost``: the measured time from fork to
    result, less the run time in the worker) is worth paying only for at least as much
    overlap.  It had less when this call depends on it and the caller did less than
    ``cost`` in between (or the call runs shorter than ``cost``), or when the caller
    waited for it less than ``cost`` after forking it.
    """
    last = known.last
    if last is None:
        return
    now = time.perf_counter()
    run = engine.backend().mean_seconds(fn) or known.mean or 0.0
    cost = max(_QUICK, (known.latency or 0.0) - run)
    if last.state != DONE:
        alone = (any(getattr(task, "chunk", task) is last for task in pending)
                 and min(now - known.last_at, run or cost) < cost)
    else:
        # Done before anybody waited: the caller did something else meanwhile (or was
        # descheduled, on a busy machine: that cannot be told apart), so it overlapped.
        waited_at = last.waited_at
        alone = waited_at is not None and waited_at - known.last_at < cost
    known.last = None
    if known.probing:
        known.probing = False
        if alone:
            known.probe_every = min(_PROBE_MAX, 2 * known.probe_every)
            _go_serial(fn, known)
        else:
            known.streak = 0
            known.probe_every = _PROBE_FIRST
            log.debug("%s: its calls overlap again: forking them", fn.__qualname__)
        return
    known.streak = known.streak + 1 if alone else 0
    if known.streak >= _SERIAL_AFTER:
        log.debug("%s: each call waited for the one before (a chain): running its calls "
                  "in the caller", fn.__qualname__)
        _go_serial(fn, known)


def _go_serial(fn: Callable[..., Any], known: _Function) -> None:
    known.streak = 0
    known.serial = True
    run = engine.backend().mean_seconds(fn) or known.mean
    cost = max(_QUICK, (known.latency or 0.0) - (run or 0.0))  # what a probe costs the chain
    within = int(max(_PROBE_SECONDS, _PROBE_SHARE * cost) / run) if run else known.probe_every
    known.countdown = max(_PROBE_MIN, min(known.probe_every, within))
    if not stats.active:
        running_serial[fn] = known


def _timed_serial(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    began = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        stats.inline(fn.__qualname__, time.perf_counter() - began, "chain")


def _has_proxy(args: tuple) -> bool:
    for value in args:
        if type(value) in UNSCANNED:
            return True  # a proxy, or a container that may hold one: scan() decides
    return False


def _recursive(fn: Callable[..., Any], known: _Function, pool: Engine, args: tuple,
               kwargs: dict, recursive: bool) -> Any:
    """A function that calls itself forks only while a worker is idle, below its top levels.

    A call from outside runs here, and so do the recursive calls of the ``known.top``
    levels under it (6 with 2 workers; at most ``_SPREAD_CALLS`` calls, for wide trees):
    what forks is then a small part of the work (``fib(26)`` of ``fib(32)``), not the
    larger half of it, which one worker would run while the others wait, and the parts
    left for the end are small; results meet through lazy operators (``a + b`` of
    proxies returns at once), so the caller goes on down the tree meanwhile.  Below, a call forks
    if a worker is idle (while the workers start: while fewer calls than workers are
    queued, which a waiting caller runs itself until one is ready); otherwise it runs
    here, as the plain function (no fork on any call below it).
    """
    if not recursive:
        known.spread = 0
    if not recursive or known.depth < known.top and known.spread < _SPREAD_CALLS:
        known.depth += 1  # shared by threads: a wrong count costs balance, never a result
        known.spread += 1
        try:
            return _run_here(fn, args, kwargs, "recursion")
        finally:
            known.depth -= 1
    if pool.idle() if pool.ready() else pool.pending() < config.settings().workers:
        return new_proxy(start(fn, args, kwargs, "cpu"))
    plain = known.plain
    if plain is None:
        plain = known.plain = for_workers(fn)
    return _run_here(plain, args, kwargs, "recursion") if stats.active else plain(*args, **kwargs)


def _top_levels(workers: int) -> int:
    """How many levels of a recursion run in the caller before any call forks: about
    16 parts of a binary tree per worker."""
    return math.ceil(math.log2(workers + 1)) + 4


def _run_here(fn: Callable[..., Any], args: tuple, kwargs: dict, why: str) -> Any:
    if not stats.active:
        return fn(*args, **kwargs)
    began = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        stats.inline(fn.__qualname__, time.perf_counter() - began, why)


def _settle(known: _Function, mean: float, fn: Optional[Callable[..., Any]] = None) -> None:
    inline = mean < _INLINE_BELOW
    if inline != known.inline or known.mean is None:
        log.debug("%s takes %.1f µs a call: %s", getattr(fn, "__qualname__", fn), mean * 1e6,
                  "running it inline" if inline else
                  "sending its calls in chunks" if mean < _CHUNK_BELOW else "forking each call")
    known.mean = mean
    known.inline = inline
    if inline and not stats.active and fn is not None:
        running_inline.add(fn)  # implicit.fork's hot path; --stats counts them in call() instead
    elif fn is not None:
        running_inline.discard(fn)
    # Calls per chunk (0: not chunked): about _CHUNK_SECONDS of work in each.
    known.size = (0 if inline or mean >= _CHUNK_BELOW or known.recursive
                  else max(2, min(_MAX_CHUNK, int(_CHUNK_SECONDS / max(mean, 1e-7)))))


def _forget(old: Any, new: Any) -> None:
    _functions.clear()  # the backend, AUTOFORK or --stats changed: learn again
    running_inline.clear()
    running_serial.clear()


config.on_change(_forget)


def _timed(fn: Callable[..., Any], known: _Function, args: tuple, kwargs: dict,
           why: str) -> Any:
    """Run a call here and learn its cost from it; ``why`` it runs here, for --stats."""
    began = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    finally:
        seconds = time.perf_counter() - began
        _settle(known, seconds if known.mean is None else 0.5 * (known.mean + seconds), fn)
        if stats.active:
            stats.inline(fn.__qualname__, seconds, "small" if known.inline else why)


def _chunked(fn: Callable[..., Any], known: _Function, args: tuple, kwargs: dict) -> Any:
    caller = sys._getframe(_CALLER)
    with known.lock:
        state = _globals_state(fn, known)
        generation = context.current()
        chunk = stale = known.chunk
        if chunk is not None and (chunk.snapshot is not state or chunk.generation != generation):
            # A global it reads was rebound, or the directory or environment changed:
            # later calls see them, the calls made before do not.
            chunk = known.chunk = None
        else:
            stale = None
        if chunk is None:
            latest = engine.backend().mean_seconds(fn)
            if latest is not None:
                _settle(known, latest, fn)  # what the last chunks measured
            _overlap(fn, known, [])
            chunk = known.chunk = Chunk(fn)
            chunk.snapshot = state
            chunk.generation = generation
            chunk.caller_may_run = True
            _watch(known, chunk)
            chunk.executor = _flusher
            known.opened = time.monotonic()
            track(chunk)
            _flusher.watch(fn, known)
        items = chunk.items
        item = ChunkItem(chunk, len(items), args, kwargs,
                         (caller.f_code, caller.f_lineno, caller.f_lasti))
        item.seq = output.begin()
        items.append(item)
        if stats.active:
            stats.forked(item, timed=False)
        full = len(items) >= known.size
        if full:
            known.chunk = None
    if stale is not None:
        _send(stale)
    if full:
        _send(chunk)
    return new_proxy(item)  # type: ignore[arg-type]


def _globals_state(fn: Callable[..., Any], known: _Function) -> Optional[tuple]:
    """The state of the globals ``fn`` reads, now (see freshness); None: it reads none."""
    watch = known.watch
    if watch is _UNSEEN:
        watch = known.watch = engine.backend().watch_of(fn)  # type: ignore[attr-defined]
    return None if watch is None else watch.state_for(fn.__qualname__)


def _send(chunk: Task) -> None:
    submit_or_fail(engine.backend().submit, chunk)


def _flush(known: _Function) -> None:
    with known.lock:
        chunk, known.chunk = known.chunk, None
    if chunk is not None:
        _send(chunk)


def flush_all() -> None:
    """Send every open chunk (at exit, before waiting for what runs)."""
    for known in list(_functions.values()):
        if known.chunk is not None:
            _flush(known)


engine.before_finish(flush_all)


class _Flusher:
    """The executor of open chunks: sends a chunk to the engine when it waits too long,
    or when somebody waits for one of its calls."""

    def __init__(self) -> None:
        self._open: dict[Any, _Function] = {}
        self._wake = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def watch(self, fn: Callable[..., Any], known: _Function) -> None:
        with self._wake:
            self._open[fn] = known
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="autofork-chunks",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()

    def submit(self, chunk: Task) -> None:
        """Send a chunk to the engine now."""
        _send(chunk)

    def steal(self, chunk: Task) -> bool:
        """Somebody waits for a call of an open chunk: send it now (to a worker), or run
        it here while no worker is ready."""
        known = _functions.get(chunk.fn)
        if known is not None and known.chunk is chunk:
            _flush(known)
        return chunk.state == QUEUED and engine.backend().steal(chunk)

    def close(self, kill: bool = False) -> None:
        """Send every open chunk."""
        flush_all()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._open:
                    self._wake.wait()
                opened = dict(self._open)
                self._open.clear()
            deadline = max(known.opened for known in opened.values()) + _CHUNK_WAIT
            time.sleep(max(0.0, deadline - time.monotonic()))
            for fn, known in opened.items():
                if known.chunk is not None and time.monotonic() - known.opened >= _CHUNK_WAIT:
                    _flush(known)
                elif known.chunk is not None:
                    self.watch(fn, known)


_flusher = _Flusher()
