"""Faults: workers that die, Ctrl-C, a killed parent, lost errors, AUTOFORK=0."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from autofork import WorkerCrashed, evaluate, fork

from conftest import ROOT, run_script

pytestmark = pytest.mark.timeout(90)


def exit_hard(code):
    os._exit(code)


def kill_self(sig):
    time.sleep(0.1)
    os.kill(os.getpid(), sig)
    time.sleep(10)


def segfault():
    import ctypes

    ctypes.string_at(0)


def square(x):
    time.sleep(0.05)
    return x * x


@pytest.mark.parametrize("crash, cause", [
    ((exit_hard, 3), "exit code 3"),
    ((kill_self, signal.SIGKILL), "SIGKILL"),
    ((segfault,), "SIGSEGV"),
])
def test_a_dying_worker_fails_its_call_and_the_rest_still_run(crash, cause):
    queued = [fork(square, i) for i in range(6)]
    doomed = fork(*crash)
    after = [fork(square, i) for i in range(6, 12)]
    with pytest.raises(WorkerCrashed) as info:
        evaluate(doomed)
    assert crash[0].__name__ in str(info.value) and cause in str(info.value)
    assert [evaluate(x) for x in queued + after] == [i * i for i in range(12)]
    assert fork(square, 5) == 25  # the pool works on


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone since os.kill (ESRCH on read)
        return False


def _children_pids(tmp_path):
    pids_file = tmp_path / "pids"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if pids_file.exists() and pids_file.read_text().endswith("\n"):
            return [int(x) for x in pids_file.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the script never reported its worker pids")


SPINNER = """
    import os, time
    from autofork import fork, evaluate

    def pid():
        return os.getpid()

    def spin(seconds):
        end = time.time() + seconds
        while time.time() < end:
            pass

    pids = {evaluate(fork(pid)) for _ in range(20)}
    running = [fork(spin, 30) for _ in range(4)]
    with open("pids", "w") as out:
        out.write(" ".join(map(str, sorted(pids))) + "\\n")
    evaluate(running[0])
"""


def _start_spinner(tmp_path, cli=False):
    (tmp_path / "script.py").write_text(__import__("textwrap").dedent(SPINNER))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, *(["-m", "autofork"] if cli else []), "script.py"]
    return subprocess.Popen(command, cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


@pytest.mark.parametrize("cli", [False, True], ids=["python", "python -m autofork"])
def test_one_ctrl_c_exits_with_130_and_no_worker_outlives_it(tmp_path, cli):
    process = _start_spinner(tmp_path, cli)
    workers = _children_pids(tmp_path)
    assert workers and all(_alive(pid) for pid in workers)
    time.sleep(0.2)
    # A terminal's Ctrl-C signals the whole foreground process group, workers included.
    os.killpg(process.pid, signal.SIGINT)
    interrupted = time.monotonic()
    # The workers spin for 30 s and ignore SIGINT: only the program can end them. The
    # SPEC says within 1 s; 2 s leaves room for a loaded machine, not for a wait.
    while any(_alive(pid) for pid in workers) and time.monotonic() < interrupted + 2.0:
        time.sleep(0.02)
    assert not any(_alive(pid) for pid in workers)
    _, stderr = process.communicate(timeout=10)
    assert time.monotonic() - interrupted < 5.0, "the program took long to stop"
    # Plain python dies of the re-raised SIGINT (a shell shows status 130); the CLI exits 130.
    assert process.returncode == (130 if cli else -signal.SIGINT), stderr
    assert "KeyboardInterrupt" in stderr
    if cli:  # the traceback ends at the program's line, not in autofork's wait
        assert re.findall(r'File "([^"]+)"', stderr)[-1].endswith("script.py"), stderr


def test_killing_the_parent_leaves_no_worker_behind(tmp_path):
    process = _start_spinner(tmp_path)
    workers = _children_pids(tmp_path)
    process.kill()
    process.wait(timeout=5)
    deadline = time.monotonic() + 3.0
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers)


def test_an_unobserved_failure_is_printed_at_exit_with_a_nonzero_status(tmp_path):
    result = run_script(tmp_path, """
        from autofork import fork

        def broken():
            raise RuntimeError("nobody looked at me")

        fork(broken)
        print("main done")
    """)
    assert result.stdout == "main done\n"
    assert "nobody looked at me" in result.stderr and "RuntimeError" in result.stderr
    assert 'raise RuntimeError("nobody looked at me")' in result.stderr
    assert result.returncode != 0


def test_a_discarded_fork_still_runs_before_exit(tmp_path):
    result = run_script(tmp_path, """
        import time
        from autofork import fork

        def write():
            time.sleep(0.5)
            open("written", "w").write("done")

        fork(write)
    """)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "written").read_text() == "done"


SAME_PROGRAM = """
    import os, threading
    from autofork import ResultProxy, fork, io_bound

    def work(x):
        return x * 2, os.getpid()

    async def double(x):
        return 2 * x

    async def main():
        return await fork(double, 4)

    main_pid = os.getpid()
    value, pid = fork(work, 21)
    proxy = fork(work, 1)
    print(value, type(proxy) is ResultProxy, pid == main_pid)
    import asyncio
    from autofork import evaluate
    print(evaluate(fork(double, 3)), asyncio.run(main()))
"""


def test_autofork_0_runs_everything_inline_with_the_same_output(tmp_path):
    sequential = run_script(tmp_path, SAME_PROGRAM, env={"AUTOFORK": "0"})
    parallel = run_script(tmp_path, SAME_PROGRAM)
    assert sequential.returncode == 0 and parallel.returncode == 0, sequential.stderr
    assert sequential.stdout == "42 False True\n6 8\n"  # no proxy, same pid
    assert parallel.stdout == "42 True False\n6 8\n"


def nap(x):
    time.sleep(0.005)
    return x


def test_back_pressure_keeps_the_queue_bounded(monkeypatch):
    from autofork.runtime import engine, processes

    monkeypatch.setattr(processes, "_MAX_QUEUED", 40)
    pool = engine.backend()
    evaluate(fork(nap, 0))
    longest = 0
    results = []
    for i in range(300):
        results.append(fork(nap, i))
        longest = max(longest, len(pool._queue))
    assert longest <= 40
    assert [evaluate(r) for r in results] == list(range(300))


def test_closing_pools_again_and_again_leaks_no_file_descriptor():
    from autofork import configure
    from autofork.runtime import engine

    def open_fds():
        return len(os.listdir(f"/proc/{os.getpid()}/fd"))

    evaluate(fork(square, 1))
    engine.shutdown()
    before = open_fds()
    async def coroutine():
        return 4

    for _ in range(2):  # a leak shows in one cycle; the second closes a reopened pool
        assert fork(square, 3) == 9
        assert fork(coroutine) == 4
        engine.shutdown()
    configure(workers=2)
    assert open_fds() <= before


def brief_or_die(x, die=False):
    if die:
        os._exit(7)
    return x


def hold_until(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return path


def test_the_calls_a_dead_worker_had_not_begun_run_on_a_replacement(tmp_path):
    # Learn that brief_or_die is short, then queue 600 calls while both workers are held:
    # the pool then sends them in batches of many calls, so the worker that dies holds
    # calls queued behind the one that kills it.
    assert [evaluate(r) for r in [fork(brief_or_die, i) for i in range(200)]] == list(range(200))
    gate = str(tmp_path / "open")
    gates = [fork(hold_until, gate) for _ in range(2)]
    results = [fork(brief_or_die, i, i == 300) for i in range(600)]
    open(gate, "w").close()
    assert [evaluate(g) for g in gates] == [gate, gate]
    lost = []
    for i, result in enumerate(results):
        if i == 300:
            with pytest.raises(WorkerCrashed, match="brief_or_die.*exit code 7"):
                evaluate(result)
            continue
        try:
            assert evaluate(result) == i
        except WorkerCrashed as crash:
            # A call the worker had finished but not yet reported may be lost with it;
            # a call it had not begun must not be.
            assert i < 300 and "result was lost" in str(crash), (i, crash)
            lost.append(i)
    assert len(lost) < 300
