"""What happened: per-function statistics (``--stats``) and a Chrome trace (``--trace``).

Off by default, and then nothing is recorded: the hot paths test ``stats.active`` only.
``configure(stats=True)`` prints a table at exit; ``configure(trace="run.json")`` writes
one Chrome trace event per task (worker, start, end, function), which Perfetto and
``chrome://tracing`` open.  Times come from ``time.perf_counter``, which is the same
system-wide monotonic clock in the workers (Linux CLOCK_MONOTONIC).

The table, per function: its calls; how many ran in the caller, each reason counted on
a line of its own (too small to gain, a chain whose calls overlap nothing, the outer call
of a recursion, no worker ready yet, measuring its cost); where the forked ones ran; the
mean run time; the overhead, what autofork added to a forked call (the trip to a worker
once one was free, and the trip of the result back: not the time spent waiting in the
queue); and the parallelism achieved.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Optional, TextIO

__all__ = ["active", "start", "ran", "inline", "forked", "kept_plain", "report",
           "report_if_not_yet", "write_trace"]

active = False
_lock = threading.Lock()
_trace_path: Optional[str] = None
_events: list[dict] = []
_began = time.perf_counter()


class _Function:
    # A plain class: dataclasses would import inspect (and ast, dis, tokenize) at start-up.
    __slots__ = ("calls", "inline", "here", "places", "busy", "first", "last", "forked_busy",
                 "overhead", "timed")

    def __init__(self) -> None:
        self.calls = 0
        self.inline = 0  # calls that ran in the caller, for any of the reasons in ``here``
        self.here: dict = {}  # why -> [calls, seconds] run in the caller
        self.places: dict = {}  # "process"/"thread"/"event loop" -> calls
        self.busy = 0.0  # seconds spent running its calls
        self.first = float("inf")
        self.last = 0.0
        self.forked_busy = 0.0  # of busy: in workers, threads or the event loop
        self.overhead = 0.0  # seconds autofork added to forked calls (queueing excluded), summed
        self.timed = 0  # forked calls whose overhead is known


_functions: dict[str, _Function] = {}
_kept_plain: dict[str, str] = {}  # function -> why the rewriter did not fork it
_reported = False


def start(stats: bool, trace: Optional[str]) -> None:
    """Begin recording (called when the settings ask for it)."""
    global active, _trace_path
    _trace_path = trace
    active = bool(stats or trace)


def _entry(name: str) -> _Function:
    entry = _functions.get(name)
    if entry is None:
        entry = _functions[name] = _Function()
    return entry


_submitted: dict[int, float] = {}


def forked(task: Any, timed: bool = True) -> None:
    """``task`` was forked just now (``timed``: its result will come back through ``ran``)."""
    with _lock:
        _entry(task.name).calls += 1
        if timed:
            _submitted[id(task)] = time.perf_counter()


_REASONS = ("small", "chain", "recursion", "starting", "measure")


def inline(name: str, seconds: float, why: str = "small") -> None:
    """A call of ``name`` ran in the caller (granularity) and took ``seconds``.

    ``why``: ``small`` (too short to gain), ``chain`` (each call needed the previous
    one), ``recursion`` (the outer call of a recursion, or every worker was busy),
    ``starting`` (no worker was ready yet), ``measure`` (run here to learn its cost).
    """
    with _lock:
        entry = _entry(name)
        entry.calls += 1
        entry.inline += 1
        entry.busy += seconds
        counts = entry.here.get(why)
        if counts is None:
            counts = entry.here[why] = [0, 0.0]
        counts[0] += 1
        counts[1] += seconds


def ran_here(task: Any, seconds: float, why: str) -> None:
    """A forked ``task`` ran in the thread that waited for it (``why``: as ``inline``)."""
    calls = len(task.items) if hasattr(task, "items") else 1
    with _lock:
        _submitted.pop(id(task), None)
        entry = _entry(task.name)
        entry.inline += calls
        entry.busy += seconds
        counts = entry.here.get(why)
        if counts is None:
            counts = entry.here[why] = [0, 0.0]
        counts[0] += calls
        counts[1] += seconds


def ran(task: Any, place: str, worker: Any, begin: float, end: float, calls: int = 1,
        overhead: Optional[float] = None) -> None:
    """``calls`` calls of ``task.fn`` ran at ``place`` (in ``worker``) from ``begin`` to ``end``.

    ``overhead``: the seconds autofork added to the task, if the executor knows them
    (without the time it waited for a free worker); else the time from fork to result
    beyond the run time.
    """
    name = task.name
    with _lock:
        entry = _entry(name)
        entry.places[place] = entry.places.get(place, 0) + calls
        entry.busy += end - begin
        entry.forked_busy += end - begin
        submitted = _submitted.pop(id(task), None)
        if overhead is not None:
            entry.overhead += overhead  # a chunk's calls share its trip
            entry.timed += calls
        elif submitted is not None:
            entry.overhead += max(0.0, time.perf_counter() - submitted - (end - begin))
            entry.timed += 1
        entry.first = min(entry.first, begin)
        entry.last = max(entry.last, end)
        if _trace_path:
            _events.append({"name": name, "cat": place, "ph": "X", "ts": begin * 1e6,
                            "dur": (end - begin) * 1e6, "pid": worker, "tid": worker,
                            "args": {"calls": calls}})


def kept_plain(name: str, reason: str) -> None:
    """The rewriter kept the calls of ``name`` plain, for ``reason`` (recorded always: once
    per function, at import)."""
    with _lock:
        _kept_plain[name] = reason


def report_if_not_yet(stream: Optional[TextIO] = None) -> None:
    """``report``, unless it already ran."""
    if not _reported:
        report(stream or sys.stderr)


def report(stream: TextIO = sys.stderr) -> None:
    """Print the table of ``--stats``, then the functions kept plain and why."""
    global _reported
    _reported = True
    if not _functions and not _kept_plain:
        return
    print("autofork --stats", file=stream)
    _report_functions(stream)
    for name, reason in sorted(_kept_plain.items()):
        print(f"{name[:32]:<32} kept plain (calls run in the caller): {reason}", file=stream)


def _report_functions(stream: TextIO) -> None:
    if not _functions:
        return
    header = (f"{'function':<32} {'calls':>7} {'inline':>7} {'where':<22} {'mean':>10} "
              f"{'overhead':>10} {'parallel':>8}")
    print(header, file=stream)
    for name, entry in sorted(_functions.items()):
        ran_calls = sum(entry.places.values()) + entry.inline
        mean = entry.busy / ran_calls if ran_calls else 0.0
        span = entry.last - entry.first
        parallel = entry.forked_busy / span if span > 0 else 1.0
        where = ", ".join(f"{place} {count}" for place, count in entry.places.items()) or "-"
        overhead = _duration(entry.overhead / entry.timed) if entry.timed else "-"
        print(f"{name[:32]:<32} {entry.calls:>7} {entry.inline:>7} {where:<22} "
              f"{_duration(mean):>10} {overhead:>10} {parallel:>7.1f}x", file=stream)
        for line in _notes(name, entry, parallel):
            print(f"  {line}", file=stream)


def _notes(name: str, entry: _Function, parallel: float) -> list[str]:
    """Why calls ran in the caller, each reason with its own count, and whether forking paid."""
    notes = []
    total = entry.calls
    for why in _REASONS:
        counts = entry.here.get(why)
        if not counts:
            continue
        calls, seconds = counts
        share = f"{calls} of {total} calls"
        if why == "small":
            notes.append(f"average {_duration(seconds / calls)} per call: too small to gain "
                         f"from another process; autofork ran it inline ({share})")
        elif why == "chain":
            notes.append(f"each call needed the one before (a chain): nothing overlapped, so "
                         f"autofork ran its calls in the caller ({share})")
        elif why == "recursion":
            notes.append(f"recursive: the outer call, and calls made while every worker was "
                         f"busy, ran in the caller ({share})")
        elif why == "starting":
            notes.append(f"ran in the caller while no worker was ready yet ({share})")
        else:
            notes.append(f"ran in the caller to measure its cost ({share})")
    forked = sum(entry.places.values())
    if forked > 1 and parallel < 1.1 and "chain" not in entry.here:
        notes.append(f"forking {name} did not pay: its {forked} forked calls ran one after "
                     "another")
    return notes


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def write_trace() -> Optional[str]:
    """Write the Chrome trace file, if one was asked for; its path."""
    if not _trace_path:
        return None
    import json

    with _lock:
        events = list(_events)
    origin = min((e["ts"] for e in events), default=0.0)
    for event in events:
        event["ts"] -= origin
    names = {e["pid"] for e in events}
    meta = [{"name": "process_name", "ph": "M", "pid": pid,
             "args": {"name": f"worker {pid}" if pid != os.getpid() else "main process"}}
            for pid in names]
    with open(_trace_path, "w") as out:
        json.dump({"traceEvents": meta + events, "displayTimeUnit": "ms"}, out)
    return _trace_path
