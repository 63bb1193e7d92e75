"""``%load_ext autofork`` in a real Jupyter kernel (ipykernel), driven by nbclient.

Each test writes a notebook, runs it in a kernel started from this Python, and reads
the cells' outputs as Jupyter shows them.  Worker processes are found as the kernel
process's children in /proc.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Optional

import nbclient
import nbformat
import pytest
from jupyter_core.utils import run_sync  # nbclient's own dependency

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="worker processes are found through /proc")

KERNEL = "autofork-test-python"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# A CPU-bound marked function (about 30 ms a call: long enough to be sent to a worker).
WORK = """
import os
from autofork import implicit_fork

KERNEL_PID = os.getpid()

@implicit_fork
def work(n):
    total = 0
    for i in range(120_000):
        total += (i * n) % 7
    return total, os.getpid()
"""


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A kernelspec that starts this Python's ipykernel, and a quiet autofork setting."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "autofork tests", "language": "python"}))
    saved = {key: os.environ.get(key) for key in ("JUPYTER_PATH", "AUTOFORK_WORKERS", "AUTOFORK")}
    os.environ["JUPYTER_PATH"] = str(root)
    os.environ["AUTOFORK_WORKERS"] = "2"
    os.environ.pop("AUTOFORK", None)
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def notebook(*cells: str) -> Any:
    return nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(textwrap.dedent(c).strip("\n")) for c in cells])


def client(nb: Any, cwd: Path, timeout: int = 60) -> Any:
    return nbclient.NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, allow_errors=True,
                                   resources={"metadata": {"path": str(cwd)}})


def run_notebook(cwd: Path, *cells: str, timeout: int = 60) -> list[list[dict]]:
    """Run the cells in a new kernel; each cell's outputs as Jupyter stores them."""
    nb = notebook(*cells)
    client(nb, cwd, timeout).execute()
    return [cell.outputs for cell in nb.cells]


def shown(outputs: list[dict]) -> str:
    """What a cell shows: its streams, results and errors, as text."""
    parts = []
    for out in outputs:
        if out["output_type"] == "stream":
            parts.append(out["text"])
        elif out["output_type"] == "execute_result":
            parts.append("Out: " + out["data"]["text/plain"] + "\n")
        elif out["output_type"] == "error":
            parts.append(f"{out['ename']}: {out['evalue']}\n")
    return "".join(parts)


def error_of(outputs: list[dict]) -> Optional[dict]:
    return next((o for o in outputs if o["output_type"] == "error"), None)


def children(pid: int) -> set[int]:
    """The live worker processes under ``pid``: its descendants that have no children
    of their own (workers are forked from a template process, a child of the kernel)."""
    parent_of = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None and stat[0] != "Z":
                parent_of[int(entry)] = stat[1]
    below, grew = {pid}, True
    while grew:
        more = {p for p, parent in parent_of.items() if parent in below} - below
        below |= more
        grew = bool(more)
    parents = set(parent_of.values())
    return {p for p in below - {pid} if p not in parents}


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if (_stat(pid) or ("Z",))[0] != "Z"}


def wait_gone(pids: set[int], seconds: float = 10) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(pids)


# Cells run once with the extension and once without: the outputs must be the same.
SAME = [
    WORK,
    """
    sizes = []
    for n in range(6):
        sizes.append(work(n)[0])
    print(sizes)
    """,
    """
    squares = {n: work(n)[0] for n in range(4)}
    acc = 0
    for n in range(4):
        acc += work(n)[0]
    print(squares, acc)
    """,
    "work(3)[0]",                             # the last expression is shown
    """
    for n in range(3):
        work(n)
    result = work(2)
    result is None, type(result).__name__, result[0]
    """,
    """
    @implicit_fork
    def picky(n):
        if n == 2:
            raise ValueError(f"bad value {n}")
        return n

    caught = []
    for n in range(4):
        try:
            picky(n)
        except ValueError as e:
            caught.append(str(e))
    caught
    """,
    """
    @implicit_fork
    def maybe(n):
        return None if work(n)[0] % 2 else n
    found = maybe(3)
    """,
    "result[0], result is None, found is None",  # values from earlier cells
    """
    class Box:                                 # a class of the notebook's, both ways
        def __init__(self, v):
            self.v = v

    @implicit_fork
    def shout(box):
        print("step", box.v, work(box.v)[0])   # printed in the cell, in call order
        return Box(box.v * 2)

    [shout(Box(n)).v for n in range(3)]
    """,
    """
    SEEN = list(range(1000))                   # large: compared at each call as changed

    @implicit_fork
    def seen_now(k):
        return len(SEEN) + k + work(k)[0] * 0
    """,
    """
    counts = []
    for k in range(4):
        SEEN.append(k)                         # in place, in a later cell
        counts.append(seen_now(k))
    counts
    """,
    """
    @implicit_fork
    def third_fails(n):
        if n == 3:
            raise ValueError(f"bad {n}")
        return work(n)[0]

    last = after = None
    for n in range(6):                         # fails; its names outlive the cell
        last = third_fails(n)
        after = last + 1
    """,
    "last, after",                             # as the sequential loop left them
    """
    work(1)
    kept = work(4)
    kept[0]                                    # shown after the cell's forks are done
    """,
    """
    def work(n):                               # rebound, unmarked: a plain call
        return n + 100, os.getpid()
    [work(n)[0] for n in range(3)]
    """,
]


@pytest.mark.timeout(150)
def test_a_notebook_shows_the_same_outputs_with_and_without_the_extension(kernel_env, tmp_path):
    plain = run_notebook(tmp_path, *SAME)
    forked = run_notebook(tmp_path, "%load_ext autofork", *SAME)[1:]
    assert [shown(c) for c in forked] == [shown(c) for c in plain]
    assert [shown(c) for c in plain[1:]] == [
        "[0, 359997, 359998, 359999, 360000, 360001]\n",
        "{0: 0, 1: 359997, 2: 359998, 3: 359999} 1079994\n",
        "Out: 359999\n",
        "Out: (False, 'tuple', 359998)\n",
        "Out: ['bad value 2']\n",
        "",
        "Out: (359998, False, True)\n",
        "step 0 0\nstep 1 359997\nstep 2 359998\nOut: [0, 2, 4]\n",
        "",
        "Out: [1001, 1003, 1005, 1007]\n",
        "ValueError: bad 3\n",
        "Out: (359998, 359999)\n",
        "Out: 360000\n",
        "Out: [100, 101, 102]\n",
    ]


CHILDREN = """
def kernel_children():
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                text = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            state, parent = text[text.rindex(")") + 2:].split()[:2]
            if state != "Z":
                found[int(entry)] = int(parent)
    below = {KERNEL_PID}
    while True:  # the kernel's descendants: workers are forked from a template process
        more = {pid for pid, parent in found.items() if parent in below} - below
        if not more:
            return below - {KERNEL_PID}
        below |= more

# The workers are up (until then a cell that waits for a marked call may run it itself):
from autofork import evaluate, fork
evaluate(fork(abs, 1))
"""

WARM = "from autofork import evaluate, fork\nevaluate(fork(abs, 1))  # the workers are up\n"

# Where eight marked calls ran: (in the kernel?, all in its child processes?)
PIDS = """
results = [work(n) for n in range(8)]   # forked together (a value used at once is a chain)
pids = {r[1] for r in results}
print(KERNEL_PID in pids, pids <= kernel_children())
"""


@pytest.mark.timeout(120)
def test_marked_calls_in_a_later_cell_run_in_worker_processes(kernel_env, tmp_path):
    (tmp_path / "marked_mod.py").write_text(textwrap.dedent("""
        import os
        from autofork import implicit_fork

        @implicit_fork
        def remote(n):
            total = 0
            for i in range(120_000):
                total += i % 5
            return os.getpid()
    """))
    outputs = run_notebook(
        tmp_path, "%load_ext autofork", WORK, CHILDREN, PIDS, "first = kernel_children()",
        # a module imported in one cell, its marked function called in the next
        "import marked_mod\nfrom marked_mod import remote",
        "set([marked_mod.remote(n) for n in range(6)] + [remote(n) for n in range(6)]) <= first",
        # a class defined in a cell: its instances go to the workers and come back
        """
        class Box:
            def __init__(self, v):
                self.v = v

        @implicit_fork
        def double(box):
            return Box(box.v * 2), work(box.v)[1]

        got = [double(Box(n)) for n in range(4)]
        [g[0].v for g in got], {g[1] for g in got} <= first
        """,
        # the mark imported by an earlier cell: calls in this cell and the next are forked
        """
        @implicit_fork
        def square_pid(n):
            return work(n)[0] * 0 + os.getpid()

        (set([square_pid(n) for n in range(4)]) <= first,
         KERNEL_PID in set([square_pid(n) for n in range(4)]))
        """,
        # a list, not a set: a set hashes each result at once, and calls whose values are
        # needed at once (a chain) end up running in the caller
        "set([square_pid(n) for n in range(4)]) <= first",
        """
        def work(n):                               # rebound, unmarked: a plain call
            return n, os.getpid()
        """,
        PIDS,
        "%unload_ext autofork",
        "del work\n" + WORK,
        PIDS,
        "kernel_children() == first",
    )
    assert shown(outputs[3]) == "False True\n"     # in workers, none of them the kernel
    assert shown(outputs[6]) == "Out: True\n"       # the same workers, reused
    assert shown(outputs[7]) == "Out: ([0, 2, 4, 6], True)\n"
    assert shown(outputs[8]) == "Out: (True, False)\n"
    assert shown(outputs[9]) == "Out: True\n"
    assert shown(outputs[11]) == "True False\n"     # the name's new value is seen
    assert shown(outputs[14]) == "True False\n"     # unloaded: plain calls in the kernel
    assert shown(outputs[15]) == "Out: True\n"


@pytest.mark.timeout(120)
def test_a_failing_forked_call_is_the_cells_error_with_its_own_lines(kernel_env, tmp_path):
    outputs = run_notebook(tmp_path, "%load_ext autofork", WORK, """
        @implicit_fork
        def check(n):
            work(1)
            if n == 3:
                raise KeyError(f"missing {n}")
            return n
    """, """
        values = []
        for n in range(6):
            check(n)
        print("not reached")
    """)
    error = error_of(outputs[3])
    assert error is not None and error["ename"] == "KeyError" and error["evalue"] == "'missing 3'"
    text = _ANSI.sub("", "\n".join(error["traceback"]))
    assert "not reached" not in shown(outputs[3])
    # The cell's loop line and the raising line of the function's own cell.
    assert re.search(r"line 3\b.*\n(.*\n)*.*check\(n\)", text), text
    assert re.search(r"line 5\b(.*\n)*.*raise KeyError", text), text


@pytest.mark.timeout(120)
def test_an_interrupt_stops_the_running_forks_and_the_kernel_goes_on(kernel_env, tmp_path):
    nb = notebook("%load_ext autofork", WORK, CHILDREN, PIDS, """
        import time

        @implicit_fork
        def spin(seconds):
            end = time.time() + seconds
            while time.time() < end:
                pass

        for n in range(8):
            spin(30)
    """, WARM + PIDS)
    runner = client(nb, tmp_path)
    with runner.setup_kernel():
        for index in range(4):
            runner.execute_cell(nb.cells[index], index)
        kernel = runner.km.provisioner.process.pid
        workers = children(kernel)
        assert len(workers) == 2
        # What the kernel manager's interrupt does (its method is a coroutine of
        # nbclient's loop): SIGINT to the kernel's process group.
        timer = threading.Timer(3.0, lambda: os.killpg(os.getpgid(kernel), signal.SIGINT))
        timer.start()
        began = time.monotonic()
        runner.execute_cell(nb.cells[4], 4)
        took = time.monotonic() - began
        timer.join()
        assert error_of(nb.cells[4].outputs)["ename"] == "KeyboardInterrupt"
        assert took < 20, took                     # eight 30 s calls on two workers: 120 s
        assert wait_gone(workers) == set()         # the running forks were killed
        runner.execute_cell(nb.cells[5], 5)       # the kernel goes on, with new workers
        assert shown(nb.cells[5].outputs) == "False True\n"
        assert children(kernel).isdisjoint(workers)


@pytest.mark.timeout(150)
def test_a_kernel_restart_or_kill_leaves_no_worker_behind(kernel_env, tmp_path):
    nb = notebook("%load_ext autofork", WORK, CHILDREN, PIDS)
    runner = client(nb, tmp_path)
    with runner.setup_kernel():
        for now in (False, True):                  # a restart, then a kill and restart
            for index in range(4):
                runner.execute_cell(nb.cells[index], index)
            assert shown(nb.cells[3].outputs) == "False True\n"
            kernel = runner.km.provisioner.process.pid
            workers = children(kernel)
            assert len(workers) == 2
            run_sync(runner.km.restart_kernel)(now=now)
            assert wait_gone(workers | {kernel}) == set()
            run_sync(runner.kc.wait_for_ready)(timeout=60)
