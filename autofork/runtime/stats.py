"""What happened: per-function statistics (``--stats``) and a Chrome trace (``--trace``).

Off by default, and then nothing is recorded: the hot paths test ``stats.active`` only.
``configure(stats=True)`` prints a table at exit; ``configure(trace="run.json")`` writes
one Chrome trace event per task (worker, start, end, function), which Perfetto and
``chrome://tracing`` open.  Times come from ``time.perf_counter``, which is the same
system-wide monotonic clock in the workers (Linux CLOCK_MONOTONIC).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, TextIO

__all__ = ["active", "start", "ran", "inline", "forked", "report", "write_trace"]

active = False
_lock = threading.Lock()
_trace_path: Optional[str] = None
_events: list[dict] = []
_began = time.perf_counter()


@dataclass
class _Function:
    calls: int = 0
    inline: int = 0
    places: dict = field(default_factory=dict)  # "process"/"thread"/"event loop" -> calls
    busy: float = 0.0  # seconds spent running its calls
    first: float = float("inf")
    last: float = 0.0
    overhead: float = 0.0  # seconds from fork to result, beyond the run time


_functions: dict[str, _Function] = {}


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


def forked(name: str) -> None:
    """A call of ``name`` was forked."""
    with _lock:
        _entry(name).calls += 1


def inline(name: str, seconds: float) -> None:
    """A call of ``name`` ran inline (granularity) and took ``seconds``."""
    with _lock:
        entry = _entry(name)
        entry.calls += 1
        entry.inline += 1
        entry.busy += seconds


def ran(task: Any, place: str, worker: Any, begin: float, end: float, calls: int = 1) -> None:
    """``calls`` calls of ``task.fn`` ran at ``place`` (in ``worker``) from ``begin`` to ``end``."""
    name = task.name
    with _lock:
        entry = _entry(name)
        entry.places[place] = entry.places.get(place, 0) + calls
        entry.busy += end - begin
        entry.first = min(entry.first, begin)
        entry.last = max(entry.last, end)
        if _trace_path:
            _events.append({"name": name, "cat": place, "ph": "X", "ts": begin * 1e6,
                            "dur": (end - begin) * 1e6, "pid": worker, "tid": worker,
                            "args": {"calls": calls}})


def report(stream: TextIO = sys.stderr) -> None:
    """Print the table of ``--stats``."""
    if not _functions:
        return
    print("autofork --stats", file=stream)
    header = f"{'function':<32} {'calls':>7} {'inline':>7} {'where':<22} {'mean':>10} {'parallel':>8}"
    print(header, file=stream)
    for name, entry in sorted(_functions.items()):
        ran_calls = sum(entry.places.values()) + entry.inline
        mean = entry.busy / ran_calls if ran_calls else 0.0
        span = entry.last - entry.first
        parallel = (entry.busy - 0) / span if span > 0 else 1.0
        where = ", ".join(f"{place} {count}" for place, count in entry.places.items()) or "-"
        print(f"{name[:32]:<32} {entry.calls:>7} {entry.inline:>7} {where:<22} "
              f"{_duration(mean):>10} {parallel:>7.1f}x", file=stream)
        if entry.inline and entry.inline == entry.calls:
            print(f"  average {_duration(mean)} per call: too small to gain from another "
                  "process; autofork ran it inline", file=stream)
        elif entry.places and parallel < 1.1 and entry.calls > 1:
            print(f"  forking {name} did not pay: its calls ran one after another", file=stream)


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
