"""The goals of issue 4, each measured next to its baselines in the same process.

``run.py`` starts one process per goal (``python -c "...main()" GOAL [--quick]``), so a
goal starts from a fresh interpreter and a crash or hang of one goal cannot take the
table down.  Each goal prints its rows as ``@@row {json}`` lines as soon as they are
measured.  In-process peers that need a start method use forkserver (spawn where there
is none): autofork's own threads run in this process, and ``fork()`` of a threaded
process is unsafe; a warm pool's per-call cost does not depend on how it started.
Goal 4 runs each contender in a fresh process with its default start method.
"""

from __future__ import annotations

import asyncio
import gc
import glob
import json
import os
import shutil
import sys
import tempfile
import textwrap
import time
import tracemalloc
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from . import _workloads as w
from ._measure import (Result, RunFailed, figure, last_json, race, rss_bytes, run_python,
                       short_error, user_env)
from ._rows import Row
from ._whole import goal_0

MARK = "@@row "


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b is not None and b > 0 else None


def _context() -> Any:
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _reset() -> None:
    from autofork.runtime import engine

    engine.shutdown()


def _row(row_id: str, results: dict[str, Result], scale: float, baselines: list[str],
         ratio: tuple[str, str], note: str = "") -> Row:
    """A row from ``race`` results; figures are seconds times ``scale``."""
    af = results.get("autofork", "error: not measured")
    shown = [(name, figure(results[name], scale)) for name in baselines]
    errors = [f"{name}: {results[name]}" for name in baselines if isinstance(results[name], str)]
    note = "; ".join([n for n in [note, *errors] if n])
    if isinstance(af, str):
        return Row(row_id, baselines=shown, status=af, note=note)
    values = {name: figure(value, scale) for name, value in results.items()}
    return Row(row_id, autofork=af * scale, baselines=shown,
               ratio=_ratio(values.get(ratio[0]), values.get(ratio[1])), note=note)


def _failed(row_ids: list[str], error: BaseException) -> Iterator[Row]:
    status = short_error(error)
    if isinstance(error, RunFailed):
        status = ("not available: " if error.unavailable else "error: ") + str(error)
    for row_id in row_ids:
        yield Row(row_id, status=status)


def _warm(run: Callable[[], Any]) -> None:
    """Warm a pool up; a failure is left for the measured runs to report in their row."""
    try:
        run()
    except Exception:  # noqa: BLE001
        pass


def _joblib() -> Any:
    from joblib import Parallel, delayed

    return Parallel, delayed


# -- 1. thread forks ----------------------------------------------------------------------

def goal_1(quick: bool) -> Iterator[Row]:
    from autofork import evaluate, evaluate_all, fork

    n, reps = (3000, 2) if quick else (20000, 5)
    pool = ThreadPoolExecutor()
    _warm(lambda: evaluate_all([fork(w.io_noop, i) for i in range(200)]))
    [f.result() for f in [pool.submit(w.io_noop, i) for i in range(200)]]

    def autofork_one() -> float:
        start = time.perf_counter()
        for i in range(n):
            evaluate(fork(w.io_noop, i))
        return time.perf_counter() - start

    def tpe_one() -> float:
        start = time.perf_counter()
        for i in range(n):
            pool.submit(w.io_noop, i).result()
        return time.perf_counter() - start

    def plain_one() -> float:
        start = time.perf_counter()
        for i in range(n):
            w.io_noop(i)
        return time.perf_counter() - start

    def autofork_batch() -> float:
        start = time.perf_counter()
        evaluate_all([fork(w.io_noop, i) for i in range(n)])
        return time.perf_counter() - start

    def tpe_batch() -> float:
        start = time.perf_counter()
        futures = [pool.submit(w.io_noop, i) for i in range(n)]
        [f.result() for f in futures]
        return time.perf_counter() - start

    def plain_batch() -> float:
        start = time.perf_counter()
        [w.io_noop(i) for i in range(n)]
        return time.perf_counter() - start

    note = f"N={n}, best of {reps}"
    results = race({"autofork": autofork_one, "TPE": tpe_one, "plain": plain_one}, reps)
    yield _row("1a", results, 1e6 / n, ["TPE", "plain"], ("autofork", "TPE"), note)
    results = race({"autofork": autofork_batch, "TPE": tpe_batch, "plain": plain_batch}, reps)
    yield _row("1b", results, 1e6 / n, ["TPE", "plain"], ("autofork", "TPE"), note)
    pool.shutdown()


# -- 2. process forks ---------------------------------------------------------------------

def goal_2(quick: bool) -> Iterator[Row]:
    from autofork import configure, evaluate_all, fork

    configure(workers=2)
    n, reps = (5000, 2) if quick else (20000, 3)
    context = _context()
    ppe = ProcessPoolExecutor(2, mp_context=context)
    pool = context.Pool(2)
    def autofork_batch() -> float:
        start = time.perf_counter()
        evaluate_all([fork(w.noop, i) for i in range(n)])
        return time.perf_counter() - start

    def ppe_batch() -> float:
        start = time.perf_counter()
        futures = [ppe.submit(w.noop, i) for i in range(n)]
        [f.result() for f in futures]
        return time.perf_counter() - start

    def pool_batch() -> float:
        start = time.perf_counter()
        results = [pool.apply_async(w.noop, (i,)) for i in range(n)]
        [r.get() for r in results]
        return time.perf_counter() - start

    def plain_batch() -> float:
        start = time.perf_counter()
        [w.noop(i) for i in range(n)]
        return time.perf_counter() - start

    contenders: dict[str, Callable[[], float]] = {
        "autofork": autofork_batch, "PPE": ppe_batch, "Pool": pool_batch}
    try:
        Parallel, delayed = _joblib()
        parallel = Parallel(n_jobs=2)  # batch_size="auto"

        def joblib_batch() -> float:
            start = time.perf_counter()
            parallel(delayed(w.noop)(i) for i in range(n))
            return time.perf_counter() - start

        contenders["joblib"] = joblib_batch
    except ImportError as error:
        contenders["joblib"] = lambda: (_ for _ in ()).throw(error)  # type: ignore[misc]
    contenders["plain"] = plain_batch

    # Warm every pool (start its workers, send it the function) before the clock runs.
    for run in contenders.values():
        _warm(run)
    results = race(contenders, reps)
    ppe.shutdown()
    pool.terminate()
    scale = 1e6 / n
    note = f"N={n}, pools warm, best of {reps}"
    yield _row("2a", results, scale, ["PPE", "Pool", "joblib", "plain"], ("autofork", "PPE"),
               note)
    yield _row("2b", results, scale, ["PPE"], ("autofork", "PPE"))
    peers = [v for v in (figure(results["Pool"]), figure(results["joblib"])) if v is not None]
    row = _row("2c", results, scale, ["Pool", "joblib"], ("autofork", "PPE"))
    row.ratio = _ratio(figure(results["autofork"]), min(peers)) if peers else None
    yield row


# -- 3. granularity -----------------------------------------------------------------------

def goal_3(quick: bool) -> Iterator[Row]:
    from autofork import configure, evaluate_all, fork
    from autofork.runtime import implicit

    configure(workers=2)
    reps = 2 if quick else 3
    k20, k1 = w.calibrate(20e-6), w.calibrate(1e-6)
    ppe = ProcessPoolExecutor(2, mp_context=_context())
    list(ppe.map(w.noop, range(100)))
    _warm(lambda: evaluate_all([fork(w.noop, i) for i in range(100)]))  # busy() is new to it
    try:
        Parallel, delayed = _joblib()
        Parallel(n_jobs=2)(delayed(w.noop)(i) for i in range(100))
    except ImportError:
        Parallel = None

    def contenders(k: int, n: int) -> dict[str, Callable[[], float]]:
        def autofork_loop() -> float:
            start = time.perf_counter()
            results = []
            for _ in range(n):
                results.append(implicit.fork(w.busy, k))  # what rewritten code calls
            sum(evaluate_all(results))
            return time.perf_counter() - start

        def plain_loop() -> float:
            start = time.perf_counter()
            results = []
            for _ in range(n):
                results.append(w.busy(k))
            sum(results)
            return time.perf_counter() - start

        def ppe_map() -> float:
            start = time.perf_counter()
            sum(ppe.map(w.busy, repeat(k, n), chunksize=1000))
            return time.perf_counter() - start

        def joblib_auto() -> float:
            if Parallel is None:
                raise ImportError("joblib is not installed")
            start = time.perf_counter()
            sum(Parallel(n_jobs=2)(delayed(w.busy)(k) for _ in range(n)))
            return time.perf_counter() - start

        return {"autofork": autofork_loop, "plain": plain_loop, "PPE": ppe_map,
                "joblib": joblib_auto}

    for row_id, k, n, ratio in (("3a", k20, 5000 if quick else 20000, ("plain", "autofork")),
                                ("3b", k1, 20000 if quick else 100000, ("autofork", "plain"))):
        results = race(contenders(k, n), reps)
        plain = figure(results["plain"], 1e6 / n)
        each = f"{plain:.1f} µs" if plain is not None else "?"
        yield _row(row_id, results, 1.0, ["plain", "PPE", "joblib"], ratio,
                   f"N={n}, busy() measured {each}/call, PPE.map chunksize=1000, "
                   f"best of {reps}")
    ppe.shutdown()


# -- 4. coarse work, start-up included ------------------------------------------------------

_SPIN = '''
import sys

def spin(k):
    s = 0
    for i in range(k):
        s += i
    return s
'''

_COARSE = {
    "plain": "print(sum(spin(k) for _ in range(8)))",
    "autofork": ("from autofork import configure, evaluate_all, fork\n"
                 "    configure(workers=2)\n"
                 "    print(sum(evaluate_all([fork(spin, k) for _ in range(8)])))"),
    "PPE": ("from concurrent.futures import ProcessPoolExecutor\n"
            "    with ProcessPoolExecutor(2) as pool:\n"
            "        print(sum(pool.map(spin, [k] * 8)))"),
    "Pool": ("import multiprocessing\n"
             "    with multiprocessing.Pool(2) as pool:\n"
             "        print(sum(pool.map(spin, [k] * 8)))"),
    "joblib": ("from joblib import Parallel, delayed\n"
               "    print(sum(Parallel(n_jobs=2)(delayed(spin)(k) for _ in range(8))))"),
}


def goal_4(quick: bool) -> Iterator[Row]:
    seconds = 0.1 if quick else 0.25
    reps = 1 if quick else 2
    k = w.calibrate(seconds)
    expected = str(8 * w.plain_busy(k))
    folder = Path(tempfile.mkdtemp(prefix="autofork-bench-"))
    try:
        def contender(name: str) -> Callable[[], float]:
            script = folder / f"coarse_{name}.py"
            script.write_text(_SPIN + "\nif __name__ == '__main__':\n    k = int(sys.argv[1])\n"
                              f"    {_COARSE[name]}\n")

            def run() -> float:
                wall, out, _ = run_python([str(script), str(k)], cwd=folder, timeout=60)
                if out.strip() != expected:
                    raise RuntimeError(f"wrong result {out.strip()[:40]!r}")
                return wall

            return run

        results = race({name: contender(name) for name in _COARSE}, reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    yield _row("4", results, 1.0, ["plain", "PPE", "Pool", "joblib"], ("plain", "autofork"),
               f"8 x {seconds * 1000:.0f} ms; wall time of each whole process "
               f"(interpreter, imports, pool start); best of {reps}")


# -- 5. recursion under python -m autofork ---------------------------------------------------

_FIB = '''\
import sys
import time

from autofork import implicit_fork


@implicit_fork
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


if __name__ == "__main__":
    start = time.perf_counter()
    result = fib(int(sys.argv[1]))
    print(f'{{"value": {int(result)}, "seconds": {time.perf_counter() - start}}}')
'''


def goal_5(quick: bool) -> Iterator[Row]:
    n = 27 if quick else 32
    reps = 1 if quick else 3
    folder = Path(tempfile.mkdtemp(prefix="autofork-bench-"))
    inner: dict[str, float] = {}
    try:
        script = folder / "fibonacci.py"
        script.write_text(_FIB)
        expected = w_fib(n)

        def contender(name: str, args: list[str]) -> Callable[[], float]:
            def run() -> float:
                wall, out, _ = run_python([*args, str(script), str(n)], cwd=folder, timeout=120)
                data = last_json(out)
                if data["value"] != expected:
                    raise RuntimeError(f"fib({n}) gave {data['value']}")
                inner[name] = min(inner.get(name, float("inf")), data["seconds"])
                return wall

            return run

        try:  # is there a CLI at all?  Its failure makes the row "not available"
            first = contender("autofork", ["-m", "autofork"])()
        except RunFailed as error:
            yield from _failed(["5"], error)
            return
        if first > 10:
            reps = 1  # far off anyway: keep the run within its time limit
        results = race({"autofork": contender("autofork", ["-m", "autofork"]),
                        "plain": contender("plain", [])}, reps)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # The goal is about the recursion: the figures are fib(n) itself, timed inside each
    # run; the whole runs (interpreter, libcst and the rewrite included) go in the note.
    note = (f"fib({n}) timed inside the script; whole runs: autofork "
            f"{results.get('autofork', float('nan')):.3f} s, plain "
            f"{results.get('plain', float('nan')):.3f} s; best of {reps}")
    yield _row("5", dict(inner), 1.0, ["plain"], ("plain", "autofork"), note)


def w_fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


# -- 6. I/O --------------------------------------------------------------------------------

def goal_6(quick: bool) -> Iterator[Row]:
    from autofork import evaluate_all, fork

    reps = 2 if quick else 3

    def autofork_threads() -> float:
        _reset()  # default settings, cold pool: its threads start during the run
        start = time.perf_counter()
        values = evaluate_all([fork(w.sleep_50ms) for _ in range(200)])
        elapsed = time.perf_counter() - start
        assert sum(values) == 200
        return elapsed

    def tpe(workers: Optional[int]) -> Callable[[], float]:
        def run() -> float:
            pool = ThreadPoolExecutor(workers)
            start = time.perf_counter()
            list(pool.map(w.sleep_50ms, range(200)))
            elapsed = time.perf_counter() - start
            pool.shutdown()
            return elapsed

        return run

    results = race({"autofork": autofork_threads, "TPE(200)": tpe(200)}, reps)
    results.update(race({"TPE()": tpe(None)}, 1))
    yield _row("6a", results, 1.0, ["TPE(200)", "TPE()"], ("autofork", "TPE(200)"),
               f"best of {reps}; TPE() has {ThreadPoolExecutor()._max_workers} threads")

    def autofork_coroutines() -> float:
        _reset()
        start = time.perf_counter()
        values = evaluate_all([fork(w.async_sleep_50ms) for _ in range(200)])
        elapsed = time.perf_counter() - start
        assert sum(values) == 200
        return elapsed

    def gather() -> float:
        async def main() -> list:
            return await asyncio.gather(*(w.async_sleep_50ms() for _ in range(200)))

        start = time.perf_counter()
        asyncio.run(main())
        return time.perf_counter() - start

    results = race({"autofork": autofork_coroutines, "asyncio.gather": gather}, reps)
    yield _row("6b", results, 1.0, ["asyncio.gather"], ("autofork", "asyncio.gather"),
               f"best of {reps}; asyncio.run included")
    _reset()


# -- 7. import ------------------------------------------------------------------------------

_BLOCK = '''\
@implicit_fork
def work_{i}(x, y=1):
    """Work item {i}."""
    total = 0
    for k in range(x):
        total += k * y
    return total


def driver_{i}(items):
    results = []
    for item in items:
        results.append(work_{i}(item))
    work_{j}(3)
    value = work_{i}(2) + work_{j}(4)
    if value is None:
        return None
    return sum(results) + value


class Holder{i}:
    """Holds a number."""

    def __init__(self, n):
        self.n = n

    def compute(self):
        try:
            return work_{i}(self.n)
        except ValueError:
            return -1

'''


def big_module(lines: int = 3000) -> str:
    """A module of ``lines`` lines: marked functions, loops that call them, classes."""
    head = '"""A generated module for the import benchmark."""\n\nfrom autofork import implicit_fork\n\n\n'
    blocks = [head]
    count = head.count("\n")
    i = 0
    while True:
        block = _BLOCK.format(i=i, j=max(0, i - 1))
        if count + block.count("\n") > lines:
            break
        blocks.append(block)
        count += block.count("\n")
        i += 1
    blocks.append("".join(f"# padding {n}\n" for n in range(lines - count)))
    return "".join(blocks)


_IMPORT_PLAIN = '''\
import json, sys, time
sys.path.insert(0, ".")
import autofork  # the marks' module: imported before the clock, in every variant
start = time.perf_counter()
import bigmodule
print(json.dumps({"seconds": time.perf_counter() - start}))
'''

_IMPORT_HOOK = '''\
import json, sys, time
sys.path.insert(0, ".")
import autofork
import autofork.importhook
import autofork.runtime.implicit
if sys.argv[1] == "first":
    import libcst  # its own import is paid once per process, not per module
autofork.importhook.install()
start = time.perf_counter()
import bigmodule
seconds = time.perf_counter() - start
rewritten = any(v is autofork.runtime.implicit for v in vars(bigmodule).values())
print(json.dumps({"seconds": seconds, "rewritten": rewritten}))
'''

_PARSE = '''\
import json, time
start = time.perf_counter()
import libcst
imported = time.perf_counter() - start
with open("bigmodule.py", encoding="utf-8") as file:
    source = file.read()
start = time.perf_counter()
libcst.parse_module(source)
print(json.dumps({"seconds": time.perf_counter() - start, "import": imported}))
'''


def goal_7(quick: bool) -> Iterator[Row]:
    reps = 2 if quick else 7
    folder = Path(tempfile.mkdtemp(prefix="autofork-bench-"))
    env = user_env()
    try:
        (folder / "bigmodule.py").write_text(big_module(3000))
        for name, text in (("plain.py", _IMPORT_PLAIN), ("hook.py", _IMPORT_HOOK),
                           ("parse.py", _PARSE)):
            (folder / name).write_text(text)
        extra: dict[str, float] = {}

        def script(args: list[str], before: Optional[Callable[[], None]] = None
                   ) -> Callable[[], float]:
            def run() -> float:
                if before is not None:
                    before()
                _, out, err = run_python(args, cwd=folder, env=env, timeout=120)
                data = last_json(out)
                if data.get("rewritten") is False:
                    warning = [line for line in err.splitlines() if "autofork" in line]
                    raise RunFailed("the hook did not rewrite the module"
                                    + (f" ({warning[0].strip()[:100]})" if warning else ""),
                                    unavailable=True)
                if "import" in data:
                    extra["libcst import"] = min(extra.get("libcst import", 9e9), data["import"])
                return data["seconds"]

            return run

        def forget_rewrite() -> None:
            for pyc in glob.glob(str(folder / "__pycache__" / "bigmodule*autofork*")):
                os.unlink(pyc)

        script(["plain.py"])()  # writes the normal pyc
        first = script(["hook.py", "first"], forget_rewrite)
        try:
            first()  # writes the rewritten pyc; fails when there is no hook or rewriter
        except RunFailed as error:
            yield from _failed(["7a", "7b"], error)
            return
        results = race({"autofork": script(["hook.py", "cached"]),
                        "plain": script(["plain.py"])}, reps)
        yield _row("7a", results, 1e3, ["plain"], ("autofork", "plain"),
                   f"3,000 lines, {big_module().count('@implicit_fork')} marked functions; "
                   f"each in a fresh process, best of {reps}")
        results = race({"autofork": first, "parse": script(["parse.py"])}, reps)
        libcst_import = extra.get("libcst import")
        yield _row("7b", results, 1e3, ["parse"], ("autofork", "parse"),
                   "libcst imported before the clock in both" + (
                       f" (its import alone: {libcst_import * 1e3:.0f} ms)"
                       if libcst_import else ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- 8. memory ------------------------------------------------------------------------------

def goal_8(quick: bool) -> Iterator[Row]:
    from autofork import configure, evaluate_all, fork, wait

    configure(workers=2)
    pending_n = 2000
    _warm(lambda: evaluate_all([fork(w.noop, i) for i in range(200)]))

    def pending_cost(submit: Callable[..., Any], settle: Callable[[list], Any],
                     done: Callable[[Any], bool]) -> float:
        """Bytes per pending call: both workers held by a pause, then ``pending_n`` calls."""
        blockers = [submit(w.pause, 0.5) for _ in range(2)]
        time.sleep(0.1)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            calls = [submit(w.noop, 0) for _ in range(pending_n)]
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        finished = sum(map(done, calls))
        if finished > pending_n // 10:
            raise RuntimeError(f"{finished} of {pending_n} calls finished during the measurement")
        settle(calls)
        settle(blockers)
        return (after - before) / pending_n

    results: dict[str, Result] = {}
    try:
        results["autofork"] = pending_cost(
            fork, evaluate_all, lambda p: not wait([p], timeout=0).not_done)
    except Exception as error:  # noqa: BLE001
        results["autofork"] = short_error(error)
    ppe = ProcessPoolExecutor(2, mp_context=_context())
    try:
        list(ppe.map(w.noop, range(100)))
        results["PPE future"] = pending_cost(
            ppe.submit, lambda fs: [f.result() for f in fs], lambda f: f.done())
    except Exception as error:  # noqa: BLE001
        results["PPE future"] = short_error(error)
    finally:
        ppe.shutdown()
    yield _row("8a", results, 1e-3, ["PPE future"], ("autofork", "PPE future"),
               f"{pending_n} calls pending behind two busy workers; result: a small int")

    n = 20000 if quick else 100000
    try:
        evaluate_all([fork(w.noop, i) for i in range(1000)])
        gc.collect()
        rss_before = rss_bytes()
        proxies = [fork(w.noop, i) for i in range(n)]
        evaluate_all(proxies)
        del proxies
        gc.collect()
        time.sleep(0.2)
        gc.collect()
        rss_after = rss_bytes()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            proxies = [fork(w.noop, i) for i in range(n)]
            evaluate_all(proxies)
            del proxies
            gc.collect()
            time.sleep(0.2)
            gc.collect()
            after, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        yield Row("8b", autofork=(after - before) / 1e6,
                  note=f"N={n}; tracemalloc peak +{(peak - before) / 1e6:.0f} MB while pending; "
                       f"RSS {(rss_after - rss_before) / 1e6:+.1f} MB after (separate run)")
    except Exception as error:  # noqa: BLE001
        yield Row("8b", status=short_error(error))
    _reset()


GOAL_FUNCTIONS = {"0": goal_0, "1": goal_1, "2": goal_2, "3": goal_3, "4": goal_4, "5": goal_5,
                  "6": goal_6, "7": goal_7, "8": goal_8}


def main(argv: Optional[list[str]] = None) -> None:
    """Child entry: ``main(["3", "--quick"])`` measures goal 3 and prints its rows."""
    args = sys.argv[1:] if argv is None else argv
    goal, quick = args[0], "--quick" in args
    from ._rows import GOALS

    done: set[str] = set()
    try:
        for row in GOAL_FUNCTIONS[goal](quick):
            done.add(row.id)
            print(MARK + json.dumps(row.to_json()), flush=True)
    except Exception as error:  # noqa: BLE001 - report the rest of the goal's rows
        for row in _failed([r for r in GOALS[goal] if r not in done], error):
            print(MARK + json.dumps(row.to_json()), flush=True)
    finally:
        _reset()
