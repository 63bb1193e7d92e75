"""Cost of autofork.transformer on a generated 3,000-line module with marks.

    python tests/transformer_cases/bench.py [lines]

Prints the best of five runs (CPU time: steady on a busy machine) of ast.parse, libcst.parse_module, needs_rewrite, rewrite
and compile_rewritten on the same text, and rewrite's cost relative to the libcst parse
(SPEC: the rewriting import may cost at most twice the parse).
"""

from __future__ import annotations

import ast
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from autofork import transformer  # noqa: E402


def make_module(lines: int = 3000) -> str:
    """A module of marked functions, loops of discarded calls, lazy values, try bodies, classes."""
    out = ['"""A generated module."""', "from __future__ import annotations", "import os",
           "from autofork import implicit_fork, io_bound_fork", ""]
    i = 0
    while len(out) < lines:
        i += 1
        out += [
            "@implicit_fork",
            f"def work_{i}(x, y=2):",
            f"    '''Docstring {i}.'''",
            "    total = 0",
            "    for k in range(x):",
            "        total += k * y  # comment",
            "    return total",
            "",
            f"def driver_{i}(items):",
            "    results = []",
            "    for item in items:",
            f"        results.append(work_{i}(item))",
            f"        work_{i}(item, y=3)",
            f"    value = work_{i}(len(items))",
            "    if value is None:",
            "        return []",
            "    d = {'a': [1, 2, 3], 'b': (4, 5)}",
            "    s = sum(x * 2 for x in items if x % 3 == 0)",
            "    try:",
            f"        work_{i}(1)",
            "    except ValueError as exc:",
            "        print(exc)",
            "    return results",
            "",
            f"class C{i}:",
            "    def method(self, a, *args, **kw):",
            "        return [a + b for b in args] + list(kw)",
            "",
        ]
    return "\n".join(out) + "\n"


def best(function: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.process_time()
        function()
        times.append(time.process_time() - start)
    return min(times)


def measure(source: str, runs: int = 5) -> dict[str, float]:
    """Seconds (best of ``runs``) of each step on ``source``."""
    import libcst

    def resolver(name: str) -> None:
        return None

    rewritten = transformer.rewrite(source, "bench", resolver)
    return {
        "ast.parse": best(lambda: ast.parse(source), runs),
        "libcst.parse_module": best(lambda: libcst.parse_module(source), runs),
        "needs_rewrite": best(lambda: transformer.needs_rewrite(source, "bench", resolver), runs),
        "rewrite": best(lambda: transformer.rewrite(source, "bench", resolver), runs),
        "compile_rewritten": best(lambda: transformer.compile_rewritten(source, rewritten, "bench.py"), runs),
        "compile (plain)": best(lambda: compile(source, "bench.py", "exec"), runs),
    }


def main() -> None:
    lines = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    source = make_module(lines)
    rewritten = transformer.rewrite(source, "bench", lambda name: None)
    print(f"{source.count(chr(10))} lines, {rewritten.count('_autofork_rt.fork(')} value forks, "
          f"{rewritten.count('.Joiner()')} joiners")
    times = measure(source)
    for step, seconds in times.items():
        print(f"{step:>22}: {seconds * 1000:7.1f} ms")
    print(f"rewrite / libcst.parse_module = {times['rewrite'] / times['libcst.parse_module']:.2f}")


if __name__ == "__main__":
    main()
