"""Shared fixtures: a clean autofork engine per test module, and script runners."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A suite started in the background by a shell without job control (`cmd &` in a script,
# nohup) inherits SIGINT ignored, and so would every program the tests start: Python then
# installs no KeyboardInterrupt handler, and the Ctrl-C tests fail.  A program started
# from a terminal never has it ignored: give the tests' programs the terminal's setting.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory):
    """These machines set PYTHONDONTWRITEBYTECODE, under which autofork caches its rewrites
    in the user's cache directory: the suite (and the programs it runs, which inherit the
    environment) uses one of its own, not the user's ~/.cache.  XDG_CACHE_HOME rather than
    AUTOFORK_CACHE_DIR, which the tests that clear AUTOFORK_* would drop."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="session", autouse=True)
def _autofork_imported():
    """Import autofork's modules once, here, in the main thread.

    The suite runs under typeguard, whose loader patches the process-wide
    ``importlib._bootstrap_external.cache_from_source`` while it executes an instrumented
    (autofork) module.  autofork imports some modules lazily in its pool threads; a test
    that meanwhile computes a module spec's ``cached`` path in the main thread got
    typeguard's pyc name (``...cpython-311.opt-typeguard461.pyc``).  Imported up front,
    nothing of autofork is imported by a background thread later."""
    import importlib
    import pkgutil

    import autofork
    import autofork.runtime

    for package in (autofork, autofork.runtime):
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            # (not enable: importing it turns the hook on)
            if info.name.rsplit(".", 1)[-1] not in ("__main__", "enable", "_ipython", "dask_backend"):
                importlib.import_module(info.name)


@pytest.fixture(scope="module", autouse=True)
def _fresh_engine():
    """Each test module starts with default settings and closes its pools at the end."""
    from autofork.runtime import config, engine

    config.configure(workers=2)
    yield
    engine.shutdown()


def run_script(tmp_path: Path, source: str, *args: str, env: dict | None = None,
               timeout: float = 60, module: bool = False,
               options: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Write ``source`` to a script in tmp_path and run it with this Python (under
    ``python -m autofork`` with ``options`` if ``module``); ``args`` go to the script."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    command = [sys.executable, *(["-m", "autofork", *options] if module else []), str(script),
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=tmp_path)
