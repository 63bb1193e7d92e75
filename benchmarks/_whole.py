"""Goal 0: whole processes, as users time them (SPEC 9).

Each case is one script, run three ways in the same goal process, interleaved:

* ``plain``: ``python script.py`` (the marks do nothing: the calls run sequentially);
* ``autofork``: ``python -m autofork script.py``;
* ``PPE``: ``python script_ppe.py``, the same job written by hand with
  ``concurrent.futures.ProcessPoolExecutor`` (what a user would write instead; none for
  the chain of dependent calls, which nobody would hand to a pool).

The figure is the wall time of the whole process (interpreter start, imports, the pool,
exit), the median of ``reps`` runs after a warm-up run (which fills the bytecode caches,
autofork's included: every variant of the first case, then each script's own rewrite).  The subprocesses run with bytecode caching on
(``PYTHONDONTWRITEBYTECODE`` removed from their environment, as in a user's shell) and
without any ``AUTOFORK_*`` setting.  Start-up rows show the difference to plain
``python``; the others the speed-up or slow-down.
"""

from __future__ import annotations

import resource
import shutil
import statistics
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import _workloads as w
from ._measure import ROOT, RunFailed, run_python, short_error, user_env
from ._rows import Row

_BUSY = '''
def {name}(k):
    s = 0
    for i in range(k):
        s += i
    return s
'''


def _marked(body: str, functions: str = _BUSY.format(name="work")) -> str:
    """A script with one ``@implicit_fork`` function (``work`` unless ``functions`` says)."""
    functions = functions.replace("\ndef ", "\n@implicit_fork\ndef ", 1)
    return ("import sys\nfrom autofork import implicit_fork\n" + functions
            + "\n\nif __name__ == '__main__':\n" + textwrap.indent(textwrap.dedent(body), "    "))


def _ppe(body: str, functions: str = _BUSY.format(name="work")) -> str:
    """The same job by hand with a ``ProcessPoolExecutor`` (``ex`` in ``body``)."""
    return ("import sys\nfrom concurrent.futures import ProcessPoolExecutor\n" + functions
            + "\n\nif __name__ == '__main__':\n    with ProcessPoolExecutor() as ex:\n"
            + textwrap.indent(textwrap.dedent(body), "        "))


_SQUARE = '''
def square(x):
    return x * x
'''

_FIB = '''
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
'''

_COUNT = '''
def count_words(seed, size):
    from collections import Counter
    counts = Counter()
    for i in range(size):
        word = "W%d" % ((seed * 7919 + i * 104729) % 1000)
        counts[word.lower()] += 1
    return counts
'''

_STEP = '''
def step(state, k):
    for i in range(k):
        state = (state * 31 + i) % 1000003
    return state
'''


class _Case:
    """One script, its hand-written PPE version, and the arguments both get."""

    def __init__(self, name: str, marked: str, ppe: Optional[str], args: list[str]) -> None:
        self.name = name
        self.marked = marked
        self.ppe = ppe
        self.args = args


def _cases(quick: bool) -> list[tuple[list[str], _Case]]:
    """(row ids, case) for each case; sizes are calibrated on this machine."""
    scale = 10 if quick else 1
    k30 = w.calibrate(30e-6)
    k1 = w.calibrate(1e-6)
    k20 = w.calibrate(20e-6, _step_only)
    k250 = w.calibrate(0.25 / scale)
    small = _marked("print(sum(square(i) for i in range(10)))", _SQUARE)
    return [
        (["0a", "0b", "0c"], _Case(
            "five_lines", small,
            _ppe("print(sum(ex.map(square, range(10))))", _SQUARE), [])),
        (["0d"], _Case(
            "calls_30us",
            _marked("n, k = int(sys.argv[1]), int(sys.argv[2])\n"
                    "print(sum([work(k) for _ in range(n)]))"),
            _ppe("n, k = int(sys.argv[1]), int(sys.argv[2])\n"
                 "print(sum(ex.map(work, [k] * n, chunksize=max(1, n // 32))))"),
            [str(20000 // scale), str(k30)])),
        (["0e"], _Case(
            "calls_1us",
            _marked("n, k = int(sys.argv[1]), int(sys.argv[2])\n"
                    "print(sum([work(k) for _ in range(n)]))"),
            _ppe("n, k = int(sys.argv[1]), int(sys.argv[2])\n"
                 "print(sum(ex.map(work, [k] * n, chunksize=max(1, n // 32))))"),
            [str(300000 // scale), str(k1)])),
        (["0f"], _Case(
            "coarse",
            _marked("k = int(sys.argv[1])\nprint(sum([work(k) for _ in range(8)]))"),
            _ppe("k = int(sys.argv[1])\nprint(sum(ex.map(work, [k] * 8)))"),
            [str(k250)])),
        (["0g"], _Case(
            "fib", _marked("print(int(fib(int(sys.argv[1]))))", _FIB),
            _ppe("n = int(sys.argv[1])\n"
                 "a, b = ex.submit(fib, n - 1), ex.submit(fib, n - 2)\n"
                 "print(a.result() + b.result())", _FIB),
            [str(27 if quick else 32)])),
        (["0h"], _Case(
            "chain",
            _marked("n, k = int(sys.argv[1]), int(sys.argv[2])\nstate = 0\n"
                    "for _ in range(n):\n    state = step(state, k)\nprint(int(state))", _STEP),
            None,  # no one would hand a chain of dependent calls to a pool
            [str(20000 // scale), str(k20)])),
        (["0i"], _Case("primes", "", None, [])),
        (["0j"], _Case(
            "counter",
            _marked("from collections import Counter\n"
                    "n, size = int(sys.argv[1]), int(sys.argv[2])\ntotal = Counter()\n"
                    "for seed in range(n):\n    total += count_words(seed, size)\n"
                    "print(len(total), sum(total.values()), total.most_common(2))", _COUNT),
            _ppe("from collections import Counter\n"
                 "n, size = int(sys.argv[1]), int(sys.argv[2])\ntotal = Counter()\n"
                 "for counts in ex.map(count_words, range(n), [size] * n):\n"
                 "    total += counts\n"
                 "print(len(total), sum(total.values()), total.most_common(2))", _COUNT),
            [str(32 // (4 if quick else 1)), str(w.calibrate(0.1, _count_only))])),
    ]


def _count_only(k: int) -> int:
    from collections import Counter

    counts: Counter = Counter()
    for i in range(k):
        counts[("W%d" % ((7919 + i * 104729) % 1000)).lower()] += 1
    return len(counts)


def _step_only(k: int) -> int:
    state = 0
    for i in range(k):
        state = (state * 31 + i) % 1000003
    return state


class _Runner:
    """Runs one case's variants, interleaved; keeps every wall time."""

    def __init__(self, folder: Path, case: _Case) -> None:
        self.case = case
        self.times: dict[str, list[float]] = {}
        self.errors: dict[str, str] = {}
        self.outputs: dict[str, str] = {}
        self.cpu: dict[str, list[float]] = {}  # CPU seconds of each run, workers included
        if case.name == "primes":  # the showcase itself, from the repository
            script = ROOT / "examples" / "primes.py"
            self.cwd = ROOT
            ppe = folder / "primes_ppe.py"
            ppe.write_text(_PRIMES_PPE.format(examples=str(ROOT / "examples")))
            self.script, self.ppe_script = script, ppe
        else:
            self.cwd = folder
            self.script = folder / f"{case.name}.py"
            self.script.write_text(case.marked)
            self.ppe_script = None
            if case.ppe is not None:
                self.ppe_script = folder / f"{case.name}_ppe.py"
                self.ppe_script.write_text(case.ppe)

    def variants(self, rows: list[str]) -> dict[str, Callable[[], float]]:
        env = user_env()
        off = {**env, "AUTOFORK": "0"}
        out: dict[str, Callable[[], float]] = {
            "plain": lambda: self._run("plain", [str(self.script)], env),
            "autofork": lambda: self._run("autofork", ["-m", "autofork", str(self.script)], env),
        }
        if self.ppe_script is not None:
            out["PPE"] = lambda: self._run("PPE", [str(self.ppe_script)], env)
        if "0b" in rows:
            out["first run"] = lambda: self._first_run(env)
        if "0c" in rows:
            out["AUTOFORK=0"] = lambda: self._run(
                "AUTOFORK=0", ["-m", "autofork", str(self.script)], off)
        return out

    def _first_run(self, env: dict[str, str]) -> float:
        # The runs write bytecode (user_env), so the script's rewrite is cached beside it;
        # importhook.cache_path would answer for this process, which may not.
        for cached in (self.script.parent / "__pycache__").glob(
                f"{self.script.stem}.*.autofork-*.main.pyc"):
            cached.unlink()
        return self._run("first run", ["-m", "autofork", str(self.script)], env)

    def _run(self, name: str, args: list[str], env: dict[str, str]) -> float:
        before = _children_cpu()
        wall, out, _ = run_python([*args, *self.case.args], cwd=self.cwd, env=env, timeout=120)
        self.cpu.setdefault(name, []).append(_children_cpu() - before)
        first = self.outputs.setdefault("result", out)
        if out != first:
            raise RunFailed(f"{name} printed {out.strip()[:40]!r}, plain {first.strip()[:40]!r}")
        return wall

    def measure(self, rows: list[str], reps: int, warm_all: bool) -> None:
        variants = self.variants(rows)
        for rep in range(reps + 1):  # the first round warms the caches up and is not kept
            for name, run in variants.items():
                if name in self.errors or rep == 0 and not warm_all and name != "autofork":
                    continue  # after the first case, only the script's own rewrite is cold
                try:
                    took = run()
                except (RunFailed, OSError, subprocess.SubprocessError) as error:
                    self.errors[name] = (str(error) if isinstance(error, RunFailed)
                                         else short_error(error))
                    continue
                if rep:
                    self.times.setdefault(name, []).append(took)
            if rep == 0:
                self.cpu.clear()  # the warm-up round is not kept

    def median(self, name: str) -> Optional[float]:
        times = self.times.get(name)
        return statistics.median(times) if times else None

    def cpu_note(self, names: list[str], scale: float, unit: str) -> str:
        """The median CPU time of each variant (less sensitive to a busy machine)."""
        shown = [f"{name} {statistics.median(self.cpu[name]) * scale:.3g}"
                 for name in names if self.cpu.get(name)]
        return f"CPU {unit} (process and its workers): " + ", ".join(shown) if shown else ""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_PRIMES_PPE = '''\
import sys
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, {examples!r})
from primes import count_primes


def main(chunks=8, size=40_000, base=10_000_000):
    starts = [base + i * size for i in range(chunks)]
    with ProcessPoolExecutor() as ex:
        counts = list(ex.map(count_primes, starts, [s + size for s in starts]))
    print(f"primes in [{{base}}, {{base + chunks * size}}): {{sum(counts)}}")
    print("per range:", counts)


if __name__ == "__main__":
    main()
'''

# row -> (the variant that is "autofork" in it, the ratio as (numerator, denominator))
_ROWS = {
    "0a": ("autofork", None), "0b": ("first run", None), "0c": ("AUTOFORK=0", None),
    "0d": ("autofork", ("plain", "autofork")), "0e": ("autofork", ("autofork", "plain")),
    "0f": ("autofork", ("plain", "autofork")), "0g": ("autofork", ("plain", "autofork")),
    "0h": ("autofork", ("autofork", "plain")), "0i": ("autofork", ("plain", "autofork")),
    "0j": ("autofork", ("plain", "autofork")),
}


def _row(row_id: str, runner: _Runner, scale: float, reps: int) -> Row:
    mine, ratio = _ROWS[row_id]
    figure = runner.median(mine)
    plain = runner.median("plain")
    baselines = [(name, None if runner.median(name) is None else runner.median(name) * scale)
                 for name in ("plain", "PPE") if name in runner.times or name in runner.errors]
    errors = [f"{name}: {why}" for name, why in runner.errors.items()]
    cpu = runner.cpu_note([mine, "plain", "PPE"], scale, "ms" if scale == 1000.0 else "s")
    note = "; ".join(filter(None, [f"median of {reps} whole runs", cpu, *errors]))
    if figure is None:
        return Row(row_id, baselines=baselines, note=note,
                   status="error: " + runner.errors.get(mine, "not measured"))
    if ratio is None:  # start-up: how much longer than plain python
        value = None if plain is None else (figure - plain) * scale
    else:
        top, bottom = runner.median(ratio[0]), runner.median(ratio[1])
        value = top / bottom if top is not None and bottom else None
    return Row(row_id, autofork=figure * scale, baselines=baselines, ratio=value, note=note)


def _order(cases: list[tuple[list[str], _Case]]) -> list[tuple[list[str], _Case]]:
    """Start-up first, then the showcase, then the rest: on a busy machine the goal's time
    limit may cut the last ones (the table still shows every row, in its own order)."""
    return sorted(cases, key=lambda item: (item[0][0] != "0a", item[1].name != "primes"))


def goal_0(quick: bool) -> Iterator[Row]:
    """Whole processes: the rows 0a to 0j."""
    folder = Path(tempfile.mkdtemp(prefix="autofork-whole-"))
    try:
        for rows, case in _order(_cases(quick)):
            startup = rows[0] == "0a"
            reps = (2 if quick else 7) if startup else (1 if quick else 5)
            scale = 1000.0 if startup else 1.0
            try:
                runner = _Runner(folder, case)
                runner.measure(rows, reps, warm_all=startup)
            except Exception as error:  # noqa: BLE001 - the table must still print
                for row_id in rows:
                    yield Row(row_id, status=short_error(error))
                continue
            for row_id in rows:
                yield _row(row_id, runner, scale, reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
