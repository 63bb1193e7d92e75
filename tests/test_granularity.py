"""Granularity of implicit forks: tiny calls inline, short ones in chunks, long ones forked."""

from __future__ import annotations

import json
import os
import re
import time
import traceback

import pytest

from autofork import ResultProxy, evaluate, evaluate_all, implicit_fork
from autofork.runtime import granularity, implicit
from autofork.runtime.task import ChunkItem

from conftest import run_script

pytestmark = pytest.mark.timeout(90)


@implicit_fork
def tiny(x):
    return x + 1


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@implicit_fork
def short(x):
    spin(100e-6)
    if x == 777:
        raise ValueError("item 777")
    return x, os.getpid()


def test_a_tiny_function_ends_up_running_inline():
    results = [implicit.fork(tiny, i) for i in range(3000)]
    assert evaluate_all(results) == [i + 1 for i in range(3000)]
    assert granularity._functions[tiny].inline
    assert type(implicit.fork(tiny, 1)) is int  # the real value: no proxy, no process


def test_once_inline_a_tiny_function_costs_one_call_level(tmp_path):
    # The README's promise for an inline call: "one Python call level: _autofork_rt.fork(f, x)
    # then f(x)". Benchmark 3b measures what it costs; here the levels are counted.
    result = run_script(tmp_path, """
        import sys
        from autofork import evaluate_all, implicit_fork

        @implicit_fork
        def levels(x):
            frame, depth = sys._getframe(1), 1
            while frame is not None and frame.f_code.co_name != "caller":
                frame, depth = frame.f_back, depth + 1
            return depth if frame is not None else "elsewhere"

        def caller(n):
            found = []
            for i in range(n):
                found.append(levels(i))
            return evaluate_all(found)

        found = caller(5000)
        print(sorted(set(found[-1000:]), key=str))
    """, module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[2]\n"  # the call site, autofork's fork, the function


def test_short_calls_travel_in_chunks_to_workers_and_fail_one_by_one():
    results = [implicit.fork(short, i) for i in range(1500)]
    chunked = [r for r in results if type(r) is ResultProxy
               and type(r._autofork_task) is ChunkItem]
    assert chunked, "no call was sent in a chunk"
    for i, result in enumerate(results):
        if i == 777:
            with pytest.raises(ValueError, match="item 777") as info:
                evaluate(result)
            text = "".join(traceback.format_exception(info.value))
            assert 'raise ValueError("item 777")' in text
            assert "results = [implicit.fork(short, i) for i in range(1500)]" in text
            continue
        value, pid = evaluate(result)
        assert value == i
    assert {evaluate(r)[1] for r in chunked[:50]} - {os.getpid()}, "chunks ran in workers"


def test_a_joiner_waits_for_chunked_calls_and_raises_the_first_failure():
    with pytest.raises(ValueError, match="item 777"):
        with implicit.Joiner() as joiner:
            for i in range(1000):
                joiner.fork(short, i)


def test_recursion_forks_only_while_a_worker_is_idle(tmp_path):
    result = run_script(tmp_path, """
        import os, time
        from autofork import evaluate, evaluate_all, fork, implicit_fork

        def hold(seconds):
            time.sleep(seconds)
            return os.getpid()

        @implicit_fork
        def leaves(n):
            if n == 0:
                return [os.getpid()]
            return leaves(n - 1) + leaves(n - 1)

        @implicit_fork
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        me = os.getpid()
        busy = [fork(hold, 1.5) for _ in range(2)]  # both workers have work
        pids = evaluate(leaves(6))
        print(len(pids), sorted(set(pids) - {me}))  # so every leaf ran here
        evaluate_all(busy)
        pids = evaluate(leaves(6))
        print(len(pids), bool(set(pids) - {me}))  # idle workers took a share
        print(fib(20))
    """, module=True, options=("--workers", "2"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "64 []\n64 True\n6765\n"


def _stats_row(stderr: str, name: str) -> tuple[int, int, dict[str, int]]:
    """(calls, inline, {place: calls}) of ``name`` in the --stats table."""
    [row] = [line for line in stderr.splitlines() if line.split()[:1] == [name]]
    place = r"[a-z]+(?: [a-z]+)* \d+"
    found = re.match(rf"{name}\s+(\d+)\s+(\d+)\s+({place}(?:, {place})*|-)\s", row)
    assert found, row
    places = {place.rpartition(" ")[0]: int(place.rpartition(" ")[2])
              for place in found[3].split(", ") if place != "-"}
    return int(found[1]), int(found[2]), places


def test_stats_and_trace_report_what_ran_where(tmp_path):
    result = run_script(tmp_path, """
        import time
        from autofork import implicit_fork

        @implicit_fork
        def work(x):
            time.sleep(0.05)
            return x

        @implicit_fork
        def small(x):
            return x * 2

        results = []
        for i in range(6):
            results.append(work(i))
        print(sum(results))
        doubled = []
        for i in range(2000):
            doubled.append(small(i))
        print(sum(doubled))
    """, module=True, options=("--stats", "--trace", str(tmp_path / "trace.json")))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "15\n3998000\n"
    assert _stats_row(result.stderr, "work") == (6, 0, {"process": 6})
    calls, inline, places = _stats_row(result.stderr, "small")
    assert calls == 2000 and inline > 0 and inline + sum(places.values()) == 2000, result.stderr
    # the plain warning about the tiny function, with the same count
    assert f"autofork ran it inline ({inline} of 2000 calls)" in result.stderr
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    tasks = [e for e in events if e.get("ph") == "X" and e["name"].endswith("work")]
    assert len(tasks) == 6
    assert all(e["dur"] >= 40_000 and e["pid"] != 0 for e in tasks)


def test_configure_stats_and_trace_in_the_program_itself(tmp_path):
    trace = tmp_path / "trace.json"
    result = run_script(tmp_path, f"""
        import os, time
        from autofork import configure, evaluate_all, fork

        def nap(x):
            time.sleep(0.05)
            return os.getpid()

        configure(stats=True, trace={str(trace)!r})
        pids = evaluate_all([fork(nap, i) for i in range(4)])
        print(len(pids))
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4\n"
    assert _stats_row(result.stderr, "nap") == (4, 0, {"process": 4})
    events = json.loads(trace.read_text())["traceEvents"]
    assert len([e for e in events if e.get("ph") == "X" and e["name"].endswith("nap")]) == 4


def test_a_rewritten_recursion_runs_as_plain_code_in_the_workers(tmp_path):
    result = run_script(tmp_path, """
        import os
        from autofork import evaluate, implicit_fork

        @implicit_fork
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        @implicit_fork
        def probe():
            return os.getpid(), fib.__code__.co_names

        print(fib(22))
        pid, names = evaluate(probe())
        print(pid != os.getpid(), any(name.startswith("_autofork") for name in names))
    """, module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "17711\nTrue False\n"


@implicit_fork
def holds(lock, x):
    with lock:
        return x * 2


def test_a_rewritten_call_that_cannot_be_sent_runs_here_with_one_warning():
    import threading
    import warnings

    from autofork import AutoforkWarning

    lock = threading.Lock()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [implicit.fork(holds, lock, i) for i in range(5)]
    assert results == [0, 2, 4, 6, 8]
    messages = [str(w.message) for w in caught if issubclass(w.category, AutoforkWarning)]
    assert len(messages) == 1 and "argument 1 (lock" in messages[0]
    with pytest.raises(TypeError, match="argument 2"):  # an explicit fork still says no
        from autofork import fork

        fork(holds, 1, lock)
