"""Granularity of implicit forks: tiny calls inline, short ones in chunks, long ones forked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
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


def test_while_the_workers_start_a_tiny_function_is_measured_after_a_few_calls(tmp_path):
    # Not after 64 queued forks: while no worker is ready, the caller would run them
    # itself, each pickled and unpickled for nothing.
    result = run_script(tmp_path, """
        from autofork import implicit_fork
        from autofork.runtime import engine, granularity

        @implicit_fork
        def tiny(x):
            return x + 1

        values = [tiny(i) for i in range(20)]
        ready = engine.backend().ready()  # a worker ready within the loop: no test
        print(values == list(range(1, 21)), ready or granularity._functions[tiny].inline)
    """, module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True True\n"


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
    _workers_ready()  # before, a waiting caller may run the calls itself
    results = [implicit.fork(short, i) for i in range(1500)]
    chunked = [r for r in results if type(r) is ResultProxy
               and type(r._autofork_task) is ChunkItem]
    assert chunked, "no call was sent in a chunk"
    for i, result in enumerate(results):
        if i != 777:  # its neighbours in the chunk have their values
            value, pid = evaluate(result)
            assert value == i
    assert {evaluate(r)[1] for r in chunked[:50]} - {os.getpid()}, "chunks ran in workers"
    # (last: once a rewritten call's failure is raised, the calls made after it are
    # calls the sequential program never made, and are not run)
    with pytest.raises(ValueError, match="item 777") as info:
        evaluate(results[777])
    text = "".join(traceback.format_exception(info.value))
    assert 'raise ValueError("item 777")' in text
    assert "results = [implicit.fork(short, i) for i in range(1500)]" in text


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
        evaluate_all([fork(hold, 0.3) for _ in range(2)])  # the workers are up (ready)
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


def test_a_recursion_forks_small_parts_below_its_top_levels(tmp_path):
    # Forking fib(31) of fib(32) gives one worker 62% of the work while the others wait:
    # the top levels run in the caller, and what forks is a small part of the tree.
    result = run_script(tmp_path, """
        import os
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def nodes(n):
            if n == 0:
                return []
            below = nodes(n - 1) + nodes(n - 1)
            return below + [(n, os.getpid())]

        evaluate(fork(abs, 1))  # the workers are up, and idle
        found = evaluate(nodes(10))
        me = os.getpid()
        print(len(found), max(n for n, pid in found if pid != me),
              min(n for n, pid in found if pid == me))
    """, module=True, options=("--workers", "2"))
    assert result.returncode == 0, result.stderr
    count, largest_forked, _ = map(int, result.stdout.split())
    assert count == 1023
    assert largest_forked <= 10 - 6  # 6 levels run here with 2 workers: parts of 15 nodes


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
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def work(x):
            time.sleep(0.05)
            return x

        @implicit_fork
        def small(x):
            return x * 2

        evaluate(fork(abs, 1))  # a worker is ready: the forks below are not run here
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
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def fib(n):
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        @implicit_fork
        def probe():
            return os.getpid(), fib.__code__.co_names

        evaluate(fork(abs, 1))  # a worker is ready: probe() is not run here
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


# -- overlap: a chain runs in the caller, independent calls fork ---------------------------

def _workers_ready():
    from autofork.runtime import engine

    deadline = time.monotonic() + 30
    while not engine.backend().ready():
        assert time.monotonic() < deadline, "no worker became ready"
        time.sleep(0.01)


@implicit_fork
def step(state, k):
    spin(20e-6)
    return (state * 31 + k) % 1_000_003, os.getpid()


def _state(result):
    return evaluate(result)[0]


@implicit_fork
def link(state, k):
    spin(20e-6)
    return (state * 31 + k) % 1_000_003


def test_a_chain_fed_by_its_own_results_ends_up_in_the_caller():
    _workers_ready()
    state = 1
    for k in range(300):
        state = implicit.fork(link, state, k)  # each call takes the previous call's result
    expected = 1
    for k in range(300):
        expected = (expected * 31 + k) % 1_000_003
    assert evaluate(state) == expected
    assert granularity._functions[link].serial, "the chain still forks every call"
    assert type(implicit.fork(link, 5, 1)) is int  # runs here: the real value


def test_calls_whose_values_are_needed_at_once_end_up_in_the_caller():
    _workers_ready()
    pids = []
    for k in range(300):
        pids.append(evaluate(implicit.fork(step, k, k))[1])  # the value is used at once
    assert pids[0] != os.getpid()  # forked while autofork learned
    # all in the caller but a probe (one call in 64 or more forks, to look for overlap)
    assert pids[-50:].count(os.getpid()) >= 45
    assert granularity._functions[step].serial


DEPTHS = []  # call levels between chained() and its caller, of the calls run here
PARENT = os.getpid()


@implicit_fork
def chained(state):
    spin(20e-6)
    if os.getpid() == PARENT:
        frame, depth = sys._getframe(1), 1
        while frame is not None and not frame.f_code.co_name.startswith("_chain_"):
            frame, depth = frame.f_back, depth + 1
        DEPTHS.append(depth)
    return state + 1


def _chain_in_a_loop(n, state):
    with implicit.Joiner() as joiner:  # what the rewriter makes of a loop
        for _ in range(n):
            state = joiner.fork(chained, state)
    return state


def _chain_of_forks(n, state):
    for _ in range(n):
        state = implicit.fork(chained, state)
    return state


def test_once_a_chain_runs_in_the_caller_its_calls_cost_one_call_level():
    _workers_ready()
    assert evaluate(_chain_in_a_loop(300, 0)) == 300
    assert granularity._functions[chained].serial
    for run in (_chain_in_a_loop, _chain_of_forks):
        DEPTHS.clear()
        assert evaluate(run(300, 0)) == 300
        # the call site, Joiner.fork or implicit.fork, the function: as an inline call
        # (a probe forks one call now and then; its successor runs through call())
        assert DEPTHS.count(2) >= 280, (run.__name__, sorted(set(DEPTHS)))


@implicit_fork
def independent(k):
    spin(3e-3)
    return os.getpid()


def test_independent_calls_keep_forking():
    _workers_ready()
    for _ in range(3):
        pids = evaluate_all([implicit.fork(independent, k) for k in range(40)])
    assert os.getpid() not in pids[-20:]
    assert not granularity._functions[independent].serial


@implicit_fork
def phase(k):
    spin(3e-3)
    return k, os.getpid()


def test_a_function_forks_again_when_its_calls_overlap_again():
    _workers_ready()
    for k in range(100):  # first a chain: each value used at once
        evaluate(implicit.fork(phase, k))
    # Learning it is the chain tests' business (and timing-bound on a busy machine, where
    # a descheduled caller finds a probe done before it waits): here, start from a chain.
    known = granularity._functions[phase]
    if not known.serial:
        granularity._go_serial(phase, known)
    results = []
    for k in range(60):  # then independent calls: a probe comes within 50 ms of them
        results.append(implicit.fork(phase, k))
    pids = [evaluate(r)[1] for r in results]
    assert not granularity._functions[phase].serial
    assert set(pids[-30:]) - {os.getpid()}, "the calls stayed in the caller"


# -- recursion is what the rewriter saw, not a name among the attributes ------------------

class Image:
    def __init__(self, n):
        self.n = n

    def save(self):
        return self.n, os.getpid()

    def resize(self, size):
        return self.n * size, os.getpid()


@implicit_fork
def save(n):
    img = Image(n)
    return img.save()


@implicit_fork
def resize(n):
    return Image(n).resize(7)


@pytest.mark.parametrize("function", [save, resize], ids=["save", "resize"])
def test_a_function_calling_a_method_of_its_own_name_forks(function):
    _workers_ready()
    results = evaluate_all([implicit.fork(function, n) for n in range(4)])
    assert not granularity._functions[function].recursive
    assert {pid for _, pid in results} - {os.getpid()}, "every call ran in the caller"


def test_the_rewriter_marks_a_call_of_a_function_inside_itself(tmp_path):
    (tmp_path / "m.py").write_text(textwrap.dedent("""
        from autofork import implicit_fork

        @implicit_fork
        def walk(n):
            return n if n < 2 else walk(n - 1) + walk(n - 2)

        @implicit_fork
        def save(img):
            return img.save()

        print(walk(5), save(thing))
    """))
    rewritten = subprocess.run([sys.executable, "-m", "autofork", "--diff", "m.py"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60).stdout
    assert "fork_recursive(walk, n - 1)" in rewritten
    assert "_autofork_rt.fork(walk, 5)" in rewritten and "_autofork_rt.fork(save, thing)" in rewritten
