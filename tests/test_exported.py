"""The public face: exactly these names, each documented."""

from __future__ import annotations

import subprocess
import sys

import autofork

PUBLIC = {
    "fork", "evaluate", "evaluate_all", "wait", "as_completed", "scope", "configure",
    "cpu_bound", "io_bound", "unsafe", "implicit_fork", "cpu_bound_fork", "io_bound_fork",
    "trust_effects", "ResultProxy", "WorkerCrashed", "RemoteError", "AutoforkWarning",
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "__version__",
}


def test_the_public_names_are_pinned_and_documented():
    assert set(autofork.__all__) == PUBLIC
    for name in PUBLIC - {"__version__", "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION"}:
        assert getattr(autofork, name).__doc__, name


def test_importing_autofork_starts_nothing_heavy():
    code = ("import sys, threading, autofork; "
            "heavy = {'multiprocessing', 'libcst', 'asyncio', 'concurrent.futures'} & set(sys.modules); "
            "print(sorted(heavy), threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] 1"


def test_our_exceptions_subclass_the_matching_builtin_and_survive_pickling():
    import pickle

    crash = autofork.WorkerCrashed("f", "killed by signal SIGKILL")
    assert isinstance(crash, RuntimeError)
    again = pickle.loads(pickle.dumps(crash))
    assert type(again) is autofork.WorkerCrashed and str(again) == str(crash)
    assert issubclass(autofork.AutoforkWarning, UserWarning)
