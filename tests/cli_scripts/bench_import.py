"""Import cost of a 3,000-line module with marks, through the hook and without it.

    python tests/cli_scripts/bench_import.py [LINES]

Each number is the median of five fresh interpreters timing ``import big`` alone:
plain ``import`` (with its normal pyc, and compiling from source), the hook's cold
rewrite (libcst's own import included, then the cache is written), and the hook's
warm import from its cache.  Not a test: pytest does not collect this directory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile

BLOCK = '''
@implicit_fork
def work_{i}(x, y=1):
    """Work number {i}."""
    total = 0
    for k in range(x):
        total += k * y
    return total


def caller_{i}(items):
    results = []
    for item in items:
        results.append(work_{i}(item))
        work_{i}(item, y=2)
    if results and results[0] is None:
        return None
    return [result for result in results]


class Thing{i}:
    def method(self, n):
        value = work_{i}(n)
        return value + 1
'''

CHILD = """
import sys, time
sys.path.insert(0, {folder!r})
import autofork  # in both cases: the module's own import of it is not the hook's cost
if {hooked}:
    from autofork import importhook
    importhook.install()
start = time.perf_counter()
import big
print(time.perf_counter() - start)
"""


def generate(lines: int) -> str:
    parts = ["from autofork import implicit_fork\n"]
    i = 0
    while sum(part.count("\n") for part in parts) < lines:
        parts.append(BLOCK.format(i=i))
        i += 1
    return "".join(parts)


def timed(folder: str, hooked: bool, write_bytecode: bool) -> float:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not write_bytecode:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    child = CHILD.format(folder=folder, hooked=hooked)
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True,
                          text=True, check=True)
    return float(done.stdout)


def median(runs: int, before: object, *args: object) -> float:
    times = []
    for _ in range(runs):
        before()  # type: ignore[operator]
        times.append(timed(*args))  # type: ignore[arg-type]
    return statistics.median(times)


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    folder = tempfile.mkdtemp(prefix="autofork-bench-")
    cache = os.path.join(folder, "__pycache__")
    try:
        with open(os.path.join(folder, "big.py"), "w") as file:
            file.write(generate(lines))

        def clear() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        def keep() -> None:
            pass

        timed(folder, False, True)  # writes the normal pyc
        plain_pyc = median(5, keep, folder, False, True)
        plain_source = median(5, clear, folder, False, False)
        cold = median(5, clear, folder, True, True)
        timed(folder, True, True)  # writes the autofork cache
        warm = median(5, keep, folder, True, True)
        print(f"{lines}-line module with marks (median of 5 fresh interpreters):")
        print(f"  plain import, normal pyc:       {plain_pyc * 1000:7.1f} ms")
        print(f"  plain import, from source:      {plain_source * 1000:7.1f} ms")
        print(f"  hook, cold (rewrite + libcst):  {cold * 1000:7.1f} ms")
        print(f"  hook, warm (autofork cache):    {warm * 1000:7.1f} ms")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
