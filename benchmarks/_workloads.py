"""The functions the benchmarks fork.  They live in an importable module so that every
pool (autofork's workers, ``ProcessPoolExecutor``, ``multiprocessing.Pool``, joblib's
loky workers) finds them by reference, the same way for all.
"""

from __future__ import annotations

import asyncio
import time

from autofork import implicit_fork, io_bound


def noop(x):
    """The trivial call: what a per-call overhead is measured with."""
    return x


@io_bound
def io_noop(x):
    """The trivial call, marked for a thread."""
    return x


@implicit_fork
def busy(k):
    """A pure-Python busy loop of ``k`` steps (``calibrate`` finds ``k`` for a duration)."""
    s = 0
    for i in range(k):
        s += i
    return s


def plain_busy(k):
    """``busy`` without a mark (the same code)."""
    s = 0
    for i in range(k):
        s += i
    return s


@io_bound
def sleep_50ms(_=None):
    time.sleep(0.05)
    return 1


async def async_sleep_50ms():
    await asyncio.sleep(0.05)
    return 1


def pause(seconds):
    """Hold a worker for ``seconds`` (to keep later calls pending)."""
    time.sleep(seconds)
    return seconds


def calibrate(seconds: float, fn=plain_busy) -> int:
    """The ``k`` for which one call ``fn(k)`` takes about ``seconds`` here."""
    def per_call(k: int, calls: int, tries: int = 3) -> float:
        best = float("inf")
        for _ in range(tries):
            start = time.perf_counter()
            for _ in range(calls):
                fn(k)
            best = min(best, (time.perf_counter() - start) / calls)
        return best

    fixed = per_call(0, 20000)
    step = (per_call(20000, 5) - fixed) / 20000
    k = max(1, round((seconds - fixed) / step))
    calls = max(1, min(20000, int(0.02 / seconds)))
    tries = 3 if seconds < 0.01 else 1
    for _ in range(3):  # refine at the size itself: the cost per step is not quite linear
        took = per_call(k, calls, tries)
        if abs(took - seconds) < 0.02 * seconds or took <= fixed:
            break
        k = max(1, round(k * (seconds - fixed) / (took - fixed)))
    return k
