"""How long each phase of a run took, told by the ``autofork`` logger at DEBUG.

    AUTOFORK_LOG=DEBUG python -m autofork script.py

prints one line per phase on stderr, each with the time since autofork was imported
and the phase's own duration (on Linux, the first line says when the process started)::

    autofork:  -21.0 ms  the process started
    autofork:   4.1 ms  hook installed (3.9 ms)
    autofork:   5.0 ms  __main__ from the cache (0.8 ms)
    autofork:  31.2 ms  2 workers started (24.5 ms)
    ...

The phases: ``hook`` (the CLI and the import hook), ``rewrite`` (the script, from the
cache or rewritten), ``pool`` (starting the workers), ``first result``, ``program`` (the
script's own code), ``exit`` (joining forks, then stopping the pools).  Without
``AUTOFORK_LOG`` the same records go to the ``autofork`` logger, where the program's own
logging configuration may show them; ``logging`` itself is not imported for them (no
program that has not imported it can have configured it), so this costs nothing when
nobody listens.

No phase waits long in silence: a wait of start-up or exit goes through ``wait``, which
logs its duration at DEBUG and, when it passes ``SLOW_SECONDS``, warns once (on the
``autofork`` logger, which Python shows on stderr even unconfigured) naming the phase,
while it still waits.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional

__all__ = ["STARTED", "SLOW_SECONDS", "note", "wait", "setup_from_environment"]

#: A start-up or exit wait longer than this (seconds) is told as a warning, naming it.
SLOW_SECONDS = 2.0

#: When autofork was first imported (``time.perf_counter``): the origin of every figure.
STARTED = time.perf_counter()


_told_age = False


def note(what: str, began: float | None = None, *args: object) -> None:
    """Log ``what % args`` at DEBUG, with the time since start (and since ``began``)."""
    global _told_age
    logging = sys.modules.get("logging")
    if logging is None:
        return
    log = logging.getLogger("autofork")
    if not log.isEnabledFor(logging.DEBUG):
        return
    now = time.perf_counter()
    if not _told_age:
        _told_age = True
        age = _process_age()
        if age is not None:  # the interpreter's own start-up, before autofork was imported
            log.debug("%7.1f ms  the process started", (now - STARTED - age) * 1e3)
    text = what % args if args else what
    if began is not None:
        text += f" ({(now - began) * 1e3:.1f} ms)"
    log.debug("%7.1f ms  %s", (now - STARTED) * 1e3, text)


_warned: set[str] = set()


def wait(phase: str, until: Callable[[Optional[float]], bool], warn: bool = True) -> bool:
    """Wait as ``until(timeout)`` does (True once done; a None timeout waits for good),
    telling how long it took at DEBUG as ``phase``; True when done.

    ``until`` is first given ``SLOW_SECONDS``; if that was not enough, a warning says
    which phase is waiting (once per phase and process, and only when ``warn``: a wait for
    the program's own work is no stall), then it waits without a limit.
    """
    began = time.perf_counter()
    done = until(SLOW_SECONDS)
    if not done:
        if warn and phase not in _warned:
            _warned.add(phase)
            import logging

            logging.getLogger("autofork").warning(
                "autofork: %s: still waiting after %.1f s (AUTOFORK_LOG=DEBUG times each "
                "phase)", phase, time.perf_counter() - began)
        done = until(None)
    note(phase, began)
    return done


def _process_age() -> float | None:
    """Seconds since this process started (Linux; 10 ms resolution), else None."""
    try:
        with open("/proc/self/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
        with open("/proc/uptime", "rb") as uptime:
            now = float(uptime.read().split()[0])
        return max(0.0, now - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def setup_from_environment() -> None:
    """``AUTOFORK_LOG=LEVEL``: show the ``autofork`` logger's records down to LEVEL on stderr."""
    level = os.environ.get("AUTOFORK_LOG", "").strip().upper()
    if not level:
        return
    import logging

    log = logging.getLogger("autofork")
    if any(getattr(handler, "_autofork", False) for handler in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    handler._autofork = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    try:
        log.setLevel(level)
    except ValueError:
        log.setLevel(logging.DEBUG)
        log.warning("AUTOFORK_LOG=%s is not a logging level (DEBUG, INFO, WARNING...); "
                    "showing DEBUG", level)
