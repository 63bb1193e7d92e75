"""Showcase: count the primes in eight ranges of large numbers, sequentially and with autofork.

Run it in parallel:    python -m autofork examples/primes.py
Run it sequentially:   python examples/primes.py      (or AUTOFORK=0)

`count_primes` is marked `@implicit_fork`; under `python -m autofork` the import hook
rewrites the loop's calls into forks, so the eight ranges are counted in worker processes.
Apart from the mark and the timing report on stderr (which checks whether it was
rewritten), the program has no trace of autofork.
"""

import os
import sys
import time

from autofork import implicit_fork


@implicit_fork
def count_primes(start: int, stop: int) -> int:
    """How many primes lie in [start, stop): trial division, pure Python CPU work."""
    count = 0
    for n in range(start | 1, stop, 2):
        if n < 2:
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            count += 1
    return count


def main(chunks: int = 8, size: int = 40_000, base: int = 10_000_000) -> None:
    starts = [base + i * size for i in range(chunks)]

    began = time.perf_counter()
    counts = []
    for start in starts:
        counts.append(count_primes(start, start + size))  # forked under python -m autofork
    total = sum(counts)
    print(f"primes in [{base}, {base + chunks * size}): {total}")  # waits for the counts
    print("per range:", counts)
    elapsed = time.perf_counter() - began

    # Timings go to stderr: stdout stays the same sequentially and in parallel.
    if "autofork.runtime.implicit" not in sys.modules:  # not rewritten: this was sequential
        print(f"sequential: {elapsed:.2f} s", file=sys.stderr)
        return
    # The sequential baseline, after the parallel run (so that it does not share the
    # cores with starting workers): the time of the first range, calls of it through
    # map(), which the import hook leaves alone, times the number of ranges.
    began = time.perf_counter()
    first = list(map(count_primes, starts[:1], [starts[0] + size]))
    sequential = (time.perf_counter() - began) * chunks
    assert first == counts[:1]
    print(f"parallel: {elapsed:.2f} s; sequential (first range x {chunks}): about "
          f"{sequential:.2f} s; speed-up {sequential / elapsed:.2f}x on {os.cpu_count()} cores",
          file=sys.stderr)


if __name__ == "__main__":
    main()
