"""The engine: the backend, thread pool and event loop in use, started lazily, and their end.

At interpreter exit (``threading._register_atexit``, which runs before Python stops its
threads) every task still running is waited for, failures nobody looked at are printed
with their tracebacks, and the pools are closed; a late ``atexit`` handler then makes the
exit status non-zero if any failure was printed.  An uncaught ``KeyboardInterrupt``
kills every worker at once, before its traceback is even printed.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .. import _phases
from . import config, output, stats
from .errors import without_internal_frames
from .task import live_tasks, stopped_at, unobserved_failures

if TYPE_CHECKING:  # annotations only: typeguard would check the protocol on every fork
    from .aio import EventLoopThread
    from .executor import Engine, Executor
    from .threads import ThreadPool

__all__ = ["backend", "threads", "event_loop", "finish", "shutdown", "interrupt", "prestart",
           "before_finish"]

log = logging.getLogger("autofork")

_lock = threading.RLock()
_parts: dict[str, Executor] = {}  # "backend", "threads", "loop": started on first use
_before_finish: list[Callable[[], None]] = []
_hooks_installed = False
_failed_at_exit = False
_interrupted = False


def _part(name: str, make: Callable[[config.Settings], Any]) -> Any:
    part = _parts.get(name)
    if part is None:
        with _lock:
            part = _parts.get(name)
            if part is None:
                _install_hooks()
                part = _parts[name] = make(config.settings())
    return part


def _local(settings: config.Settings) -> Engine:
    from .processes import ProcessPool

    return ProcessPool(settings.workers, settings.start_method)


def _dask(settings: config.Settings) -> Engine:
    try:
        module = importlib.import_module("autofork.runtime.dask_backend")
    except ImportError as error:
        raise ImportError(
            "the dask backend needs the 'distributed' package: "
            "pip install 'autofork[dask]'") from error
    engine: Engine = module.connect(settings.address)
    return engine


# The engines for CPU-bound forks, by the name of ``configure(backend=...)``.  Optional
# ones are imported only when selected, with an error that says what to install.
_ENGINES: dict[str, Callable[[config.Settings], Engine]] = {"local": _local, "dask": _dask}


def backend() -> Engine:
    """The engine for CPU-bound forks, started on first use."""
    return _part("backend", lambda settings: _ENGINES[settings.backend](settings))


def threads() -> ThreadPool:
    """The thread pool for I/O-bound forks."""
    from .threads import ThreadPool  # a program without I/O-bound forks never needs it

    return _part("threads", lambda settings: ThreadPool(settings.threads))


def event_loop() -> EventLoopThread:
    """The background event loop for coroutines."""
    from .aio import EventLoopThread

    return _part("loop", lambda settings: EventLoopThread())


def prestart() -> None:
    """Start the worker processes now, in the background (rewritten code is about to fork)."""
    if config.settings().backend == "local":  # not a remote cluster: no connection yet
        backend().start()


def shutdown(kill: bool = False) -> None:
    """Close the pools (after their work, or at once with ``kill``); they restart on demand."""
    with _lock:
        parts = list(_parts.values())
        _parts.clear()
    for part in parts:
        try:
            part.close(kill=kill)
        except Exception:  # noqa: BLE001 - closing must go on
            log.exception("autofork: error while closing %r", part)


def finish() -> bool:
    """Wait for every running fork and print the failures nobody saw.  True if any."""
    for callback in _before_finish:
        callback()
    for task in live_tasks():
        task.wait()
    failures = unobserved_failures()
    stopped = [task.failure.seq for task in failures  # type: ignore[union-attr]
               if task.failure.seq >= 0]  # type: ignore[union-attr]
    if stopped:
        # The sequential program stopped at the first rewritten call that failed: what
        # it wrote after that call, and the failures of later calls, never happened.
        stopped_at(min(stopped))
        failures = unobserved_failures()
    output.flush(force=True)
    for task in failures:
        task.mark_observed()
        exc = task.failure.exception()  # type: ignore[union-attr]
        without_internal_frames(exc)
        print(f"autofork: {task.name}() failed and its result was never used:", file=sys.stderr)
        # As the interpreter prints an uncaught exception (3.10's prints __main__.Error).
        sys.excepthook(type(exc), exc, exc.__traceback__)
    return bool(failures)


def before_finish(callback: Callable[[], None]) -> None:
    """Call ``callback()`` at the start of ``finish`` (granularity sends its open chunks)."""
    _before_finish.append(callback)


def interrupt() -> None:
    """Ctrl-C: kill every worker now; at exit, wait for nothing."""
    global _interrupted
    _interrupted = True
    shutdown(kill=True)


def _on_settings_changed(old: config.Settings, new: config.Settings) -> None:
    if (old.stats, old.trace) != (new.stats, new.trace):
        stats.start(new.stats, new.trace)
        _install_hooks()
    if (old.workers, old.threads, old.backend, old.address, old.start_method) != (
            new.workers, new.threads, new.backend, new.address, new.start_method):
        shutdown()


config.on_change(_on_settings_changed)


# -- the end of the program -------------------------------------------------------------

def _install_hooks() -> None:
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    previous = sys.excepthook

    def excepthook(kind: type, value: BaseException, tb: Any) -> None:
        if issubclass(kind, KeyboardInterrupt):
            interrupt()
        previous(kind, value, tb)

    sys.excepthook = excepthook
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is not None:
            register(_at_exit)
        else:  # pragma: no cover - Python without the hook
            atexit.register(_at_exit)
    except RuntimeError:  # already shutting down
        pass


def _at_exit() -> None:
    global _failed_at_exit
    if _interrupted:
        shutdown(kill=True)
        output.flush(force=True)  # what the program wrote behind the forks it abandoned
        return
    began = time.perf_counter()
    try:
        _failed_at_exit = finish()
    except KeyboardInterrupt:
        shutdown(kill=True)
        raise
    _phases.note("exit: forks joined", began)
    began = time.perf_counter()
    shutdown()
    _phases.note("exit: pools closed", began)
    _report()


def _report() -> None:
    current = config.settings()
    if current.stats:
        stats.report()
    path = stats.write_trace()
    if path:
        log.info("wrote the trace of this run to %s", path)


@atexit.register
def _exit_status() -> None:
    # Registered when the runtime is first used, so it runs after the handlers
    # registered later; a failure printed at exit must make the exit status non-zero.
    if _failed_at_exit:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(1)


# Settings made before this module was first imported (the CLI's --stats, say).
_on_settings_changed(config.settings()._replace(stats=False, trace=None), config.settings())
