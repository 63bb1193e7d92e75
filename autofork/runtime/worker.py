"""The worker process: receives batches of calls, runs them, sends back the outcomes.

Forked from the template process (``template``, ``start_method="forkserver"``), or started
by ``processes.ProcessPool`` as ``python -c "...worker.main(fd, shm_fd, parent,
sys.argv[1:])" *sys.path`` (``"spawn"``): the connection's and the shared memory's file
descriptors, the parent's pid (the worker dies with it) and the parent's ``sys.path``.
Either way the user's script is never re-run in it, and no thread of the program is forked.

Protocol, one pickled list per message over a ``multiprocessing.connection.Connection``:

    parent -> worker   (forget, [(task_id, fn_key, fn_bytes or None, call_bytes, many,
                                 new_blobs, refs, globals_update or None), ...]) | None (stop)
    worker -> parent   [(task_id, ok, outcome_bytes, begin, end, output), ...]
                       (the first message, empty, says the worker is ready)

``call_bytes`` is one pickled ``(args, kwargs)``, or with ``many`` a list of them (a chunk
of short calls, see ``granularity``), answered by one pickled list of ``(ok, value)``.
``output`` is what the call wrote, printed, logged and warned (``output.take``), or None;
for a chunk, one such list per call, or None when no call wrote anything.
A large immutable argument travels once per worker as a blob (``new_blobs``: key, data);
a call that ``refs`` blobs names them by key; ``forget`` lists keys the worker may drop.

``fn_bytes`` is sent once per function and worker; afterwards ``fn_key`` finds it in the
worker's cache.  ``globals_update`` holds the globals the caller rebound since it pickled
the function, when this worker's copy has not seen them yet (``freshness``).  Before each call the worker writes the task id into shared memory
(``started``) and after it (``finished``): if the worker dies, the parent knows which call
it was running, which it finished without reporting, and which it never began.

The worker ignores SIGINT (the parent owns Ctrl-C) and dies with its parent: by
PR_SET_PDEATHSIG on Linux, and by a watchdog thread everywhere.  Told to stop (or at the
end of its connection) it runs its ``atexit`` handlers, flushes its output and ends with
``os._exit``: the interpreter's teardown would make the parent's exit wait for nothing.
"""

from __future__ import annotations

import importlib
import io
import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import time
from typing import Any, Callable, Optional


__all__ = ["main", "SLOT"]

SLOT = struct.Struct("qq")  # (started task id, finished task id)

_FLUSH_SECONDS = 0.002
dumps: Callable[[Any], bytes]  # serialize.dumps, imported by main()
take: Callable[[], Optional[list]]  # output.take, imported by main()
changes: Any  # the module autofork.runtime.changes, imported by main()
apply_context: Callable[[Any], None]  # context.apply, imported by main()


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(70)
            time.sleep(0.25)

    threading.Thread(target=watch, name="autofork-watchdog", daemon=True).start()
    if os.getppid() != parent:  # the parent died before PDEATHSIG was set
        os._exit(70)


def _failure(exc: BaseException) -> bytes:
    from .errors import Failure

    return pickle.dumps(Failure.capture(exc, skip=1), protocol=pickle.HIGHEST_PROTOCOL)


def _load_function(data: bytes) -> Callable[..., Any]:
    try:
        return pickle.loads(data)
    except BaseException as exc:  # noqa: BLE001 - the calls of it fail, the worker lives on
        error = exc

        def unloadable(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError(f"the function could not be loaded in the worker process: "
                               f"{type(error).__name__}: {error}") from error

        return unloadable


def _call(fn: Callable[..., Any], args: tuple, kwargs: dict) -> tuple[bool, Any]:
    before = changes.before(fn, args, kwargs)
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - sent back to the caller
        return False, _failure(exc)
    finally:
        if before is not None:
            changes.report(fn, before)


def _unsendable(fn: Callable[..., Any], exc: BaseException) -> bytes:
    error = TypeError(f"the result of {getattr(fn, '__qualname__', fn)}() cannot be sent "
                      f"back to the caller: {type(exc).__name__}: {exc}")
    return _failure(error)


class _BlobUnpickler(pickle.Unpickler):
    """Reads a call whose large arguments were sent once, as blobs (see processes._Blobs)."""

    blobs: dict[int, Any] = {}

    def persistent_load(self, key: Any) -> Any:
        return self.blobs[key]


def _load_call(call: bytes, blobs: Optional[dict]) -> Any:
    if blobs is None:
        return pickle.loads(call)
    unpickler = _BlobUnpickler(io.BytesIO(call))
    unpickler.blobs = blobs
    return unpickler.load()


def _run(fn: Callable[..., Any], call: bytes, blobs: Optional[dict] = None) -> tuple[bool, bytes]:
    """One call: (True, pickled value) or (False, pickled Failure)."""
    try:
        args, kwargs = _load_call(call, blobs)
    except BaseException as exc:  # noqa: BLE001
        return False, _failure(exc)
    ok, value = _call(fn, args, kwargs)
    if not ok:
        return False, value
    try:
        return True, dumps(value)
    except BaseException as exc:  # noqa: BLE001
        return False, _unsendable(fn, exc)


def _run_many(fn: Callable[..., Any], calls: bytes, outputs: list) -> tuple[bool, bytes]:
    """A chunk of calls of one function: (True, pickled [(ok, value or Failure bytes)]);
    what each call wrote is appended to ``outputs``."""
    outcomes = []
    try:
        for args, kwargs in pickle.loads(calls):
            outcomes.append(_call(fn, args, kwargs))
            outputs.append(take())
    except BaseException as exc:  # noqa: BLE001 - the chunk itself could not be read
        return False, _failure(exc)
    try:
        return True, dumps(outcomes)
    except BaseException:  # noqa: BLE001 - find the values that cannot travel
        pass
    sendable = []
    for ok, value in outcomes:
        try:
            dumps(value)
            sendable.append((ok, value))
        except BaseException as exc:  # noqa: BLE001
            sendable.append((False, _unsendable(fn, exc)))
    return True, dumps(sendable)


def _serve(conn: Any, slot: mmap.mmap) -> None:
    functions: dict[int, Callable[..., Any]] = {}
    blobs: dict[int, Any] = {}  # large arguments, sent once
    started = finished = -1
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return
        message = pickle.loads(message)
        if message is None:
            return
        forget, batch = message
        for key in forget:
            blobs.pop(key, None)
        results = []
        flushed = time.perf_counter()
        for task_id, fn_key, fn_bytes, call, many, new_blobs, refs, update, moved in batch:
            if moved is not None:
                apply_context(moved)
            for key, data in new_blobs or ():
                blobs[key] = pickle.loads(data)
            started = task_id
            SLOT.pack_into(slot, 0, started, finished)
            if fn_bytes is not None:  # with its first call here, or to start afresh
                functions[fn_key] = _load_function(fn_bytes)
            fn = functions[fn_key]
            if update is not None:
                _apply_globals(fn, update)
            begin = time.perf_counter()
            if many:
                outputs: list = []
                ok, outcome = _run_many(fn, call, outputs)
                written = outputs if any(outputs) else None
            else:
                ok, outcome = _run(fn, call, blobs if refs else None)
                written = take()
            end = time.perf_counter()
            finished = task_id
            SLOT.pack_into(slot, 0, started, finished)
            results.append((task_id, ok, outcome, begin, end, written))
            if end - flushed >= _FLUSH_SECONDS:
                _send(conn, results)
                results = []
                flushed = end
        if results:
            _send(conn, results)


def _apply_globals(fn: Callable[..., Any], update: bytes) -> None:
    """Rebind the globals the caller rebound since it pickled ``fn`` (see freshness)."""
    try:
        rebound = pickle.loads(update)
    except BaseException:  # noqa: BLE001 - the call then fails as the function would
        return
    namespace = getattr(fn, "__globals__", None)
    for (owner, name), value in rebound.items():
        if not owner:
            if namespace is not None:
                namespace[name] = value
            continue
        module = sys.modules.get(owner)
        if module is None:
            try:
                module = importlib.import_module(owner)
            except BaseException:  # noqa: BLE001
                continue
        setattr(module, name, value)


def _send(conn: Any, results: list) -> None:
    conn.send_bytes(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))


def main(fd: int, shm_fd: int, parent: int, path: list[str]) -> None:
    """Entry point of a worker process."""
    global dumps, take, changes, apply_context
    from . import changes, config
    from .context import apply as apply_context
    from .output import capture_in_worker, take
    from .serialize import dumps

    config.enter_worker()  # CPU forks made by the calls run inline
    capture_in_worker()  # what the calls write goes back to their caller, in call order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)
    sys.path[:] = path
    from multiprocessing.connection import Connection

    slot = mmap.mmap(shm_fd, SLOT.size)
    conn = Connection(fd)
    _send(conn, [])  # hello: ready for calls
    try:
        _serve(conn, slot)
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # the worker's own errors
        _exit_now()


def _exit_now() -> None:
    """End the process without the interpreter's slow teardown; the parent waits for it.

    What a program expects at exit still happens: the ``atexit`` handlers that calls
    registered here run, and the output is flushed.
    """
    import atexit

    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing left to write
                pass
        os._exit(0)
