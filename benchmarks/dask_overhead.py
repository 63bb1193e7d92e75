"""Per-call overhead of autofork's dask backend against ``client.submit`` used directly.

    python benchmarks/dask_overhead.py                      # starts a scheduler + 2 workers
    python benchmarks/dask_overhead.py --address tcp://HOST:PORT [--calls 200 --rounds 5]

Both sides run the same trivial function on the same cluster, in the same process,
interleaved, best of ``--rounds``:

* burst: N calls submitted, then all values fetched (``client.submit`` x N +
  ``client.gather`` against ``fork`` x N + ``evaluate_all``);
* one by one: submit, wait for the value, next (latency of a single call).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def trivial(x: int) -> int:
    return x + 1


def best(run: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def measure(address: str, calls: int, rounds: int) -> None:
    from distributed import Client

    from autofork import configure, evaluate, evaluate_all, fork

    client = Client(address, set_as_default=False)
    configure(backend="dask", address=address)
    items = range(calls)

    def dask_burst() -> None:
        assert client.gather([client.submit(trivial, i, pure=False) for i in items])[-1] == calls

    def autofork_burst() -> None:
        assert evaluate_all([fork(trivial, i) for i in items])[-1] == calls

    def dask_serial() -> None:
        for i in items:
            client.submit(trivial, i, pure=False).result()

    def autofork_serial() -> None:
        for i in items:
            evaluate(fork(trivial, i))

    dask_burst(), autofork_burst()  # warm up: connections, imports on the workers
    rows = []
    for label, direct, ours in (("burst", dask_burst, autofork_burst),
                                ("one by one", dask_serial, autofork_serial)):
        pairs = [(best(direct, 1), best(ours, 1)) for _ in range(rounds)]  # interleaved
        d = min(p[0] for p in pairs) / calls * 1e6
        a = min(p[1] for p in pairs) / calls * 1e6
        rows.append((label, d, a))
    workers = len(client.scheduler_info(n_workers=-1)["workers"])
    print(f"{calls} calls of a trivial function, best of {rounds}, {workers} workers, "
          f"Python {sys.version.split()[0]}")
    print(f"{'':12} {'client.submit':>14} {'autofork fork':>14} {'overhead':>10}")
    for label, d, a in rows:
        print(f"{label:12} {d:11.0f} µs {a:11.0f} µs {a - d:+7.0f} µs  ({a / d:.2f}x)")
    client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="an existing scheduler (default: start one)")
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    if options.address:
        measure(options.address, options.calls, options.rounds)
        return
    from dask_cluster import Cluster

    with Cluster(workers=2) as cluster:
        measure(cluster.address, options.calls, options.rounds)
        from autofork.runtime import engine

        engine.shutdown()


if __name__ == "__main__":
    main()
