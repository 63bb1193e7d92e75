"""``import autofork.enable`` under plain ``python``, in real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def run(args: list[str], cwd: Path, **env_changes: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env.update(AUTOFORK_WORKERS="2", **env_changes)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


WHERE = """
    import json, os, sys, time
    from autofork import evaluate, fork, implicit_fork

    @implicit_fork
    def where(i):
        time.sleep(0.2)
        return os.getpid()

    def pids():
        evaluate(fork(abs, 1))  # the workers are up: the calls below run there
        calls = []
        for i in range(4):
            calls.append(where(i))
        return {"main": os.getpid(), "calls": [int(pid) for pid in calls]}
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["python", "python -m autofork", "AUTOFORK=0"])
def test_first_line_enable_runs_the_script_rewritten_once(tmp_path: Path, how: str) -> None:
    write(tmp_path / "script.py", '"""A docstring may come first."""\nimport autofork.enable\n'
          + textwrap.dedent(WHERE) + textwrap.dedent("""
        shown = pids()
        shown.update(name=__name__, argv=sys.argv, file=__file__)
        print(json.dumps(shown))
        sys.exit(4)
    """))
    args = ["script.py", "a", "--b"]
    if how == "python -m autofork":
        args = ["-m", "autofork", *args]
    done = run(args, tmp_path, **({"AUTOFORK": "0"} if how == "AUTOFORK=0" else {}))
    assert (done.returncode, done.stderr) == (4, "")
    [line] = done.stdout.splitlines()  # printed once: the unrewritten run never resumed
    shown = json.loads(line)
    assert (shown["name"], shown["argv"]) == ("__main__", ["script.py", "a", "--b"])
    assert shown["file"] == str(tmp_path / "script.py")
    forked = set(shown["calls"]) - {shown["main"]}
    assert bool(forked) is (how != "AUTOFORK=0")


@pytest.mark.timeout(60)
def test_statements_above_enable_are_warned_about(tmp_path: Path) -> None:
    write(tmp_path / "late.py", """
        print("above")
        import autofork.enable
        print("below")
    """)
    done = run(["late.py"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "above\nabove\nbelow\n"  # documented: the statements above run twice
    assert "late.py:2: AutoforkWarning: import autofork.enable is not the first statement: " \
           "1 statement(s) above it" in done.stderr


@pytest.mark.timeout(60)
def test_enable_in_a_package_rewrites_that_package_only(tmp_path: Path) -> None:
    write(tmp_path / "pkg" / "__init__.py", "import autofork.enable\n")
    write(tmp_path / "pkg" / "work.py", WHERE)
    write(tmp_path / "outside.py", WHERE)
    write(tmp_path / "main.py", """
        import json
        import pkg.work
        import outside
        print(json.dumps({
            "loaders": [type(m.__loader__).__name__ for m in (pkg.work, outside)],
            "pkg": pkg.work.pids(), "outside": outside.pids(),
        }))
    """)
    done = run(["main.py"], tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    shown = json.loads(done.stdout)
    assert shown["loaders"] == ["AutoforkLoader", "SourceFileLoader"]
    assert set(shown["pkg"]["calls"]) - {shown["pkg"]["main"]}
    assert set(shown["outside"]["calls"]) == {shown["outside"]["main"]}
