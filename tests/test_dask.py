"""The dask backend against a real ``dask scheduler`` and real ``dask worker`` processes.

Two clusters on 127.0.0.1: the main one (two single-threaded workers, Dask's default
retry policy) for everything that keeps it whole, and a strict one (one worker,
``allowed-failures`` 0) for a crashing task and for a scheduler that is stopped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import pytest

from autofork import (RemoteError, ResultProxy, WorkerCrashed, evaluate, evaluate_all, fork,
                      io_bound)
from autofork.runtime import config, engine

from dask_cluster import ROOT, Cluster, free_port, parent_pid

pytestmark = [pytest.mark.dask, pytest.mark.timeout(60)]

distributed = pytest.importorskip("distributed")


# -- functions the workers run (this module is importable there: see dask_cluster) ----------

def pid_of(_=None):
    return os.getpid()


def sleep_then(seconds, value, pid_file=None):
    if pid_file:
        Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return value


def add(a, b):
    return a + b


def total(items):
    return sum(x if isinstance(x, int) else sum(x.values()) for x in items)


def fail(message):
    raise ValueError(message)


class HoldsALock(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def raise_unpicklable():
    raise HoldsALock()


def raise_chained():
    try:
        {}["key"]
    except KeyError as error:
        raise ValueError("wrapped") from error


def nested():
    """A CPU fork inside a Dask task runs inline: same process, real value back."""
    inner = fork(pid_of)
    return os.getpid(), inner, type(inner) is ResultProxy


def kill_my_worker():
    os.kill(os.getpid(), signal.SIGKILL)


@io_bound
def slow_io(value):
    time.sleep(0.3)
    return value


# -- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    with Cluster(workers=2) as started:
        config.configure(backend="dask", address=started.address)
        try:
            yield started
        finally:
            config.configure(backend="local")  # closes autofork's Dask client first
            engine.shutdown()


@pytest.fixture
def dask(cluster):
    """The main cluster as autofork's backend."""
    config.configure(backend="dask", address=cluster.address)
    return cluster


@pytest.fixture(scope="module")
def strict_cluster(cluster):
    """One worker; a task whose worker dies is not retried (allowed-failures 0)."""
    with Cluster(workers=1, env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as c:
        yield c


def key_of(proxy: ResultProxy) -> str:
    return engine.backend()._futures[proxy._autofork_task].key  # type: ignore[attr-defined]


def scheduler_poll(cluster, function, timeout: float = 10):
    """``function(dask_scheduler)`` run on the scheduler until it returns something."""
    deadline = time.monotonic() + timeout
    while (answer := cluster.client.run_on_scheduler(function)) is None:
        assert time.monotonic() < deadline, "the scheduler never knew the task"
        time.sleep(0.02)
    return answer


def wait_for_file(path: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.02)
    return path.read_text()


# -- tests -------------------------------------------------------------------------------

def test_cpu_fork_runs_in_a_dask_worker_process_and_the_scheduler_knows_the_task(dask):
    proxy = fork(pid_of)
    pid = evaluate(proxy)
    assert pid != os.getpid()
    by_address = dask.worker_pids()
    assert pid in by_address.values()
    assert parent_pid(pid) in dask.nanny_pids()  # a `dask worker` process we started

    key = key_of(proxy)
    assert key.startswith("pid_of-")

    def holders(dask_scheduler, key=key):
        task = dask_scheduler.tasks.get(key)
        return None if task is None else [ws.address for ws in task.who_has]

    [address] = scheduler_poll(dask, holders)
    assert by_address[address] == pid

    outer, inner, was_proxy = evaluate(fork(nested))
    assert outer in by_address.values() and inner == outer and not was_proxy


def test_lazy_operators_and_dataflow_do_not_block_the_caller(dask):
    began = time.perf_counter()
    first = fork(sleep_then, 1.0, 1)
    both = fork(add, first, first)               # a Dask dependency, not a wait here
    lazy = first * 10 + 1                        # lazy operators on a pending proxy
    after_lazy = fork(add, lazy, 1)              # held here until the lazy value is ready
    nested_args = fork(total, [first, {"k": both}])  # proxies inside a list and a dict
    via_io = fork(add, fork(slow_io, 5), first)  # an I/O fork's proxy as an input
    assert time.perf_counter() - began < 0.5

    def dependencies(dask_scheduler, key=key_of(both)):
        task = dask_scheduler.tasks.get(key)  # None until the submission has arrived
        return None if task is None else [dep.key for dep in task.dependencies]

    assert scheduler_poll(dask, dependencies) == [key_of(first)]
    assert type(lazy) is ResultProxy
    assert (both, lazy, after_lazy, nested_args, via_io) == (2, 11, 12, 3, 6)
    assert time.perf_counter() - began >= 1.0

    with pytest.raises(ValueError, match="early"):
        evaluate(fork(add, fork(fail, "early"), 1))

    async def awaiting():
        return await fork(add, 20, 2)

    assert asyncio.run(awaiting()) == 22


def test_a_dask_future_passes_as_an_argument_so_large_data_can_be_sent_once(dask):
    from autofork.runtime.dask_backend import client

    [data] = client().scatter([bytes(1_000_000)], broadcast=True)
    assert evaluate_all(fork(len, data) for _ in range(3)) == [1_000_000] * 3
    assert evaluate(fork(total, [fork(len, data), {"k": 1}])) == 1_000_001


def _user_frames(exc: BaseException) -> list[tuple[str, str]]:
    """(function, source line) of each traceback entry outside autofork."""
    package = str(ROOT / "autofork")
    return [(f.name, (f.line or "").strip())
            for f in traceback.extract_tb(exc.__traceback__)
            if not f.filename.startswith(package)]


def test_exception_type_and_traceback_read_as_on_the_local_backend(dask):
    def raise_it():
        proxy = fork(fail, "remote trouble")  # the fork call site
        return evaluate(proxy)

    with pytest.raises(ValueError, match="remote trouble") as on_dask:
        raise_it()
    text = "".join(traceback.format_exception(on_dask.value))
    assert 'proxy = fork(fail, "remote trouble")  # the fork call site' in text
    assert "raise ValueError(message)" in text

    config.configure(backend="local")
    try:
        with pytest.raises(ValueError, match="remote trouble") as locally:
            raise_it()
    finally:
        config.configure(backend="dask", address=dask.address)
    assert _user_frames(on_dask.value) == _user_frames(locally.value)

    with pytest.raises(ValueError, match="wrapped") as chained:
        evaluate(fork(raise_chained))
    assert isinstance(chained.value.__cause__, KeyError)
    with pytest.raises(RemoteError, match="HoldsALock: holds a lock"):
        evaluate(fork(raise_unpicklable))


def test_a_worker_killed_mid_task_is_retried_on_another_worker(dask, tmp_path):
    pid_file = tmp_path / "pid"
    proxy = fork(sleep_then, 2.0, "done", str(pid_file))
    victim = int(wait_for_file(pid_file))
    pid_file.unlink()
    os.kill(victim, signal.SIGKILL)
    assert evaluate(proxy) == "done"  # Dask ran it again (allowed-failures, default 3)
    assert int(pid_file.read_text()) != victim
    dask.wait_for_workers(2)  # the nanny restarted the killed worker


def test_a_worker_that_dies_past_the_retries_raises_worker_crashed(dask, strict_cluster):
    config.configure(address=strict_cluster.address)
    try:
        with pytest.raises(WorkerCrashed, match=r"kill_my_worker\(\).*died") as info:
            evaluate(fork(kill_my_worker))
        assert "allowed-failures=0" in str(info.value)
    finally:
        config.configure(address=dask.address)


def test_a_stopped_scheduler_fails_pending_and_new_forks_with_a_connection_error(
        dask, strict_cluster, tmp_path):
    strict_cluster.wait_for_workers(1)
    config.configure(address=strict_cluster.address)
    try:
        pid_file = tmp_path / "pid"
        pending = fork(sleep_then, 30, "never", str(pid_file))
        wait_for_file(pid_file)
        strict_cluster.stop_scheduler(signal.SIGTERM)
        began = time.monotonic()
        with pytest.raises(ConnectionError, match=strict_cluster.address):
            evaluate(pending)
        with pytest.raises(ConnectionError, match="connection to the Dask scheduler"):
            evaluate(fork(pid_of))
        assert time.monotonic() - began < 10
    finally:
        config.configure(address=dask.address)
    assert evaluate(fork(add, 1, 2)) == 3  # the main cluster serves again


def test_an_unreachable_scheduler_is_a_connection_error_naming_the_address(dask, monkeypatch):
    from autofork.runtime import dask_backend

    monkeypatch.setattr(dask_backend, "CONNECT_TIMEOUT", 1.0)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    config.configure(address=nowhere)
    try:
        with pytest.raises(ConnectionError, match=nowhere):
            fork(pid_of)
    finally:
        config.configure(address=dask.address)


_SCRIPT = """
    import os
    from autofork import evaluate, fork, implicit_fork

    @implicit_fork
    def where(i):
        return os.getpid()

    @implicit_fork
    def broken(x):
        return 1 / x

    pids = [where(i) for i in range(4)]
    print("PIDS", *sorted(set(evaluate(p) for p in pids)))
    print("LAMBDA", evaluate(fork(lambda: os.getpid())))
    print("MAIN", os.getpid(), flush=True)
    value = broken(0)
    print(value)
"""


def test_python_m_autofork_with_the_dask_backend_runs_main_functions_on_the_workers(
        dask, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOFORK")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "autofork", "--backend", "dask", "--address", dask.address,
         "--stats", str(script)], capture_output=True, text=True, timeout=45, env=env, cwd=tmp_path)
    lines = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()}
    workers = set(dask.worker_pids().values())
    assert lines["PIDS"] and {int(p) for p in lines["PIDS"]} <= workers, done.stderr
    assert int(lines["LAMBDA"][0]) in workers
    assert int(lines["MAIN"][0]) not in workers
    assert done.returncode == 1
    assert "ZeroDivisionError: division by zero" in done.stderr
    assert "value = broken(0)" in done.stderr  # the call site, in the script's own file
    assert "return 1 / x" in done.stderr      # the raising line, from a __main__ function
    assert "<dynamic-code>" not in done.stderr
    [row] = [line for line in done.stderr.splitlines() if line.startswith("where ")]
    assert "dask 4" in row  # --stats: the four calls ran on Dask


def test_without_distributed_the_dask_backend_says_what_to_install(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["distributed"] = None  # as if it were not installed
        from autofork import configure, fork
        configure(backend="dask", address="tcp://127.0.0.1:1")
        try:
            fork(abs, -1)
        except ImportError as error:
            print("ImportError:", error)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "ImportError: the dask backend needs the 'distributed' package: " \
           "pip install 'autofork[dask]'" in done.stdout, done.stderr


_LONG_TASKS = """
    import os, sys, time
    from pathlib import Path
    from autofork import evaluate_all, fork

    def slow(i, folder):
        Path(folder, f"started-{i}").write_text(str(os.getpid()))
        end = time.time() + 30
        while time.time() < end and not Path(folder, "stop").exists():
            time.sleep(0.05)
        return i

    folder = sys.argv[1]
    evaluate_all([fork(slow, i, folder) for i in range(6)])
"""


def _our_tasks(dask_scheduler):  # run on the scheduler
    return sorted(str(key) for key in dask_scheduler.tasks if "slow" in str(key))


@pytest.mark.timeout(90)
def test_one_ctrl_c_cancels_the_programs_tasks_on_the_cluster(cluster, tmp_path):
    """Configured by AUTOFORK_BACKEND and AUTOFORK_DASK_ADDRESS alone; the two running
    tasks keep their workers (Dask cannot stop a running task), the four queued never run."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_LONG_TASKS))
    folder = tmp_path / "marks"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOFORK")}
    env.update(PYTHONPATH=str(ROOT), AUTOFORK_BACKEND="dask",
               AUTOFORK_DASK_ADDRESS=cluster.address)
    process = subprocess.Popen([sys.executable, "-m", "autofork", str(script), str(folder)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 45
        while len(list(folder.glob("started-*"))) < 2:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the tasks never started on the cluster"
            time.sleep(0.05)
        ran_on = {int(path.read_text()) for path in folder.glob("started-*")}
        assert ran_on <= set(cluster.worker_pids().values())
        while len(cluster.client.run_on_scheduler(_our_tasks)) < 6:  # all six sent (under
            assert time.monotonic() < deadline, "not every task reached the scheduler"  # load,
            time.sleep(0.05)  # two may start before the last ones are submitted)
        os.killpg(process.pid, signal.SIGINT)
        interrupted = time.monotonic()
        _, stderr = process.communicate(timeout=20)
        assert time.monotonic() - interrupted < 10, "the program waited for its tasks"
        assert process.returncode == 130, stderr
        assert "KeyboardInterrupt" in stderr
        deadline = time.monotonic() + 10
        while cluster.client.run_on_scheduler(_our_tasks):
            assert time.monotonic() < deadline, cluster.client.run_on_scheduler(_our_tasks)
            time.sleep(0.05)
        time.sleep(0.3)  # had a queued task been handed to a worker, it would show by now
        assert len(list(folder.glob("started-*"))) == 2
    finally:
        (folder / "stop").write_text("")  # the two running tasks end: the workers are free
        if process.poll() is None:
            process.kill()
            process.wait()
