"""A real Dask cluster on 127.0.0.1 for the tests: ``dask scheduler`` + ``dask worker`` processes.

Each process starts in its own session (its own process group), with PR_SET_PDEATHSIG on
Linux, so that ``stop()`` can kill a whole group (a worker's nanny and the worker process
it spawns) and nothing outlives the test run, even when pytest itself is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
_DASK = shutil.which("dask", path=os.path.dirname(sys.executable)) or "dask"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Run in the child before it becomes `dask ...`: die with this process (PR_SET_PDEATHSIG
# survives exec).  Not a preexec_fn: this process runs threads (Dask clients), and Python
# code between fork and exec in a threaded process can deadlock.
_PRELUDE = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


class Cluster:
    """A scheduler and ``workers`` single-threaded workers (each behind a nanny)."""

    def __init__(self, workers: int = 2, env: Optional[dict] = None) -> None:
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.directory = tempfile.mkdtemp(prefix="autofork-dask-")
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]), **(env or {})}
        self.scheduler: Optional[subprocess.Popen] = None
        self.workers: list[subprocess.Popen] = []
        self._client = None
        try:
            self.scheduler = self._spawn(
                "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                "--no-dashboard")
            for _ in range(workers):
                self.add_worker(wait=False)
            self.wait_for_workers(workers)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, *args: str) -> subprocess.Popen:
        log = open(os.path.join(self.directory, f"{args[0]}-{time.monotonic_ns()}.log"), "wb")
        with log:
            return subprocess.Popen(
                [sys.executable, "-c", _PRELUDE, str(os.getpid()), _DASK, *args],
                stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.directory,
                start_new_session=True)

    def add_worker(self, wait: bool = True) -> subprocess.Popen:
        worker = self._spawn("worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                             "--no-dashboard", "--death-timeout", "20",
                             "--local-directory", self.directory, "--memory-limit", "0")
        self.workers.append(worker)
        if wait:
            self.wait_for_workers(len(self.live_workers()))
        return worker

    def live_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    @property
    def client(self):  # type: ignore[no-untyped-def]
        """A client of the test itself (not autofork's), connected on first use."""
        if self._client is None:
            from distributed import Client

            self._client = Client(self.address, timeout=20, set_as_default=False)
        return self._client

    def wait_for_workers(self, count: int, timeout: float = 30) -> None:
        self.client.wait_for_workers(count, timeout=timeout)
        deadline = time.monotonic() + timeout
        while len(self.client.scheduler_info(n_workers=-1)["workers"]) != count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster at {self.address} has not {count} workers")
            time.sleep(0.05)

    def worker_pids(self) -> dict[str, int]:
        """{worker address: pid of the worker process} (the nanny's child)."""
        return self.client.run(os.getpid)

    def nanny_pids(self) -> set[int]:
        return {w.pid for w in self.live_workers()}

    def stop_scheduler(self, sig: int = signal.SIGTERM) -> None:
        assert self.scheduler is not None
        os.killpg(self.scheduler.pid, sig)

    def stop(self) -> None:
        """Close the test's client, then kill every process group; reap them all."""
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close(timeout=2)
            except Exception:  # noqa: BLE001 - the cluster may be gone already
                pass
        processes = [p for p in (self.scheduler, *self.workers) if p is not None]
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for process in processes:
            process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` (Linux /proc; ps elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        out = subprocess.run(["ps", "-o", "ppid=", "-p", str(pid)], capture_output=True,
                             text=True, check=True).stdout
        return int(out.strip())
