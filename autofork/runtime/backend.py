"""Backends: where CPU-bound forks run.  I/O-bound forks and coroutines always stay local.

A backend is a small object; a new engine (Ray, say) is one new module with a subclass
of ``Backend`` and one line in ``_FACTORIES``.  Optional engines are imported only when
selected, with an error that says what to install.
"""

from __future__ import annotations

import importlib
from typing import Callable

from .task import Task

__all__ = ["Backend", "create"]


class Backend:
    """Runs CPU-bound tasks somewhere and completes them (task.set_result / set_failure)."""

    name = "?"

    def submit(self, task: Task) -> None:
        """Start ``task.fn(*task.args, **task.kwargs)``; raise at once if it cannot be sent."""
        raise NotImplementedError  # pragma: no cover - abstract

    def steal(self, task: Task) -> bool:
        """Run a task that is still queued in the calling thread; False if it has left."""
        return False

    def cancel(self, task: Task) -> bool:
        """Drop a task that has not started; True if it will not run."""
        return False

    def capacity(self) -> int:
        """How many more tasks would start right away (idle workers)."""
        return 0

    def shutdown(self, kill: bool = False) -> None:
        """Finish (or with ``kill``, abandon) the work and release the workers."""


def _local(settings) -> Backend:  # type: ignore[no-untyped-def]
    from .local import LocalBackend

    return LocalBackend(settings.workers)


def _dask(settings) -> Backend:  # type: ignore[no-untyped-def]
    try:
        module = importlib.import_module("autofork.runtime.dask_backend")
    except ImportError as error:
        raise ImportError(
            "the dask backend needs the 'distributed' package: "
            "pip install 'autofork[dask]'") from error
    return module.DaskBackend(settings.address)


_FACTORIES: dict[str, Callable[..., Backend]] = {"local": _local, "dask": _dask}


def create(settings) -> Backend:  # type: ignore[no-untyped-def]
    """The backend that ``settings.backend`` names."""
    return _FACTORIES[settings.backend](settings)
