"""What the rewriter tells when a rewritten module runs: the functions it keeps plain.

The rewriter puts one call per such function at the top of the rewritten module (so a
module loaded from the bytecode cache tells it too)::

    _autofork_notices.kept_plain('add', "add() is not forked, ...", __file__, 5, __name__)

``kept_plain`` warns (``AutoforkWarning``, at the file and line of the effect) and
records the function for ``--stats``.  It is cheap to import: no pool, no libcst.
"""

from __future__ import annotations

import atexit
import warnings

from . import config, stats
from .errors import AutoforkWarning

__all__ = ["kept_plain"]

_report_registered = False


def kept_plain(function: str, message: str, filename: str, line: int, module: str) -> None:
    """The rewriter keeps the calls of ``function`` plain: warn once, tell ``--stats``."""
    global _report_registered
    warnings.warn_explicit(message, AutoforkWarning, filename, line, module)
    stats.kept_plain(function, f"{filename}:{line}: {message}")
    if not _report_registered and config.settings().stats:
        # A program whose only marked functions run plainly never starts the engine,
        # whose exit handler prints the table: print the plain ones here then.
        _report_registered = True
        atexit.register(stats.report_if_not_yet)
