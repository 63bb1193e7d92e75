"""The template: a clean, single-threaded process from which worker processes are forked.

This is ``start_method="forkserver"`` (the default on Linux).  Starting a fresh
interpreter per worker (``spawn``) costs every worker the interpreter start and the imports
of autofork and of the user's libraries (pandas: half a second, in each worker).  So the
pool starts one template process (``python -c "...template.serve(...)"``) as soon as it
starts, and forks each worker from it: a worker is ready about a millisecond after it is
asked for.  Before the first workers are forked, the template imports the third-party
modules (site-packages) that the program has imported by then, as forkserver's preload
does, so a worker runs the user's functions at once.

Data flow (program side: the pool's dispatcher thread, the only one that talks to it)::

    dispatcher thread                              template process (one thread)
    -----------------                              -----------------------------
    preload [module names]       -- message -->    import each (failures ignored)
    (waits, or stops at close)   <-- "ready" --
    fork (path) + 3 fds          -- message -->    os.fork(): the child closes what is
      (worker socket, shm, status)                 not its own and runs worker.main
    reads the pid                <-- message --    pid (or 0: cannot fork safely)
    status fd (one per worker)   <-- 4 bytes --    the worker's exit status when it dies
                                                   (-signal or exit code, as Popen says)

Rules: the template forks only while it runs one thread (a library that started threads
at import makes it answer 0, and the pool starts its workers with ``spawn`` instead).
It dies with the program: the pool kills it when it closes (exit never waits for it, nor
for its imports); else at EOF on its socket, when its parent changes, and by
PR_SET_PDEATHSIG; each worker dies with the template (PR_SET_PDEATHSIG and the worker's
watchdog), so none outlives the program.  The template ignores SIGINT (its own session,
like every worker: the program owns Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
from typing import Any, Optional

__all__ = ["Template", "Forked", "serve", "preload_names", "discard"]

log = logging.getLogger("autofork")

_STATUS = struct.Struct("i")
_PID = struct.Struct("q")
_READY = b"ready"  # the template's answer to "preload": it can fork workers now
_MAX_MESSAGE = 1 << 20
# The template's own imports: everything a worker needs before its first call.
_READY_MODULES = ("autofork.runtime.worker", "autofork.runtime.serialize",
                  "autofork.runtime.errors", "autofork.runtime.config",
                  "autofork.runtime.context", "autofork.runtime.output", "autofork.runtime.changes",
                  "multiprocessing.connection")


# -- the program's side ---------------------------------------------------------------------

def discard(process: Any) -> None:
    """Kill ``process`` (a worker or the template) without waiting for it: exit never
    waits.  A ``subprocess.Popen`` not reaped yet is marked as killed, so that it does not
    warn, when dropped, that it is "still running" (a ResourceWarning that ``-W default``
    and ``-X dev`` show at every exit); the kernel lets it go when this process ends."""
    process.kill()
    if isinstance(process, subprocess.Popen) and process.poll() is None:
        process.returncode = -signal.SIGKILL


class Forked:
    """A worker forked by the template, with the face of ``subprocess.Popen`` the pool uses."""

    def __init__(self, pid: int, status_fd: int) -> None:
        self.pid = pid
        self.returncode: Optional[int] = None
        self._status = status_fd

    def poll(self) -> Optional[int]:
        if self.returncode is None and self._status < 0:
            self.returncode = -signal.SIGKILL  # closed after a kill
        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        if self.poll() is None:
            if not select.select([self._status], [], [], timeout)[0]:
                raise subprocess.TimeoutExpired(f"autofork worker {self.pid}", timeout or 0.0)
            self._read_status()
        return self.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Stop following the worker (it was killed, or told to stop and waited for)."""
        if self._status >= 0:
            os.close(self._status)
            self._status = -1

    def _read_status(self) -> None:
        data = os.read(self._status, _STATUS.size)
        os.close(self._status)
        self._status = -1
        # No status: the template died first, and took the worker with it (PDEATHSIG).
        self.returncode = _STATUS.unpack(data)[0] if len(data) == _STATUS.size else -signal.SIGKILL


class Template:
    """The program's handle on the template process."""

    def __init__(self, path: list[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = ("import sys; from autofork.runtime.template import serve; "
                f"serve({theirs.fileno()}, {os.getpid()}, sys.argv[1:])")
        self.process = subprocess.Popen(
            # -W: the program's warning options hold in the workers too (they inherit them)
            [sys.executable, *(f"-W{option}" for option in sys.warnoptions), "-c", code, *path],
            pass_fds=(theirs.fileno(),), close_fds=True,
            stdin=subprocess.DEVNULL, start_new_session=True, env=_environment())
        theirs.close()
        self._socket = ours
        self.broken = False
        self.answered = False  # it answered preload (the answer is read once, by preloaded)

    def preload(self, names: list[str]) -> None:
        """Ask the template to import ``names`` before it forks workers; it answers when
        it has (``preloaded``): wait for ``fileno()`` to be readable."""
        self._send(pickle.dumps(("preload", names)), [])

    def fileno(self) -> int:
        """The socket to the template (readable once it answered ``preload``)."""
        return self._socket.fileno()

    def preloaded(self) -> None:
        """Read the template's answer to ``preload`` (it is broken if it died instead)."""
        try:
            answer = self._socket.recv(_PID.size)
        except OSError:
            answer = b""
        self.answered = True
        if answer != _READY:
            self.broken = True
            log.warning("autofork: the template process ended before it could fork workers "
                        "(exit status %s); starting each worker as a fresh interpreter instead",
                        self.process.poll())

    def fork(self, conn_fd: int, shm_fd: int, path: list[str]) -> Optional[Forked]:
        """A new worker on ``conn_fd`` and ``shm_fd``; None if the template cannot fork."""
        status_r, status_w = os.pipe()
        try:
            self._send(pickle.dumps(("fork", path)), [conn_fd, shm_fd, status_w])
            reply = self._socket.recv(_PID.size) if not self.broken else b""
        except OSError:
            reply = b""
        finally:
            os.close(status_w)
        pid = _PID.unpack(reply)[0] if len(reply) == _PID.size else 0
        if pid <= 0:
            os.close(status_r)
            if not self.broken:
                log.warning("autofork: the template process cannot fork workers (%s); "
                            "starting each worker as a fresh interpreter instead",
                            "it runs threads" if reply else "it is gone")
            self.broken = True
            return None
        return Forked(pid, status_r)

    def _send(self, message: bytes, fds: list[int]) -> None:
        if self.broken:
            return
        try:
            socket.send_fds(self._socket, [message], fds)
        except OSError:
            self.broken = True

    def close(self) -> None:
        """Kill the template (its workers die with it): it holds nothing of the program's,
        and exit does not wait for it, even while it starts or imports."""
        self._socket.close()
        if self.process.poll() is None:
            discard(self.process)


# Math libraries start a thread pool when imported (OpenBLAS does), and a process with
# threads must not fork: one thread each, unless the user chose otherwise.  With one
# worker per core this is also what avoids oversubscription (loky does the same).
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in _ONE_THREAD:
        env.setdefault(name, "1")
    return env


# Imported here by autofork itself, not by the program: libcst only to rewrite (a worker
# never needs it, and it takes 0.2 s to import); the template imports cloudpickle anyway.
_OWN_DEPENDENCIES = frozenset({"autofork", "libcst", "cloudpickle"})


def preload_names() -> list[str]:
    """Names of the top-level third-party modules imported here (in site-packages), but
    for autofork's own (``_OWN_DEPENDENCIES``).  A package's submodules are not named: a
    worker imports them from the preloaded package at its first call that needs them."""
    import sysconfig  # the program's side only; the template never needs it

    paths = sysconfig.get_paths()
    roots = {os.path.join(path, "") for key in ("purelib", "platlib")
             if (found := paths.get(key)) for path in (found, os.path.realpath(found))}
    prefixes = tuple(roots)
    names = []
    for name, module in list(sys.modules.items()):
        if "." in name or name.startswith("_") or name in _OWN_DEPENDENCIES or module is None:
            continue
        where = getattr(module, "__file__", None)
        if where is None:  # a namespace package: where its first part is
            where = next(iter(getattr(module, "__path__", None) or ()), None)
        if isinstance(where, str) and where.startswith(prefixes):
            names.append(name)
    return sorted(names)


# -- the template process -----------------------------------------------------------------

def serve(fd: int, parent: int, path: list[str]) -> None:
    """Entry point of the template process."""
    try:
        _serve(fd, parent, path)
    except OSError:
        if os.getppid() == parent:
            raise
        # The program is gone (it exited while this process started): leave quietly.


def _serve(fd: int, parent: int, path: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _kill_me_with_parent()
    sys.path[:] = path
    for name in _READY_MODULES:
        __import__(name)
    control = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: dict[int, int] = {}  # pid -> status fd
    try:
        while True:
            ready = select.select([control, wake_r], [], [], 0.25)[0]
            if os.getppid() != parent:
                return
            if wake_r in ready:
                os.read(wake_r, 512)
            _reap(children)
            if control in ready and not _handle(control, children, (fd, wake_r, wake_w)):
                return
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _handle(control: socket.socket, children: dict[int, int], own: tuple) -> bool:
    """One request; False at EOF (the program is gone or closed the pool)."""
    message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 3)
    if not message:
        return False
    kind, payload = pickle.loads(message)
    if kind == "preload":
        for name in payload:
            try:
                __import__(name)
            except BaseException:  # noqa: BLE001 - a worker imports it itself if it needs it
                pass
        control.send(_READY)
        return True
    conn_fd, shm_fd, status_fd = fds
    pid = _fork(conn_fd, shm_fd, status_fd, children, own, payload) if _one_thread() else 0
    for each in (conn_fd, shm_fd):
        os.close(each)
    if pid:
        children[pid] = status_fd
    else:
        os.close(status_fd)
    control.send(_PID.pack(pid))
    return True


def _fork(conn_fd: int, shm_fd: int, status_fd: int, children: dict[int, int], own: tuple,
          path: list[str]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the worker: nothing of the template's but what it was given
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for each in (*own, status_fd, *children.values()):
            os.close(each)
        from . import worker

        worker.main(conn_fd, shm_fd, os.getppid(), path)
        code = 0
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)
    return 0  # pragma: no cover - never reached


def _reap(children: dict[int, int]) -> None:
    """Tell the program how each worker that died ended."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = children.pop(pid, None)
        if fd is not None:
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            try:
                os.write(fd, _STATUS.pack(code))
            except OSError:
                pass
            os.close(fd)


def _one_thread() -> bool:
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        import threading

        return threading.active_count() == 1


def _kill_me_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

