"""Showcase: count the primes in eight ranges of large numbers, sequentially and with autofork.

Run it in parallel:    python -m autofork examples/primes.py
Run it sequentially:   python examples/primes.py      (or AUTOFORK=0)
Both, timed:           python -m autofork --compare examples/primes.py

`count_primes` is marked `@implicit_fork`; under `python -m autofork` the import hook
rewrites the loop's calls into forks, so the eight ranges are counted in worker processes.
Apart from the mark, the program has no trace of autofork; it prints its result only.
"""

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
    counts = []
    for start in starts:
        counts.append(count_primes(start, start + size))  # forked under python -m autofork
    print(f"primes in [{base}, {base + chunks * size}): {sum(counts)}")  # waits for the counts
    print("per range:", counts)


if __name__ == "__main__":
    main()
