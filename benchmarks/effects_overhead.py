"""Per-call cost of what keeps a forked program's meaning sequential (SPEC 4b, run time).

    python benchmarks/effects_overhead.py [--rounds 7]

Each piece is timed alone, in this process, in CPU time, as the calls of goal 3a (20,000 calls of a
20 µs marked function) pay it, best of ``--rounds`` runs of 100,000 repetitions:

* ordered output: ``output.begin`` in the caller and ``output.end`` when the call is done,
  for a call that writes nothing; ``output.take`` after each call in a worker;
* globals at call time: ``Watch.state`` of a function reading two globals, none rebound;
* changed arguments: the worker's check for a call given an int (goal 3a's argument),
  and for a call given a list of 10 ints (pickled before and after the call on the
  first 64 calls of a function, then on one call in 64: the figure is the long-run mean);
* iterator arguments: the caller's ``_takes_iterator`` for one int argument.

The last column relates each to a 20 µs call.  Whole-process figures (goal 3a) are in
``python -m benchmarks --goals 3``; on a shared machine their noise hides these costs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCALE = 3
OFFSET = 1


def reads_two_globals(x: int) -> int:
    return x * SCALE + OFFSET


def per_call(run: Callable[[int], None], repeat: int, rounds: int) -> float:
    """Best CPU seconds per repetition of ``run(repeat)`` (CPU time: on a shared machine,
    wall time counts the waits for a core too)."""
    best = float("inf")
    for _ in range(rounds):
        began = time.process_time()
        run(repeat)
        best = min(best, (time.process_time() - began) / repeat)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=100_000)
    options = parser.parse_args(argv)

    from autofork.runtime import freshness, output, worker
    from autofork.runtime.granularity import _takes_iterator

    watch = freshness.watch(reads_two_globals)
    assert watch is not None

    def ordered(n: int) -> None:
        begin, end = output.begin, output.end
        for _ in range(n):
            end(begin(), None)

    def taken(n: int) -> None:
        take = output.take
        for _ in range(n):
            take()

    def fresh(n: int) -> None:
        state = watch.state_for
        for _ in range(n):
            state("reads_two_globals")

    def checked(args: tuple) -> Callable[[int], None]:
        def run(n: int) -> None:
            mutable, report = worker._mutable, worker._report_changes
            for _ in range(n):
                before = mutable(reads_two_globals, args, {})
                if before is not None:
                    report(reads_two_globals, before)
        return run

    def iterators(n: int) -> None:
        args, kwargs = (12345,), {}
        for _ in range(n):
            _takes_iterator(args, kwargs)

    def empty(n: int) -> None:
        for _ in range(n):
            pass

    worker.dumps = __import__("autofork.runtime.serialize", fromlist=["dumps"]).dumps
    loop = per_call(empty, options.repeat, options.rounds)
    rows = [
        ("ordered output: begin + end (caller)", ordered),
        ("ordered output: take (worker)", taken),
        ("globals at call time: Watch.state, 2 globals", fresh),
        ("changed arguments: one int (worker)", checked((12345,))),
        ("changed arguments: a list of 10 ints (worker)", checked((list(range(10)),))),
        ("iterator arguments: one int (caller)", iterators),
    ]
    print(f"{'piece':48} {'µs/call':>8} {'% of 20 µs':>10}")
    for name, run in rows:
        seconds = max(0.0, per_call(run, options.repeat, options.rounds) - loop)
        print(f"{name:48} {seconds * 1e6:8.3f} {seconds / 20e-6 * 100:9.1f}%")


if __name__ == "__main__":
    main()
