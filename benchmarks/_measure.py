"""Timing helpers shared by the goals."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

ROOT = Path(__file__).resolve().parent.parent

Result = Union[float, str]  # seconds, or "error: ..."


def short_error(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ").replace("|", "/")
    return "error: " + (text if len(text) <= 90 else text[:87] + "...")


def race(contenders: dict[str, Callable[[], float]], reps: int) -> dict[str, Result]:
    """Run each contender ``reps`` times, interleaved; keep the best time of each.

    A contender times itself (so its set-up stays out) and returns seconds.  One that
    raises is recorded as ``"error: ..."`` and not run again.
    """
    best: dict[str, Result] = {name: float("inf") for name in contenders}
    for _ in range(reps):
        for name, run in contenders.items():
            if isinstance(best[name], str):
                continue
            gc.collect()
            try:
                elapsed = run()
            except Exception as error:  # noqa: BLE001 - the table must still print
                best[name] = short_error(error)
            else:
                best[name] = min(best[name], elapsed)  # type: ignore[type-var]
    return best


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def figure(result: Result, scale: float = 1.0) -> Optional[float]:
    return None if isinstance(result, str) else result * scale


def clean_env(**changes: Optional[str]) -> dict[str, str]:
    """This environment, with the repository on PYTHONPATH and ``changes`` applied (None
    removes a name)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class RunFailed(Exception):
    """A benchmark subprocess failed; ``unavailable`` when autofork lacks the feature."""

    def __init__(self, message: str, unavailable: bool = False) -> None:
        super().__init__(message)
        self.unavailable = unavailable


_MISSING = ("ImportError", "ModuleNotFoundError", "No module named", "cannot import name")


def user_env() -> dict[str, str]:
    """The environment of a user's machine for a measured program: bytecode caches on
    (these machines set PYTHONDONTWRITEBYTECODE=1, which would make every import compile)."""
    return clean_env(PYTHONDONTWRITEBYTECODE=None)


def run_python(args: list[str], cwd: Union[str, Path], timeout: float = 120,
               env: Optional[dict[str, str]] = None) -> tuple[float, str, str]:
    """Run ``python *args`` (in ``user_env()`` by default); (wall seconds, stdout, stderr).
    Raises RunFailed."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *args], cwd=cwd, env=env or user_env(),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"timed out after {timeout:g} s") from None
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        last = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise RunFailed(last[:120], unavailable=any(m in last for m in _MISSING))
    return wall, done.stdout, done.stderr


def last_json(stdout: str) -> Any:
    """The JSON object a benchmark script printed last."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RunFailed(f"no result printed: {stdout.strip()[-80:]!r}")


def rss_bytes() -> int:
    """This process's resident memory."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
