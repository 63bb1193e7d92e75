"""Effects a caller could see (autofork.effects): golden rewrites, and scripts run
under ``python`` and ``python -m autofork`` with identical stdout.

A marked function with an effect keeps its calls plain and warns once, at rewrite time
(also from the bytecode cache); functions without one stay forked, which the pid of the
process each call ran in proves.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Mapping, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autofork.transformer import compile_rewritten, forkable_functions, rewrite

ROOT = Path(__file__).resolve().parent.parent
HEAD = "from autofork import implicit_fork\n"


def rewritten(body: str, table: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
    source = HEAD + textwrap.dedent(body)
    out = rewrite(source, "m", (table or {}).get)
    assert rewrite(out, "m", (table or {}).get) == out, "rewriting rewritten code changes nothing"
    compile_rewritten(source, out, "m.py")
    return out


def kept_plain(out: str) -> list[tuple[str, int]]:
    """(function, line) of each notice the rewrite put in."""
    return [(m.group(1), int(m.group(2))) for m in re.finditer(
        r"kept_plain\('(\w+)', .*?, (\d+), __name__\)", out)]


def forked(out: str, call: str) -> bool:
    return f".fork({call}, " in out or f".fork({call})" in out


# ------------------------------------------------------------------- golden rewrites


def test_argument_write_keeps_the_calls_plain_with_one_notice() -> None:
    out = rewritten('''\
        @implicit_fork
        def add(out, x):
            out.append(x * x)

        acc = []
        for i in range(3):
            add(acc, i)
            add(acc, i)
    ''')
    assert not forked(out, "add")
    assert kept_plain(out) == [("add", 4)]
    assert "`out.append(...)` changes the argument `out`" in out
    assert "return the new list instead of appending to `out`" in out


@pytest.mark.parametrize("statement, what", [
    ("table[x] = 1", "changes the argument `table`"),
    ("table.attr = x", "changes the argument `table`"),
    ("table[x] += 1", "changes the argument `table`"),
    ("del table[x]", "changes the argument `table`"),
    ("table.sort()", "changes the argument `table`"),
    ("table.setdefault(x, 1)", "changes the argument `table`"),
    ("setattr(table, 'a', x)", "changes the argument `table`"),
    ("heapq.heappush(table, x)", "changes the argument `table`"),
    ("alias = table\n    alias.add(x)", "changes the argument `table`"),
    ("for row in table:\n        row.append(x)", "changes the argument `table`"),
    ("for i, row in enumerate(table):\n        row[0] = x", "changes the argument `table`"),
    ("STATE.append(x)", "changes the module-level `STATE`"),
    ("STATE[0] += x", "changes the module-level `STATE`"),
    ("global TOTAL\n    TOTAL += x", "changes the module-level `TOTAL`"),
    ("settings.FACTOR = x", "changes the module-level `settings`"),
    ("random.shuffle(table)", "uses the global `random` generator"),
    ("return random.random()", "uses the global `random` generator"),
    ("return choice(table)", "uses the global `random` generator"),
    ("return np.random.rand()", "uses the global `numpy.random` generator"),
    ("return npr.normal()", "uses the global `numpy.random` generator"),
    ("return RNG.random()", "draws from `RNG`, a generator made at module level"),
    ("return NPG.integers(3)", "draws from `NPG`, a generator made at module level"),
    ("for k, v in kwargs.items():\n        v.append(x)", "changes the argument `kwargs`"),
    ("args[0].append(x)", "changes the argument `args`"),
    ("table.append(x)\n    table = list(table)", "changes the argument `table`"),   # copy too late
    ("if x:\n        table = table.copy()\n    table.append(x)", "changes the argument `table`"),
    ("table = table.copy(deep=False)\n    table[0] = 1", "changes the argument `table`"),
    ("table = list(table)\n    table[0].append(x)", "changes the argument `table`"),  # shallow
    ("return (row * x for row in table)", "gives a generator, which cannot be sent back"),
    ("os.chdir(table)", "`os.chdir()` changes the working directory of the process"),
    ("chdir(table)", "`chdir()` changes the working directory of the process"),
    ("os.putenv('K', table)", "`os.putenv()` changes the environment of the process"),
    ("sys.setrecursionlimit(x)", "`sys.setrecursionlimit()` changes the recursion limit"),
    ("signal.signal(x, table)", "`signal.signal()` changes a signal handler of the process"),
    ("if x:\n        os._exit(x)", "`os._exit()` ends the process"),
    ("helper(x)", "calls helper(), where line 12: `os._exit()` ends the process"),
    ("return input()", "`input()` reads the standard input of the process"),
    ("atexit.register(print, x)", "`atexit.register()` changes the exit handlers of the process"),
    ("return sys.stdin.readline()", "`sys.stdin` reads the standard input of the process"),
    ("for line in sys.stdin:\n        x += 1", "`sys.stdin` reads the standard input"),
    ("return stdin.read()", "`stdin` reads the standard input of the process"),
    ("return fileinput.input()", "`fileinput.input()` reads the standard input"),
])
def test_each_effect_is_found(statement: str, what: str) -> None:
    out = rewritten(textwrap.dedent('''\
        import atexit, fileinput, heapq, os, random, settings, signal, sys
        import numpy as np
        import numpy.random as npr
        from os import chdir
        from sys import stdin
        from random import choice
        STATE = [0]
        TOTAL = 0
        RNG = random.Random(1)
        NPG = np.random.default_rng(1)
        def helper(x): os._exit(x)

        @implicit_fork
        def work(table, x, *args, **kwargs):
            BODY

        work([3, 1], 2)
    ''').replace("BODY", statement))
    assert not forked(out, "work"), out
    assert what in out
    assert kept_plain(out)[0][0] == "work"


@pytest.mark.parametrize("body", [
    "ys = list(xs)\n    ys.append(x)\n    return ys",                 # a copy of an argument
    "d = {}\n    d[x] = 1\n    d.update(a=1)\n    return d",           # local containers
    "rng = random.Random(x)\n    return rng.random()",                 # a generator of its own
    "rng = np.random.default_rng(x)\n    return rng.random()",
    "with open(f'out-{x}.txt', 'w') as f:\n        f.write('a')\n    return x",   # its own file
    "print('step', x)\n    log.info('x')\n    warnings.warn('w')\n    return x",  # output
    "return SCALE * x + len(xs)",                                      # reads a global
    "return math.sqrt(x) + np.append(xs, 1)[0]",                       # other modules
    "xs = sorted(xs)\n    return xs",
    "total = 0\n    total += x\n    return total",
    "def inner(v):\n        out = []\n        out.append(v)\n        return out\n    return inner(x)",
    "kwargs.pop('a', None)\n    kwargs['b'] = 1\n    return list(args) + [kwargs]",   # made per call
    "rng = RNG_CLASS(x)\n    return rng.random()",
    "xs = xs.copy()\n    xs[0] = x\n    return xs",                   # a copy first: its own
    "\"\"\"Doc.\"\"\"\n    xs = list(xs)\n    xs.append(x)\n    return xs",
    "xs = [v * 2 for v in xs]\n    xs.sort()\n    return xs",
    "import copy\n    xs = copy.deepcopy(xs)\n    xs.append(x)\n    return xs",
    "return [v * x for v in (w + 1 for w in xs)]",                    # a generator used inside
    "def rows():\n        return (v for v in xs)\n    return list(rows())",
    "sys.stdout.write('a')\n    return sys.stdout.isatty()",        # output, not input
    "def input():\n        return 1\n    return input() + len(stdin)",   # not the builtin
])
def test_no_effect_stays_forked(body: str) -> None:
    out = rewritten(textwrap.dedent('''\
        import logging, math, random, sys, warnings
        import numpy as np
        log = logging.getLogger(__name__)
        stdin = "not sys.stdin"
        SCALE = 3
        RNG_CLASS = random.Random

        @implicit_fork
        def work(xs, x, *args, **kwargs):
            BODY

        value = work([1, 2], 2)
    ''').replace("BODY", body))
    assert forked(out, "work"), out
    assert kept_plain(out) == []


def test_effects_of_same_module_callees_follow_the_argument_passed() -> None:
    out = rewritten('''\
        def put(target, key):
            target[key] = key

        def bump():
            COUNTS.append(1)

        @implicit_fork
        def fresh(k):
            d = {}
            put(d, k)
            return d

        @implicit_fork
        def passes_argument(table, k):
            put(table, k)

        @implicit_fork
        def via_global(k):
            bump()
            return k

        COUNTS = []
        a = fresh(1)
        b = passes_argument({}, 2)
        c = via_global(3)
    ''')
    assert forked(out, "fresh")
    assert not forked(out, "passes_argument") and not forked(out, "via_global")
    assert [name for name, _ in kept_plain(out)] == ["passes_argument", "via_global"]
    assert "`put(table, k)` calls put(), where line 3: `target[key] = key` changes the argument `target`" in out


def test_methods_writing_self_and_enclosing_state() -> None:
    out = rewritten('''\
        class Account:
            @implicit_fork
            def deposit(self, amount):
                self.balance += amount

            @implicit_fork
            def calls_deposit(self, amount):
                self.deposit(amount)

            @implicit_fork
            def pure(self, amount):
                return amount * 2

            def run(self):
                self.deposit(1)
                self.calls_deposit(2)
                return self.pure(3)

        def outer():
            n = 0

            @implicit_fork
            def step(x):
                nonlocal n
                n += x

            step(1)
            return n
    ''')
    assert not forked(out, "self.deposit") and not forked(out, "self.calls_deposit")
    assert forked(out, "self.pure")
    assert not forked(out, "step")
    assert "`self.balance += amount` changes `self`" in out
    assert "`nonlocal n` then `n += x` changes `n` of an enclosing function" in out


def test_trust_effects_forks_anyway_and_hides_the_effect_from_callers() -> None:
    out = rewritten('''\
        from autofork import trust_effects
        import autofork

        @trust_effects
        def helper(out):
            out.append(1)

        @implicit_fork
        @trust_effects
        def add(out, x):
            out.append(x)

        @autofork.trust_effects
        @implicit_fork
        def add2(out, x):
            out.append(x)

        @implicit_fork
        def calls_helper(out):
            helper(out)

        add([], 1)
        add2([], 1)
        calls_helper([])
    ''')
    assert forked(out, "add") and forked(out, "add2") and forked(out, "calls_helper")
    assert kept_plain(out) == []


def test_a_module_that_imports_a_function_with_effects_calls_it_plainly() -> None:
    helpers = HEAD + textwrap.dedent('''\
        @implicit_fork
        def add(out, x):
            out.append(x)

        @implicit_fork
        def square(x):
            return x * x
    ''')
    marks = forkable_functions(helpers, "helpers")
    assert marks == {"square": "cpu"}
    out = rewrite("from helpers import add, square\nadd([], 1)\ny = square(2)\n", "m",
                  {"helpers": marks}.get)
    assert "fork(add" not in out and "fork(square, 2)" in out


# -------------------------------------------------------------------------- scripts


def run(tmp_path: Path, source: str, *options: str, autofork: bool = True,
        env: Optional[dict[str, str]] = None, name: str = "script.py",
        stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    command = [sys.executable, *(["-m", "autofork", *options] if autofork else []), str(script)]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=full_env,
                          cwd=tmp_path, input=stdin)


def same_output(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    plain = run(tmp_path, source, autofork=False)
    ours = run(tmp_path, source)
    assert plain.returncode == 0, plain.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == plain.stdout, ours.stderr
    assert "AutoforkWarning" not in plain.stderr
    return ours


EFFECT_SCRIPTS = {
    "argument": ('''\
        from autofork import implicit_fork

        @implicit_fork
        def add_square(x, out):
            out.append(x * x)

        out = []
        for i in range(5):
            add_square(i, out)
        print(out)
    ''', "[0, 1, 4, 9, 16]", 5,
        "add_square() is not forked, its calls run in the caller: line 5: `out.append(...)` "
        "changes the argument `out`. Fix: return the new list instead of appending to `out`"),
    "module dict": ('''\
        from autofork import implicit_fork
        COUNTER = {"n": 0}

        @implicit_fork
        def count(x):
            COUNTER["n"] += x

        for i in range(5):
            count(i)
        print(COUNTER)
    ''', "{'n': 10}", 6, "changes the module-level `COUNTER`"),
    "module list": ('''\
        from autofork import implicit_fork
        CACHE = []

        @implicit_fork
        def remember(x):
            CACHE.append(x)
            return x

        total = sum(remember(i) for i in range(4))
        print(total, CACHE)
    ''', "6 [0, 1, 2, 3]", 6, "changes the module-level `CACHE`"),
    "global": ('''\
        from autofork import implicit_fork
        TOTAL = 0

        @implicit_fork
        def add(x):
            global TOTAL
            TOTAL += x

        for i in range(5):
            add(i)
        print(TOTAL)
    ''', "10", 7, "`global TOTAL` then `TOTAL += x`"),
    "self": ('''\
        from autofork import implicit_fork

        class Account:
            def __init__(self):
                self.balance = 0
                self.history = []

            @implicit_fork
            def deposit(self, amount):
                self.balance += amount
                self.history.append(amount)

        account = Account()
        for amount in (5, 10, 20, 40):
            account.deposit(amount)
        print((account.balance, account.history))
    ''', "(75, [5, 10, 20, 40])", 10,
        "Account.deposit() is not forked, its calls run in the caller: line 10: "
        "`self.balance += amount` changes `self`"),
    "nonlocal": ('''\
        from autofork import implicit_fork

        def total(xs):
            n = 0

            @implicit_fork
            def step(x):
                nonlocal n
                n += x

            for x in xs:
                step(x)
            return n

        print(total(range(5)))
    ''', "10", 9, "total.<locals>.step() is not forked, its calls run in the caller: "
        "line 9: `nonlocal n` then `n += x` changes `n` of an enclosing function"),
    "random": ('''\
        import random
        from autofork import implicit_fork

        @implicit_fork
        def noisy(x):
            return x + random.random()

        random.seed(7)
        print([round(noisy(i), 6) for i in range(4)])
    ''', None, 6, "`random.random()` uses the global `random` generator"),
    "numpy random": ('''\
        import numpy as np
        from autofork import implicit_fork

        @implicit_fork
        def noisy(x):
            return x + float(np.random.rand())

        np.random.seed(7)
        print([round(noisy(i), 6) for i in range(4)])
    ''', None, 6, "`np.random.rand()` uses the global `numpy.random` generator"),
    "callee": ('''\
        from autofork import implicit_fork

        def put(table, key, value):
            table[key] = value

        @implicit_fork
        def fill(table, key):
            put(table, key, key * 2)

        table = {}
        for k in range(3):
            fill(table, k)
        print(table)
    ''', "{0: 0, 1: 2, 2: 4}", 8, "`put(table, key, key * 2)` calls put(), where line 4"),
    "working directory": ('''\
        import os
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def enter(name):
            os.makedirs(name, exist_ok=True)
            os.chdir(name)
            return sum(i * i for i in range(200_000))

        evaluate(fork(abs, 1))   # workers are up: every call could go to one
        start = os.getcwd()
        sums = [enter(f"d{i}") for i in range(3)]
        print(os.path.relpath(os.getcwd(), start))
    ''', os.path.join("d0", "d1", "d2"), 7, "`os.chdir()` changes the working directory"),
    "exit handler": ('''\
        import atexit
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def job(x):
            atexit.register(print, "cleaning up after", x)
            return sum(i * i for i in range(200_000)) % 7

        evaluate(fork(abs, 1))   # workers are up: every call could go to one
        print([job(x) for x in range(4)])
    ''', "[5, 5, 5, 5]\n" + "\n".join(f"cleaning up after {x}" for x in (3, 2, 1, 0)), 6,
        "`atexit.register()` changes the exit handlers of the process"),
    "element of an argument": ('''\
        from autofork import implicit_fork

        @implicit_fork
        def sort_rows(rows):
            for row in rows:
                row.sort()

        rows = [[3, 1], [2, 0]]
        sort_rows(rows)
        print(rows)
    ''', "[[1, 3], [0, 2]]", 6, "`row.sort(...)` changes the argument `rows`"),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", list(EFFECT_SCRIPTS))
def test_effect_script_gives_the_same_output_and_warns_once(tmp_path: Path, kind: str) -> None:
    source, expected, line, text = EFFECT_SCRIPTS[kind]
    ours = same_output(tmp_path, source)
    if expected is not None:
        assert ours.stdout.strip() == expected
    warnings = [w for w in ours.stderr.splitlines() if "AutoforkWarning" in w]
    assert len(warnings) == 1, ours.stderr
    assert f"script.py:{line}: AutoforkWarning: " in warnings[0]
    assert text in warnings[0]


@pytest.mark.timeout(180)
def test_a_function_that_ends_the_process_ends_the_program_as_it_did(tmp_path: Path) -> None:
    source = '''\
        import os
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def check(x):
            total = sum(i * i for i in range(200_000))
            if x == 3:
                print("giving up at", x, flush=True)
                os._exit(5)
            return total % 7

        evaluate(fork(abs, 1))   # workers are up: every call could go to one
        print([check(x) for x in range(6)])
    '''
    plain = run(tmp_path, source, autofork=False)
    ours = run(tmp_path, source)
    assert plain.returncode == 5 and plain.stdout == "giving up at 3\n", plain
    assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout), ours.stderr
    assert "WorkerCrashed" not in ours.stderr
    assert "script.py:9: AutoforkWarning: check() is not forked" in ours.stderr


@pytest.mark.timeout(180)
def test_a_function_that_reads_the_standard_input_reads_the_programs(tmp_path: Path) -> None:
    source = '''\
        import sys
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def ask(x):
            total = sum(i * i for i in range(200_000))
            return x, sys.stdin.readline().strip(), total % 7

        evaluate(fork(abs, 1))   # workers are up: every call could go to one
        print([ask(x) for x in range(3)])
    '''
    plain = run(tmp_path, source, autofork=False, stdin="a\nb\nc\n")
    ours = run(tmp_path, source, stdin="a\nb\nc\n")
    assert "'a'" in plain.stdout and "'c'" in plain.stdout, plain
    assert (ours.returncode, ours.stdout) == (plain.returncode, plain.stdout), ours.stderr
    assert "script.py:7: AutoforkWarning: ask() is not forked" in ours.stderr
    assert "`sys.stdin` reads the standard input" in ours.stderr


PARALLEL = '''\
    import logging, math, os, sys, time
    from autofork import implicit_fork
    SCALE = 3
    log = logging.getLogger("work")

    @implicit_fork
    def build(x):
        time.sleep(0.1)
        out = []
        table = {}
        for i in range(x):
            out.append(i * SCALE)
            table[i] = math.sqrt(i)
        return out, len(table), os.getpid()

    @implicit_fork
    def write_own(path, x):
        time.sleep(0.1)
        with open(path, "w") as f:
            f.write(str(x))
        print("wrote", x)
        log.info("wrote %s", x)
        return os.getpid()

    from autofork import evaluate, fork
    evaluate(fork(abs, 1))  # workers are up (before, a waiting caller may run the calls)
    results = [build(n) for n in range(6)]
    pids = [r[2] for r in results] + [write_own(f"f{n}.txt", n) for n in range(6)]
    print([r[:2] for r in results])
    print(sorted(open(f"f{n}.txt").read() for n in range(6)))
    others = {p for p in pids if p != os.getpid()}
    print("OTHER PROCESSES", len(others) > 0, file=sys.stderr)
'''


@pytest.mark.timeout(180)
def test_functions_without_effects_still_run_in_other_processes(tmp_path: Path) -> None:
    plain = run(tmp_path, PARALLEL, autofork=False)
    ours = run(tmp_path, PARALLEL, "--workers", "2")
    assert plain.returncode == 0 and ours.returncode == 0, ours.stderr
    assert ours.stdout == plain.stdout     # "wrote" lines carried back in call order
    assert "OTHER PROCESSES False" in plain.stderr
    assert "OTHER PROCESSES True" in ours.stderr
    assert "is not forked" not in ours.stderr


HELPERS = '''\
    from autofork import implicit_fork

    @implicit_fork
    def add(out, x):
        out.append(x)
'''
MAIN = '''\
    import helpers
    from autofork import implicit_fork

    @implicit_fork
    def keep(seen, x):
        seen[x] = True

    out, seen = [], {}
    for i in range(4):
        helpers.add(out, i)
        keep(seen, i)
    print(out, sorted(seen))
'''


@pytest.mark.timeout(180)
def test_the_warning_comes_from_the_cache_too_and_across_modules(tmp_path: Path) -> None:
    (tmp_path / "helpers.py").write_text(textwrap.dedent(HELPERS))
    env = {"PYTHONDONTWRITEBYTECODE": ""}
    first = run(tmp_path, MAIN, env=env)
    cached = list((tmp_path / "__pycache__").glob("helpers.*autofork*.pyc"))
    assert cached, "the rewrite of helpers.py was cached"
    second = run(tmp_path, MAIN, env=env)
    for done in (first, second):
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[0, 1, 2, 3] [0, 1, 2, 3]"
        assert done.stderr.count("add() is not forked") == 1, done.stderr
        assert "helpers.py:5: AutoforkWarning" in done.stderr
        assert done.stderr.count("keep() is not forked") == 1, done.stderr
        assert "script.py:6: AutoforkWarning" in done.stderr


def test_diff_and_stats_show_the_effect(tmp_path: Path) -> None:
    source = EFFECT_SCRIPTS["argument"][0]
    diff = run(tmp_path, source, "--diff")
    assert diff.returncode == 0, diff.stderr
    assert "add_square() is not forked" in diff.stdout
    assert "return the new list instead of appending to `out`" in diff.stdout
    stats = run(tmp_path, source, "--stats")
    assert stats.returncode == 0, stats.stderr
    assert "add_square" in stats.stderr and "kept plain" in stats.stderr
    assert "script.py:5: add_square() is not forked" in stats.stderr


@pytest.mark.timeout(120)
def test_trust_effects_works_without_autofork_and_forks_with_it(tmp_path: Path) -> None:
    source = '''\
        import os, sys, time
        from autofork import implicit_fork, trust_effects

        @implicit_fork
        @trust_effects
        def tag(out, x):
            time.sleep(0.1)
            out.append(x)
            return os.getpid()

        from autofork import evaluate, fork
        evaluate(fork(abs, 1))  # workers are up (before, a waiting caller may run a call)
        out = []
        pids = [tag(out, i) for i in range(6)]
        print(sorted(out) if len(out) == 6 else "caller saw no appends")
        print("OTHER PROCESSES", any(p != os.getpid() for p in pids), file=sys.stderr)
    '''
    plain = run(tmp_path, source, autofork=False)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == "[0, 1, 2, 3, 4, 5]"
    ours = run(tmp_path, source, "--workers", "2")
    assert ours.returncode == 0, ours.stderr
    assert "OTHER PROCESSES True" in ours.stderr     # the user's word: forked anyway
    assert "is not forked" not in ours.stderr


# ------------------------------------------------------------------------- property

KINDS = {
    "argument": ("def f{i}(out, x):\n    out.append(x * {k})\n    return len(out)", "out{i} = []",
                 "r{i} = [f{i}(out{i}, x) for x in range(3)]", "print(r{i}, out{i})"),
    "global": ("def f{i}(x):\n    G{i}['n'] += x * {k}\n    return G{i}['n']", "G{i} = {{'n': 0}}",
               "r{i} = [f{i}(x) for x in range(3)]", "print(r{i}, G{i})"),
    "random": ("def f{i}(x):\n    return round(random.random() * {k} + x, 6)", "random.seed({k})",
               "r{i} = [f{i}(x) for x in range(3)]", "print(r{i})"),
    "pure": ("def f{i}(x):\n    ys = [x] * {k}\n    ys.append(x)\n    return sum(ys)", "",
             "r{i} = [f{i}(x) for x in range(3)]", "print(r{i})"),
    "self": ("class C{i}:\n    def __init__(self):\n        self.n = 0\n"
             "    @implicit_fork\n    def f(self, x):\n        self.n += x * {k}\n        return self.n",
             "c{i} = C{i}()", "r{i} = [c{i}.f(x) for x in range(3)]", "print(r{i}, c{i}.n)"),
}


@st.composite
def programs(draw: st.DrawFn) -> str:
    chosen = draw(st.lists(st.sampled_from(sorted(KINDS)), min_size=1, max_size=4))
    parts = ["import random", "from autofork import implicit_fork"]
    setup, calls, prints = [], [], []
    for i, kind in enumerate(chosen):
        k = draw(st.integers(1, 9))
        define, init, call, show = (t.format(i=i, k=k) for t in KINDS[kind])
        parts.append(define if kind == "self" else "@implicit_fork\n" + define)
        setup.append(init)
        calls.append(call)
        prints.append(show)
    return "\n\n".join(parts) + "\n\n" + "\n".join([*setup, *calls, *prints]) + "\n"


@pytest.mark.timeout(300)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(program=programs())
def test_generated_programs_print_the_same_under_autofork(tmp_path: Path, program: str) -> None:
    plain = run(tmp_path, program, autofork=False)
    ours = run(tmp_path, program)
    assert plain.returncode == 0, plain.stderr
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == plain.stdout, program


def test_the_line_is_the_effects_own_also_after_a_def_in_a_string() -> None:
    out = rewritten('''\
        TEXT = """
        def add(out, x):
            out.append(y)
        """

        @implicit_fork
        def add(out, x):
            y = x + 1
            out.append(y)
    ''')
    assert kept_plain(out) == [("add", 10)]


def test_effects_hidden_by_the_loop_rewrites_are_still_seen_when_rewriting_again() -> None:
    out = rewritten('''\
        @implicit_fork
        def square(x):
            parts = [x]           # a new list holding an argument: changing it is no effect
            parts.append(x)
            return x * x

        @implicit_fork
        def fill(out, xs):
            for x in xs:
                out.append(square(x))

        @implicit_fork
        def total(totals, xs):
            for x in xs:
                totals.update(square(x))

        fill([], range(3))
        total({}, range(3))
    ''')
    assert "into(out).append" in out and "then(totals.update" in out
    assert [name for name, _ in kept_plain(out)] == ["fill", "total"]
    assert forked(out, "square")
