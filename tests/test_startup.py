"""The cost of being on (SPEC 9), as behaviour: what a cached run imports, when the cached
``__main__`` rewrite is used, and that exit leaves no worker behind.  Timing itself lives in
the benchmarks (``python -m benchmarks``, whole-process section)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
    import json, os, sys
    from autofork import implicit_fork
    from helper import double

    @implicit_fork
    def where(x):
        return os.getpid()

    pids = [where(i) for i in range(4)]
    print(json.dumps({
        "main": os.getpid(), "where": sorted({int(p) for p in pids}),
        "double": int(double(2)),
        # (a copy: the pool's thread may be importing meanwhile)
        "libcst": sorted(m for m in list(sys.modules) if m.split(".")[0] == "libcst"),
        "rewritten": any(name.startswith("_autofork_rt") for name in globals()),
    }))
"""

HELPER = """
    import os

    def double(x):
        return os.getpid()
"""

MARKED_HELPER = """
    import os
    from autofork import implicit_fork

    @implicit_fork
    def double(x):
        return os.getpid()
"""


def _env(**changes: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("AUTOFORK") and key != "PYTHONDONTWRITEBYTECODE"}
    env.update({"AUTOFORK_WORKERS": "2", "PYTHONPATH": str(ROOT), **changes})
    return env


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def _run(directory: Path, *options: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "autofork", *options, "script.py"],
                            cwd=directory, env=_env(**env), capture_output=True, text=True,
                            timeout=90)
    assert result.returncode == 0, result.stderr
    return result


def _report(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.timeout(200)
def test_a_cached_run_imports_no_libcst_and_an_edit_is_seen(tmp_path: Path) -> None:
    _write(tmp_path / "script.py", SCRIPT)
    _write(tmp_path / "helper.py", HELPER)
    first = _report(_run(tmp_path))
    assert first["libcst"], "the first run rewrites the script, with libcst"
    assert first["rewritten"]
    # Bytecode writing on (as _env sets it): beside the script.
    [cached] = (tmp_path / "__pycache__").glob("script.*.autofork-*.main.pyc")

    second = _report(_run(tmp_path))
    assert second["libcst"] == []  # from the cache: no libcst at all
    assert second["rewritten"]  # still the rewritten code

    # An edit of the script is seen, even within the same second (hash-checked).
    _write(tmp_path / "script.py", SCRIPT.replace("range(4)", "range(5)"))
    third = _report(_run(tmp_path))
    assert third["libcst"], "an edited script is rewritten again"
    assert _report(_run(tmp_path))["libcst"] == []  # and then cached again

    # A module the script imports gains a mark: the cached rewrite of the script is
    # stale (its call of double() must now fork), though the script did not change.
    _write(tmp_path / "helper.py", MARKED_HELPER)
    fourth = _report(_run(tmp_path))
    assert fourth["libcst"], "the script's cached rewrite is stale: rewritten again"


PLAIN = """
    import json, os, sys
    from helper import double

    print(json.dumps({
        "main": os.getpid(), "double": int(double(2)),
        "rewriter": "autofork.transformer" in sys.modules,
        "rewritten": any(name.startswith("_autofork_rt") for name in globals()),
    }))
"""


@pytest.mark.timeout(200)
def test_a_script_that_needs_no_rewrite_is_cached_as_such(tmp_path: Path) -> None:
    """Its second run does not even import the rewriter; a mark appearing in a module it
    imports makes that cache stale."""
    _write(tmp_path / "script.py", PLAIN)
    _write(tmp_path / "helper.py", HELPER)
    first = _report(_run(tmp_path))
    assert first["rewriter"] and not first["rewritten"]
    second = _report(_run(tmp_path))
    assert not second["rewriter"] and not second["rewritten"]
    _write(tmp_path / "helper.py", MARKED_HELPER)
    third = _report(_run(tmp_path))
    assert third["rewritten"]  # the call site of double() is rewritten now


def _autofork_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.autofork-*.pyc"))


@pytest.mark.timeout(200)
def test_without_bytecode_writing_the_rewrites_are_cached_in_the_cache_dir(tmp_path: Path) -> None:
    """PYTHONDONTWRITEBYTECODE: nothing beside the sources; the rewrites (the script's and
    a marked module's) go to AUTOFORK_CACHE_DIR, laid out as PYTHONPYCACHEPREFIX does."""
    project, cache = tmp_path / "project", tmp_path / "cache"
    project.mkdir()
    _write(project / "script.py", SCRIPT)
    _write(project / "helper.py", MARKED_HELPER)
    env = {"PYTHONDONTWRITEBYTECODE": "1", "AUTOFORK_CACHE_DIR": str(cache)}
    first = _report(_run(project, **env))
    assert first["libcst"] and first["rewritten"]
    below = cache / str(project).lstrip(os.sep)
    tag = sys.implementation.cache_tag
    names = [p.relative_to(below).as_posix() for p in _autofork_files(cache)]
    assert [name.split(".autofork-")[0] for name in names] == [f"helper.{tag}", f"script.{tag}"]
    assert names[1].endswith(".main.pyc")  # the script's own rewrite
    assert _autofork_files(project) == [] and not (project / "__pycache__").exists()

    second = _report(_run(project, **env))
    assert second["libcst"] == [] and second["rewritten"]  # from the cache dir

    _write(project / "script.py", SCRIPT.replace("range(4)", "range(5)"))
    assert _report(_run(project, **env))["libcst"], "an edited script is rewritten again"


@pytest.mark.timeout(200)
def test_autofork_cache_0_caches_nothing(tmp_path: Path) -> None:
    _write(tmp_path / "script.py", SCRIPT)
    _write(tmp_path / "helper.py", HELPER)
    for _ in range(2):  # bytecode writing on: the cache would be beside the sources
        report = _report(_run(tmp_path, AUTOFORK_CACHE="0"))
        assert report["libcst"] and report["rewritten"]
    assert _autofork_files(tmp_path) == []


@pytest.mark.timeout(120)
def test_an_unwritable_cache_dir_costs_only_speed(tmp_path: Path) -> None:
    _write(tmp_path / "script.py", SCRIPT)
    _write(tmp_path / "helper.py", HELPER)
    (tmp_path / "blocked").write_text("a file where the cache directory should be")
    for _ in range(2):
        report = _report(_run(tmp_path, PYTHONDONTWRITEBYTECODE="1",
                              AUTOFORK_CACHE_DIR=str(tmp_path / "blocked" / "cache")))
        assert report["libcst"] and report["rewritten"]
    assert _autofork_files(tmp_path) == []


EXITING = """
    import atexit, json, os, sys
    from autofork import fork

    def work(path):
        atexit.register(lambda: open(path, "w").write("ran"))  # in the worker
        return os.getpid()

    def descendants():
        parent = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        parent[int(entry)] = int(stat.read().rpartition(")")[2].split()[1])
                except OSError:
                    continue
        found, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            kids = [child for child, ppid in parent.items() if ppid == pid]
            found += kids
            todo += kids
        return found

    pid = int(fork(work, sys.argv[1]))  # explicit: always in a worker
    print(json.dumps({"worker": pid, "descendants": descendants()}), flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(120)
def test_exit_with_idle_workers_leaves_no_process_behind(tmp_path: Path) -> None:
    """Four workers, one used: the idle ones (perhaps still starting) are killed, the used
    one is told to stop and runs its atexit handlers; none is alive once the program is."""
    (tmp_path / "script.py").write_text(textwrap.dedent(EXITING))
    flag = tmp_path / "atexit-ran"
    result = subprocess.run(
        [sys.executable, "-m", "autofork", "script.py", str(flag)], cwd=tmp_path,
        env=_env(AUTOFORK_WORKERS="4"), capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["worker"] in report["descendants"] and len(report["descendants"]) >= 4
    # subprocess.run has reaped the program: its workers must be gone already (a short
    # grace for the kernel to finish a kill; a worker that lingered would live 0.25 s+).
    deadline = time.monotonic() + 0.2
    while any(_alive(pid) for pid in report["descendants"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [pid for pid in report["descendants"] if _alive(pid)] == []
    assert flag.read_text() == "ran"  # the worker's atexit handler ran before it ended


@pytest.mark.timeout(120)
def test_debug_logging_times_each_phase(tmp_path: Path) -> None:
    _write(tmp_path / "script.py", SCRIPT)
    _write(tmp_path / "helper.py", HELPER)
    _run(tmp_path)
    log = _run(tmp_path, AUTOFORK_LOG="DEBUG").stderr
    for phase in ("hook installed", "__main__ from the cache", "program done",
                  "exit: forks joined", "exit: pools closed"):
        assert f" ms  {phase}" in log, (phase, log)
    assert _run(tmp_path).stderr == ""  # silent without AUTOFORK_LOG


def test_the_pool_module_leaves_worker_start_up_imports_to_its_dispatcher() -> None:
    """What only the dispatcher thread needs to start workers (the template, subprocess,
    sockets, shared memory) is not imported with the pool, before the program's first fork."""
    # What autofork's import adds to what cloudpickle (imported with the pool) loads anyway:
    # on 3.10, cloudpickle's `import uuid` imports platform and with it subprocess.
    code = ("import json, sys, cloudpickle; before = set(sys.modules); "
            "import autofork.runtime.engine, autofork.runtime.processes; "
            "print(json.dumps(sorted(set(sys.modules) - before)))")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert "autofork.runtime.processes" in loaded
    assert loaded.isdisjoint({"autofork.runtime.template", "autofork.runtime.worker", "subprocess",
                              "tempfile", "mmap", "socket", "multiprocessing.connection"})


def test_a_slow_phase_warns_once_naming_it_and_is_timed(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A start-up or exit wait never sits silent: past SLOW_SECONDS a warning names the
    phase (once), and DEBUG tells how long it took."""
    import logging
    import threading

    from autofork import _phases

    monkeypatch.setattr(_phases, "SLOW_SECONDS", 0.05)
    phase = f"exit: test phase {time.monotonic_ns()}"  # a phase of its own: warned once each
    with caplog.at_level(logging.DEBUG, logger="autofork"):
        for _ in range(2):
            done = threading.Event()
            threading.Timer(0.2, done.set).start()
            assert _phases.wait(phase, done.wait)
            assert done.is_set()
        assert _phases.wait(phase + " quick", lambda timeout: True)
        slow = threading.Event()
        threading.Timer(0.2, slow.set).start()
        assert _phases.wait(phase + " quiet", slow.wait, warn=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"autofork: {phase}: still waiting after ")
    timed = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum(f"ms  {phase} (" in m for m in timed) == 2
    assert any(f"ms  {phase} quiet (" in m for m in timed)


@pytest.mark.timeout(200)
def test_a_cached_package_main_imports_no_libcst(tmp_path: Path) -> None:
    """``python -m autofork -m app``: the hook does not analyse ``app.__main__`` as a module
    before the CLI reads its cached rewrite (that analysis imported libcst on every run)."""
    _write(tmp_path / "app" / "__init__.py", "")
    _write(tmp_path / "app" / "work.py", MARKED_HELPER)
    _write(tmp_path / "app" / "__main__.py", """
        import json, sys
        from .work import double

        values = [double(i) for i in range(3)]
        print(json.dumps({"libcst": "libcst" in sys.modules, "n": len(values),
                          "rewritten": any(n.startswith("_autofork_rt") for n in globals())}))
    """)

    def run() -> dict:
        done = subprocess.run([sys.executable, "-m", "autofork", "-m", "app"], cwd=tmp_path,
                              env=_env(), capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    assert run() == {"libcst": True, "n": 3, "rewritten": True}
    assert run() == {"libcst": False, "n": 3, "rewritten": True}


@pytest.mark.timeout(60)
def test_a_pool_closed_before_its_dispatcher_ran_starts_no_process(
        caplog: pytest.LogCaptureFixture) -> None:
    """A short program can end before the pool's thread first runs (it had no GIL while
    the script ran): exit then starts no template process, and does not wait for one."""
    import logging
    import threading

    from autofork.runtime.processes import ProcessPool

    pool = ProcessPool(2)
    gate = threading.Event()

    def hold_the_dispatcher(frame: object, event: str, arg: object) -> None:
        # As the scheduler may: the pool's thread has started, but has not run yet.
        if getattr(frame, "f_code").co_name == "_dispatch":
            sys.settrace(None)
            gate.wait(30)

    def open_when_closing() -> None:
        while not pool._closing:
            time.sleep(0.005)
        gate.set()

    with caplog.at_level(logging.DEBUG, logger="autofork"):
        threading.settrace(hold_the_dispatcher)
        try:
            pool.start()
        finally:
            threading.settrace(None)  # type: ignore[arg-type]  # None switches it off
        threading.Thread(target=open_when_closing).start()
        pool.close()  # what exit does (it need not wait: nothing was started)
        assert gate.wait(30)
        thread = pool._thread
        assert thread is not None
        thread.join(30)  # the dispatcher now runs, and ends
        assert not thread.is_alive()
    assert "template process" not in caplog.text and "worker process" not in caplog.text
