"""A marked CPU-bound loop in a Jupyter notebook, with and without ``%load_ext autofork``.

    python benchmarks/notebook.py [--calls 8] [--work 2000000] [--rounds 3]

Runs the same notebook in a real kernel (ipykernel, driven by nbclient) twice per
round: plain, and with ``%load_ext autofork`` in its first cell.  The timed cell is::

    results = []
    for n in range(CALLS):
        results.append(count(n))        # count is @implicit_fork, CPU-bound
    print(sum(results))

Reported, best of ``--rounds``: the cell's wall time as the kernel measures it (the
first fork's worker start-up included: the workers start in the cell that first forks)
and as a Jupyter front end sees it (execute request to reply), and whether both runs
printed the same thing.  Kernel start-up is not included in either.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbclient
import nbformat

KERNEL = "autofork-bench-python"

SETUP = """
import time
from autofork import implicit_fork

@implicit_fork
def count(n, work={work}):
    total = 0
    for i in range(work):
        total += (i ^ n) & 7
    return total
"""

LOOP = """
began = time.perf_counter()
results = []
for n in range({calls}):
    results.append(count(n))
print(sum(results))
print("cell seconds", time.perf_counter() - began)
"""


def _kernelspec(root: Path) -> None:
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "autofork benchmark", "language": "python"}))


def run(extension: bool, calls: int, work: int) -> tuple[str, float, float]:
    """(what the cell printed, the cell's own seconds, the front end's seconds)."""
    cells = [SETUP.format(work=work), LOOP.format(calls=calls)]
    if extension:
        cells.insert(0, "%load_ext autofork")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(textwrap.dedent(c))
                                         for c in cells])
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name=KERNEL)
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells[:-1]):
            client.execute_cell(cell, index)
        began = time.perf_counter()
        client.execute_cell(nb.cells[-1], len(nb.cells) - 1)
        seen = time.perf_counter() - began
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    printed, _, inside = text.strip().rpartition("\n")
    return printed, float(inside.split()[-1]), seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--work", type=int, default=2_000_000, help="loop steps per call")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        _kernelspec(Path(root))
        os.environ["JUPYTER_PATH"] = root
        best: dict[bool, tuple[str, float, float]] = {}
        for _ in range(args.rounds):
            for extension in (False, True):
                got = run(extension, args.calls, args.work)
                if extension not in best or got[1] < best[extension][1]:
                    best[extension] = got
    plain, forked = best[False], best[True]
    print(f"{args.calls} calls x {args.work} steps, best of {args.rounds}, "
          f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(f"  plain kernel:          cell {plain[1]:.2f} s (front end {plain[2]:.2f} s)")
    print(f"  %load_ext autofork:    cell {forked[1]:.2f} s (front end {forked[2]:.2f} s)")
    print(f"  speed-up {plain[1] / forked[1]:.2f}x; same output: {plain[0] == forked[0]}")
    return 0 if plain[0] == forked[0] else 1


if __name__ == "__main__":
    sys.exit(main())
