"""The process pool's start: the caller never waits for a worker, workers come from a
template process (start_method), and --stats tells where each call ran and why."""

from __future__ import annotations

import os
import re
import time

import pytest

from autofork import configure, evaluate, fork

from conftest import run_script

pytestmark = pytest.mark.timeout(120)


def test_the_first_call_runs_in_the_caller_while_no_worker_is_ready(tmp_path):
    result = run_script(tmp_path, """
        import os, time
        from autofork import implicit_fork

        @implicit_fork
        def who(k):
            time.sleep(0.01)
            return os.getpid()

        print(who(0) == os.getpid())  # no worker is ready yet: it runs here
        deadline = time.monotonic() + 60
        while who(1) == os.getpid():  # the workers came up meanwhile
            assert time.monotonic() < deadline, "no call was ever forked"
        print("forked later")
    """, module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\nforked later\n"


def test_a_call_the_caller_runs_holds_a_core_the_workers_do_not_get(tmp_path):
    # Two workers: while the caller runs the first call itself, one worker gets calls,
    # not two; three calls at once on two cores make a coarse job end later.
    result = run_script(tmp_path, """
        import os, time
        from autofork import implicit_fork

        @implicit_fork
        def span(k):
            began = time.monotonic()
            time.sleep(0.6 if k == 0 else 0.15)
            return (os.getpid(), began, time.monotonic())

        spans = [span(k) for k in range(6)]
        caller = spans[0][0] == os.getpid()  # no worker was ready at the first call
        moments = sorted(t for _, began, end in spans for t in (began, end))
        most = max(sum(1 for _, began, end in spans if began <= t < end) for t in moments)
        print(caller, most, len({pid for pid, _, _ in spans}))
    """, module=True, options=("--workers", "2"))
    assert result.returncode == 0, result.stderr
    caller, most, pids = result.stdout.split()
    assert caller == "True", result.stdout
    assert int(most) <= 2, result.stdout  # never three calls at once
    assert int(pids) >= 2, result.stdout  # and the workers did run calls meanwhile


def test_the_switch_interval_is_the_programs_again_once_the_workers_are_up(tmp_path):
    # While the workers start, the GIL changes hands sooner (the dispatcher's system
    # calls would each wait 5 ms for a computing program thread); not for good.
    result = run_script(tmp_path, """
        import os, sys, time
        from autofork import implicit_fork

        @implicit_fork
        def who(k):
            time.sleep(0.01)
            return os.getpid()

        starting = sys.getswitchinterval()  # the pool started before the script ran
        deadline = time.monotonic() + 60
        while who(0) == os.getpid():  # until a worker ran one
            assert time.monotonic() < deadline, "no call was ever forked"
        deadline = time.monotonic() + 10
        while sys.getswitchinterval() == starting and time.monotonic() < deadline:
            time.sleep(0.01)  # the second worker's hello may come a moment later
        print(starting, sys.getswitchinterval())
    """, module=True, options=("--workers", "2"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0.0005", "0.005"], result.stdout  # Python's default


def _parent_of_worker() -> int:
    return os.getppid()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_start_method_decides_where_workers_come_from(method):
    configure(start_method=method)
    try:
        parent = evaluate(fork(_parent_of_worker))
    finally:
        configure(start_method="forkserver")
    if method == "spawn":
        assert parent == os.getpid()  # a fresh interpreter started by this process
    else:
        assert parent != os.getpid()  # forked by the template process


def test_start_method_fork_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="fork.*threads.*forkserver"):
        configure(start_method="fork")


@pytest.mark.parametrize("method, preloaded", [("forkserver", True), ("spawn", False)])
def test_modules_imported_before_the_first_fork_are_ready_in_the_workers(tmp_path, method,
                                                                          preloaded):
    result = run_script(tmp_path, """
        import sys
        import hypothesis  # a third-party module the workers do not import themselves
        from autofork import evaluate, fork

        def already_there():
            return "hypothesis" in sys.modules

        print(evaluate(fork(already_there)))
    """, env={"AUTOFORK_START_METHOD": method})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{preloaded}\n"


def test_stats_counts_each_reason_a_call_ran_in_the_caller(tmp_path):
    result = run_script(tmp_path, """
        import time
        from autofork import implicit_fork

        @implicit_fork
        def work(x):
            time.sleep(0.005)
            return x

        print(sum([work(i) for i in range(200)]))
    """, module=True, options=("--stats",))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "19900\n"
    row = next(line for line in result.stderr.splitlines() if line.startswith("work "))
    found = re.search(r"process (\d+)", row)
    forked = int(found.group(1)) if found else 0  # a slow machine: no worker came up in time
    here = int(row.split()[2])
    assert forked + here == 200
    assert "too small" not in result.stderr  # 5 ms calls are not too small
    reasons = re.findall(r"\((\d+) of 200 calls\)", result.stderr)
    assert sum(map(int, reasons)) == here  # each reason with its own count, all counted


def test_stats_overhead_leaves_out_the_time_spent_in_the_queue(tmp_path):
    result = run_script(tmp_path, """
        import time
        from autofork import evaluate, fork

        def work(x):
            time.sleep(0.05)
            return x

        evaluate(fork(work, 0))  # the workers are up
        print(sum(evaluate(fork(work, i)) for i in [0]) + sum([fork(work, i) for i in range(40)]))
    """, module=True, options=("--stats",))
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stderr.splitlines() if line.startswith("work "))
    value, unit = re.search(r"([\d.]+) (µs|ms|s)\s+[\d.]+x$", row).groups()
    seconds = float(value) * {"µs": 1e-6, "ms": 1e-3, "s": 1.0}[unit]
    # 40 calls of 50 ms on 2 workers wait 0.5 s in the queue on average: that is not
    # autofork's overhead.  A trip to a worker and back takes well under 0.15 s.
    assert seconds < 0.15, row


def test_a_worker_forked_from_the_template_dies_with_the_program(tmp_path):
    result = run_script(tmp_path, """
        import os
        from autofork import evaluate, fork

        print(evaluate(fork(os.getpid)))
        os._exit(0)  # no clean shutdown at all
    """)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:  # gone, also since os.kill (ESRCH on read)
        return False


def test_a_call_the_caller_runs_sees_what_it_would_have_seen_when_it_was_made(tmp_path):
    """While no worker is ready the waiting caller may run a queued call, but only as a
    worker would: on its arguments as they were at the call, with the globals, directory
    and environment of that moment (else it waits for a worker, which gets those)."""
    source = """
        import os
        from autofork import implicit_fork

        SCALE = 1
        os.makedirs("sub", exist_ok=True)

        @implicit_fork
        def seen(x, box):
            return x * SCALE, list(box), os.path.basename(os.getcwd()), os.environ.get("MODE")

        box = [1]
        first = seen(1, box)  # queued while the workers start
        box.append(2)         # each of these comes after the call: it must not see them
        SCALE = 10
        os.chdir("sub")
        os.environ["MODE"] = "late"
        second = seen(2, box)
        print(first, second)
    """
    plain = run_script(tmp_path, source)
    forked = run_script(tmp_path, source, module=True)
    assert plain.returncode == forked.returncode == 0, forked.stderr
    root = tmp_path.name
    assert plain.stdout == f"(1, [1], '{root}', None) (20, [1, 2], 'sub', 'late')\n"
    assert forked.stdout == plain.stdout


_STARTED = re.compile(r"(?:template|worker) process (\d+) started")


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("imports", ["", "import hypothesis  # slow: the template preloads it"])
def test_exit_while_the_workers_start_waits_for_none_and_leaves_none(tmp_path, imports):
    """A script whose only call is tiny: the caller runs it, and exit comes while the
    pool starts (before its template, or while the template imports the program's
    modules).  Every process the pool started (the DEBUG log names each) is gone with
    the program."""
    result = run_script(tmp_path, f"""
        import os
        {imports}
        from autofork import implicit_fork

        @implicit_fork
        def tiny(x):
            return os.getpid()

        print(tiny(1) == os.getpid())
    """, module=True, env={"AUTOFORK_LOG": "DEBUG", "AUTOFORK_WORKERS": "4"})
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True\n"  # no worker was ready: the caller ran it
    started = [int(pid) for pid in _STARTED.findall(result.stderr)]
    if imports:  # the pool had the time of that import to start the template
        assert started, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr
    # subprocess.run has reaped the program: a short grace for the kernel to finish a
    # kill; a process left to end by itself would still be importing or serving.
    deadline = time.monotonic() + 0.2
    while any(_alive(pid) for pid in started) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [pid for pid in started if _alive(pid)] == []
    if imports:  # the exit came while the template imported hypothesis: it did not wait
        assert "worker process" not in result.stderr, result.stderr


def test_a_call_the_caller_runs_on_copies_reports_an_argument_it_changed(tmp_path):
    """The caller runs a queued call on copies of its arguments, as a worker does: a change
    the rewriter could not see (a method of the program's own class) is lost as in a
    worker, and told as in a worker, once, in call order."""
    result = run_script(tmp_path, """
        import os
        from autofork import implicit_fork

        class Bag:
            def __init__(self):
                self.items = []
            def put(self, x):
                self.items.append(x)

        @implicit_fork
        def fill(bag, x):
            bag.put(x)
            return os.getpid()

        bag = Bag()
        print(fill(bag, 1) == os.getpid(), bag.items)  # no worker is ready yet
        print("after")
    """, module=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True []\nafter\n"
    assert result.stderr.count("AutoforkWarning") == 1, result.stderr
    assert "fill() changed its argument 'bag' (Bag)" in result.stderr


def test_a_failing_call_the_caller_runs_shows_the_functions_own_frames(tmp_path):
    result = run_script(tmp_path, """
        import os
        from autofork import implicit_fork

        @implicit_fork
        def check(x):
            if x == os.getpid():
                raise ValueError("ran in the caller")
            return x

        print(check(os.getpid()))
    """, module=True)
    assert result.returncode == 1
    assert "ValueError: ran in the caller" in result.stderr, result.stderr
    # the function's frames, as sequentially; none of the pool's between the call and them
    assert 'line 8, in check\n    raise ValueError' in result.stderr, result.stderr
    assert "run_captured" not in result.stderr and "_run_copy" not in result.stderr


@pytest.mark.timeout(60)
def test_a_call_whose_arguments_cannot_be_rebuilt_fails_in_the_caller_too(tmp_path):
    """Pickled at the fork, the arguments cannot be unpickled: the call fails as in a
    worker, also when the caller runs it (before, the error escaped the claimed call,
    which stayed running, and exit waited for it for ever)."""
    result = run_script(tmp_path, """
        from autofork import implicit_fork

        def broken():
            raise RuntimeError("cannot be rebuilt")

        class Odd:
            def __reduce__(self):
                return (broken, ())

        @implicit_fork
        def use(x):
            return 1

        try:
            print(use(Odd()))
        except RuntimeError as error:
            print("error:", error)
    """, module=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "error: cannot be rebuilt\n"


@pytest.mark.timeout(60)
def test_the_templates_answer_to_preload_counts_however_often_it_is_asked():
    """The dispatcher asks whether the template answered before and after it marks itself
    asleep; the answer is read from the socket once.  Asking again after it was read said
    "not yet", and the dispatcher slept for good: a cold run of a recursive script hung in
    about one run of five, with no worker ever started."""
    import select
    import sys

    from autofork.runtime.processes import ProcessPool
    from autofork.runtime.template import Template

    pool = ProcessPool(1)
    template = Template(list(sys.path))
    try:
        template.preload([])
        assert select.select([template], [], [], 30)[0], "the template never answered"
        pool._template = template
        assert pool._template_answered()  # reads the answer
        assert pool._template_answered()  # and still knows it
        assert not template.broken
    finally:
        template.close()
        pool._template = None
        pool.close()


@pytest.mark.timeout(90)
def test_exit_under_default_warnings_says_nothing_of_its_processes(tmp_path):
    # PYTHONWARNINGS=default (as -W default and -X dev) shows ResourceWarnings: exit kills
    # the template and idle workers without waiting, and must not warn that a killed
    # process "is still running" (the plain program's stderr is empty).
    source = """
        import time
        from autofork import implicit_fork

        @implicit_fork
        def work(x):
            time.sleep(0.01)
            return x * 2

        print([work(x) for x in range(4)])   # done (in the caller) before workers are up
    """
    env = {"PYTHONWARNINGS": "default", "AUTOFORK_WORKERS": "2"}
    plain = run_script(tmp_path, source, env=env)
    forked = run_script(tmp_path, source, module=True, env=env)
    assert plain.returncode == forked.returncode == 0, forked.stderr
    assert forked.stdout == plain.stdout == "[0, 2, 4, 6]\n"
    assert forked.stderr == plain.stderr == ""
