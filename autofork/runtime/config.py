"""Settings: ``configure(...)`` and the ``AUTOFORK_*`` environment variables.

The environment is read once, when the settings are first needed; ``configure`` then
overrides it.  Changing pool sizes or the backend closes the running pools (after their
work is done); the next fork starts new ones.
"""


import os
import sys
import threading
from typing import Any, NamedTuple, Optional

__all__ = ["Settings", "settings", "configure", "enabled", "on_change", "IN_WORKER",
           "enter_worker"]

# True in a process that runs forked calls for another (a worker process, a Dask worker):
# a CPU-bound fork made there runs inline, so a worker never waits for its own pool.
IN_WORKER = False

_BACKENDS = ("local", "sequential", "dask")
_START_METHODS = ("forkserver", "spawn")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _default_start_method() -> str:
    # Never plain fork(): autofork runs manager threads, and fork() of a threaded
    # process can deadlock the child (CPython #50970).
    return "forkserver" if sys.platform != "win32" and sys.platform != "darwin" else "spawn"


class Settings(NamedTuple):
    """The settings in force.  ``workers``: worker processes; ``threads``: the most I/O threads."""

    workers: int
    start_method: str
    threads: int = 256
    backend: str = "local"
    address: Optional[str] = None
    stats: bool = False
    trace: Optional[str] = None


def _positive_int(name: str, value: object) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


def _from_environment() -> Settings:
    env = os.environ
    base = Settings(workers=_cpu_count(), start_method=_default_start_method())
    changes: dict[str, Any] = {}
    if env.get("AUTOFORK_WORKERS"):
        changes["workers"] = _positive_int("AUTOFORK_WORKERS", env["AUTOFORK_WORKERS"])
    if env.get("AUTOFORK_THREADS"):
        changes["threads"] = _positive_int("AUTOFORK_THREADS", env["AUTOFORK_THREADS"])
    if env.get("AUTOFORK_BACKEND"):
        changes["backend"] = _check_backend(env["AUTOFORK_BACKEND"], "AUTOFORK_BACKEND")
    if env.get("AUTOFORK_DASK_ADDRESS"):
        changes["address"] = env["AUTOFORK_DASK_ADDRESS"]
    if env.get("AUTOFORK_START_METHOD"):
        changes["start_method"] = _check_start_method(env["AUTOFORK_START_METHOD"],
                                                      "AUTOFORK_START_METHOD")
    if env.get("AUTOFORK", "1").strip().lower() in ("0", "false", "no", "off"):
        changes["backend"] = "sequential"
    return base._replace(**changes)


def _check_backend(name: str, where: str = "backend") -> str:
    if name not in _BACKENDS:
        raise ValueError(f"{where}={name!r} is not a backend; choose one of {', '.join(_BACKENDS)}")
    return name


def _check_start_method(name: str, where: str = "start_method") -> str:
    if name == "fork":
        raise ValueError(f"{where}='fork' is not offered: fork() of a process that runs "
                         "threads (autofork's own) can deadlock the child. 'forkserver' forks "
                         "workers from a clean single-threaded template process instead")
    if name not in _START_METHODS:
        raise ValueError(f"{where}={name!r}: choose one of {', '.join(_START_METHODS)}")
    return name


_lock = threading.Lock()
_current: Optional[Settings] = None
_listeners: list = []


def settings() -> Settings:
    """The settings in force (the environment's, then what ``configure`` changed)."""
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = _from_environment()
            current = _current
    return current


def enabled() -> bool:
    """False when autofork runs everything sequentially (``AUTOFORK=0``)."""
    return settings().backend != "sequential"


def configure(
    workers: Optional[int] = None,
    threads: Optional[int] = None,
    backend: Optional[str] = None,
    address: Optional[str] = None,
    start_method: Optional[str] = None,
    stats: Optional[bool] = None,
    trace: Optional[str] = None,
) -> Settings:
    """Change autofork's settings; returns the settings now in force.

    ``workers``: worker processes for CPU-bound forks (default: the usable cores).
    ``threads``: the most threads for I/O-bound forks (default 256, started on demand).
    ``backend``: ``"local"``, ``"sequential"`` (everything inline) or ``"dask"``.
    ``address``: the Dask scheduler, ``tcp://host:port``.
    ``start_method``: how worker processes start: ``"forkserver"`` (default on Linux: forked
    from a template process that has the program's third-party modules imported) or
    ``"spawn"`` (each a fresh interpreter).
    ``stats`` / ``trace``: report per-function statistics at exit / write a Chrome trace file.
    """
    global _current
    changes: dict[str, Any] = {}
    if workers is not None:
        changes["workers"] = _positive_int("workers", workers)
    if threads is not None:
        changes["threads"] = _positive_int("threads", threads)
    if backend is not None:
        changes["backend"] = _check_backend(backend)
    if address is not None:
        changes["address"] = address
    if start_method is not None:
        changes["start_method"] = _check_start_method(start_method)
    if stats is not None:
        changes["stats"] = bool(stats)
    if trace is not None:
        changes["trace"] = os.fspath(trace)
    with _lock:
        old = _current if _current is not None else _from_environment()
        _current = new = old._replace(**changes)
    if new != old:
        for listener in list(_listeners):
            listener(old, new)
    return new


def enter_worker() -> None:
    """This process runs forked calls for another one (``IN_WORKER``)."""
    global IN_WORKER
    IN_WORKER = True


def on_change(listener) -> None:  # type: ignore[no-untyped-def]
    """Call ``listener(old, new)`` after each change of the settings."""
    _listeners.append(listener)
