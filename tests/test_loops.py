"""Loops finish what they start (issue 9): programs run under plain ``python`` and under
``python -m autofork`` in subprocesses, with the same output, and still in parallel.

The idiom scripts live in tests/idioms/ (``python tests/idioms/check.py`` runs them all and
counts the uses that still differ).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

IDIOMS = Path(__file__).resolve().parent / "idioms"
ROOT = IDIOMS.parent.parent


def environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env.update(AUTOFORK_WORKERS="2", PYTHONPATH=str(ROOT))
    return env


def run(script: Path, *args: str, forked: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, *(["-m", "autofork"] if forked else []), script.name, *args]
    return subprocess.run(command, cwd=script.parent, env=environment(), capture_output=True,
                          text=True, timeout=100)


def both(script: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], ...]:
    """The plain run and the autofork run; the same exit status and stdout."""
    plain, forked = run(script, *args, forked=False), run(script, *args)
    assert (forked.returncode, forked.stdout) == (plain.returncode, plain.stdout), forked.stderr
    return plain, forked


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


@pytest.mark.timeout(200)
@pytest.mark.parametrize("name", ["comprehension", "append", "function", "reduction"])
def test_each_idiom_prints_what_it_printed_sequentially(name: str) -> None:
    plain, forked = both(IDIOMS / f"{name}.py")
    assert plain.returncode == 0 and "Error" not in plain.stdout, plain.stdout + plain.stderr
    assert forked.stderr == plain.stderr


THUMBNAILS = """
    import os, sys, time
    from pathlib import Path
    from autofork import implicit_fork

    @implicit_fork
    def make_thumbnail(path):
        time.sleep(0.3 if path.name == "0.img" else 0.05)   # the first finishes last
        data = path.read_bytes()
        if data.startswith(b"bad"):
            raise ValueError(f"cannot read {path.name}")
        out = Path("thumbnails") / (path.stem + ".thumb")
        out.write_text(f"{len(data)} {os.getpid()}")
        return len(data)

    from autofork import evaluate, fork
    evaluate(fork(abs, 1))  # workers are up (before, a waiting caller may run a call)
    images = sorted(Path("images").iterdir())
    sizes = {}
    for path in images:
        sizes[path.name] = make_thumbnail(path)
    print(f"made {len(os.listdir('thumbnails'))} thumbnails")
    print("total size:", sum(sizes.values()), "bytes;", ",".join(map(str, sizes.values())))
    print(sorted(sizes.items()) == sorted((p.name, len(p.read_bytes())) for p in images))
    Path("main.pid").write_text(str(os.getpid()))
"""


def _thumbnail_folder(tmp_path: Path, bad: tuple[int, ...] = ()) -> Path:
    (tmp_path / "images").mkdir()
    (tmp_path / "thumbnails").mkdir()
    for i in range(6):
        body = b"bad" if i in bad else b"x" * (10 + i)
        (tmp_path / "images" / f"{i}.img").write_bytes(body)
    return write(tmp_path / "thumbs.py", THUMBNAILS)


@pytest.mark.timeout(120)
def test_a_loop_that_stores_results_has_written_every_file_when_it_ends(tmp_path: Path) -> None:
    script = _thumbnail_folder(tmp_path)
    forked = run(script)
    assert forked.returncode == 0, forked.stderr
    assert forked.stdout.splitlines() == [
        "made 6 thumbnails", "total size: 75 bytes; 10,11,12,13,14,15", "True"]
    main = int((tmp_path / "main.pid").read_text())
    pids = {int(p.read_text().split()[1]) for p in (tmp_path / "thumbnails").iterdir()}
    # Workers made them (while none was ready yet, the waiting main process may make one
    # itself: SPEC 9, the program never waits for a worker to start).
    assert pids - {main}, "the thumbnails were made in the main process: not parallel"
    for thumb in (tmp_path / "thumbnails").iterdir():
        thumb.unlink()
    assert run(script, forked=False).stdout == forked.stdout


@pytest.mark.timeout(120)
def test_a_failing_call_is_raised_at_the_loops_end_before_anything_after_it(tmp_path: Path) -> None:
    script = _thumbnail_folder(tmp_path, bad=(2, 4))
    plain, forked = both(script)
    assert plain.returncode == 1 and plain.stdout == ""   # nothing after the loop ran
    assert not (tmp_path / "main.pid").exists()
    last = forked.stderr.strip().splitlines()
    assert "ValueError: cannot read 2.img" in last   # the first in call order, not 4's
    assert plain.stderr.strip().splitlines()[-1] == "ValueError: cannot read 2.img"
    assert 'thumbs.py", line 20, in <module>' in forked.stderr   # the loop's own line


PARALLEL = """
    import collections, json, os, time
    from autofork import implicit_fork

    @implicit_fork
    def where(i):
        time.sleep(0.1)
        return os.getpid()

    @implicit_fork
    def count_pid(i):
        time.sleep(0.1)
        return collections.Counter({os.getpid(): 1})

    from autofork import evaluate, fork
    evaluate(fork(abs, 1))  # workers are up (before, a waiting caller may run a call)
    appended, table = [], {}
    for i in range(6):
        appended.append(where(i))
        table[i] = where(i)
    built = [where(i) for i in range(6)]
    total = collections.Counter()
    for i in range(6):
        total += count_pid(i)
    print(json.dumps({"main": os.getpid(), "append": appended, "dict": list(table.values()),
                      "comprehension": built, "counter": sorted(total),
                      "counted": sum(total.values()), "list type": type(appended).__name__}))
"""


@pytest.mark.timeout(120)
def test_the_loops_still_run_their_calls_in_other_processes(tmp_path: Path) -> None:
    done = run(write(tmp_path / "parallel.py", PARALLEL))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    main = seen.pop("main")
    assert seen.pop("counted") == 6 and seen.pop("list type") == "list"
    for idiom, pids in seen.items():   # (a waiting caller may run a queued call itself)
        assert set(pids) - {main}, f"{idiom}: every call ran in the main process"


@pytest.mark.timeout(120)
def test_the_list_a_loop_fills_is_the_same_object_holding_values(tmp_path: Path) -> None:
    script = write(tmp_path / "same.py", """
        from autofork import implicit_fork

        @implicit_fork
        def square(x):
            return x * x

        def fill(results):
            for i in range(5):
                results.append(square(i))
            return results

        results = []
        before = id(results)
        returned = fill(results)
        print(id(results) == before, returned is results, [type(r).__name__ for r in results])
        print(",".join(map(str, results)), results)
    """)
    plain, forked = both(script)
    assert plain.stdout.splitlines()[0] == "True True ['int', 'int', 'int', 'int', 'int']"


@pytest.mark.timeout(120)
def test_marks_that_do_nothing_under_the_hook_say_so_once(tmp_path: Path) -> None:
    script = write(tmp_path / "labels.py", """
        from autofork import cpu_bound, io_bound

        @io_bound
        def fetch(i):
            return i

        @cpu_bound
        def crunch(i):
            return i * 2

        print([fetch(i) for i in range(3)], [crunch(i) for i in range(3)], fetch(9))
    """)
    plain, forked = both(script)
    assert plain.stderr == ""
    warned = [line for line in forked.stderr.splitlines() if "Warning" in line]
    assert len(warned) == 2, forked.stderr
    fetch, crunch = sorted(warned, key=lambda line: "crunch" in line)
    assert "fetch" in fetch and "@io_bound_fork" in fetch and "labels.py:4" in fetch
    assert "crunch" in crunch and "@implicit_fork" in crunch
