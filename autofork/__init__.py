"""autofork: make a sequential program parallel with one decorator, and sequential again
with one switch (``AUTOFORK=0``).

    from autofork import fork, evaluate
    squares = [fork(slow_square, n) for n in range(8)]   # returns at once
    print(sum(squares))                                  # waits only here

This module holds the public names only; the work lives in ``autofork.runtime``.
"""

from __future__ import annotations

from .runtime.api import (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed,
                          evaluate, evaluate_all, fork, scope, wait)
from .runtime.config import configure
from .runtime.errors import AutoforkWarning, RemoteError, WorkerCrashed
from .runtime.marks import (cpu_bound, cpu_bound_fork, implicit_fork, io_bound,
                            io_bound_fork, unsafe)
from .runtime.proxy import ResultProxy

__version__ = "0.1.0"

__all__ = [
    "fork", "evaluate", "evaluate_all", "wait", "as_completed", "scope", "configure",
    "cpu_bound", "io_bound", "unsafe", "implicit_fork", "cpu_bound_fork", "io_bound_fork",
    "ResultProxy", "WorkerCrashed", "RemoteError", "AutoforkWarning",
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "__version__",
]
