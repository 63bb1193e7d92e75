"""autofork: make a sequential program parallel with one decorator, and sequential again
with one switch (``AUTOFORK=0``).

    from autofork import fork, evaluate
    squares = [fork(slow_square, n) for n in range(8)]   # returns at once
    print(sum(squares))                                  # waits only here

In IPython or Jupyter, ``%load_ext autofork`` rewrites the cells that follow as the
import hook rewrites a module (``autofork._ipython``).

This module holds the public names only; the work lives in ``autofork.runtime``.  The
names load on first use (PEP 562), so that a worker process, which imports
``autofork.runtime.worker``, does not pay for the whole runtime at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "fork", "evaluate", "evaluate_all", "wait", "as_completed", "scope", "configure",
    "cpu_bound", "io_bound", "unsafe", "implicit_fork", "cpu_bound_fork", "io_bound_fork",
    "trust_effects", "ResultProxy", "WorkerCrashed", "RemoteError", "AutoforkWarning",
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "__version__",
]

_HOMES = {
    "autofork._ipython": ("load_ipython_extension", "unload_ipython_extension"),
    "autofork.runtime.api": ("fork", "evaluate", "evaluate_all", "wait", "as_completed", "scope",
                             "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"),
    "autofork.runtime.config": ("configure",),
    "autofork.runtime.errors": ("AutoforkWarning", "RemoteError", "WorkerCrashed"),
    "autofork.runtime.marks": ("cpu_bound", "io_bound", "unsafe", "implicit_fork",
                               "cpu_bound_fork", "io_bound_fork", "trust_effects"),
    "autofork.runtime.proxy": ("ResultProxy",),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from .runtime.api import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed,
                              evaluate, evaluate_all, fork, scope, wait)
    from .runtime.config import configure
    from .runtime.errors import AutoforkWarning, RemoteError, WorkerCrashed
    from .runtime.marks import (cpu_bound, cpu_bound_fork, implicit_fork, io_bound,
                                io_bound_fork, trust_effects, unsafe)
    from .runtime.proxy import ResultProxy


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'autofork' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain one
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
