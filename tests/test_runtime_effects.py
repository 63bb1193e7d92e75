"""SPEC 4b at run time: scripts run both ways (``python s.py`` and ``python -m autofork
s.py``, real subprocesses) print the same; the forked calls still run elsewhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import run_script


def both(tmp_path: Path, source: str, env: dict | None = None) -> tuple[str, str]:
    """stdout of the script run plainly and under ``python -m autofork``; both succeed."""
    plain = run_script(tmp_path, source, env=env)
    forked = run_script(tmp_path, source, module=True, env={"AUTOFORK_WORKERS": "2", **(env or {})})
    for result in (plain, forked):
        assert result.returncode == 0, result.stderr
    return plain.stdout, forked.stdout


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.splitlines()


# -- 1. classes of the script travel to workers ----------------------------------------

MAIN_CLASSES = """
    import os, time
    from dataclasses import dataclass
    from autofork import implicit_fork

    class Box:
        def __init__(self, value):
            self.value = value
        def __repr__(self):
            return f"Box({self.value})"

    @dataclass
    class Point:
        x: int
        y: int

    class Account:
        def __init__(self, balance):
            self.balance = balance
        @implicit_fork
        def interest(self, rate):
            time.sleep(0.02)  # long enough to be forked, not run inline
            return self.balance * rate, os.getpid()

    @implicit_fork
    def grow(box):
        time.sleep(0.02)
        return Box(box.value + 1), os.getpid()

    @implicit_fork
    def shift(point):
        time.sleep(0.02)
        return Point(point.x + 1, point.y), os.getpid()

    pids = set()
    grown = [grow(Box(i)) for i in range(3)]
    shifted = [shift(Point(i, 0)) for i in range(3)]
    account = Account(100)
    earned = [account.interest(r) for r in (1, 2)]
    for value, pid in grown + shifted + earned:
        print(value, type(value).__name__)
        pids.add(pid)
    print("elsewhere", any(pid != os.getpid() for pid in pids))
"""


@pytest.mark.timeout(60)
def test_classes_and_dataclasses_of_the_script_are_arguments_and_results(tmp_path: Path) -> None:
    plain, forked = both(tmp_path, MAIN_CLASSES)
    assert plain.replace("elsewhere False", "elsewhere True") == forked
    assert "Point(x=3, y=0) Point" in forked and "Box(3) Box" in forked
    assert "elsewhere True" in forked  # they really ran in worker processes


# -- 2. iterator arguments run in the caller ---------------------------------------------

ITERATORS = """
    import os, time
    from autofork import implicit_fork

    @implicit_fork
    def take_two(it):
        time.sleep(0.02)
        return [next(it), next(it)], os.getpid()

    @implicit_fork
    def first(seq):
        time.sleep(0.02)
        return seq[0], os.getpid()

    numbers = iter(range(10))
    pairs = [take_two(numbers) for _ in range(3)]
    letters = (c for c in "abcdef")
    more = [take_two(it=letters) for _ in range(2)]
    print([p[0] for p in pairs], [m[0] for m in more], list(numbers), list(letters))
    print("iterators here", all(p[1] == os.getpid() for p in pairs + more))
    print("lists elsewhere", any(first([i])[1] != os.getpid() for i in range(6)))
"""


@pytest.mark.timeout(60)
def test_an_iterator_argument_runs_in_the_caller(tmp_path: Path) -> None:
    plain, forked = both(tmp_path, ITERATORS)
    assert plain.replace("lists elsewhere False", "lists elsewhere True") == forked
    assert "[[0, 1], [2, 3], [4, 5]] [['a', 'b'], ['c', 'd']] [6, 7, 8, 9] ['e', 'f']" in forked
    assert "lists elsewhere True" in forked
