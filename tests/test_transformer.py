"""autofork.transformer: golden before/after rewrites, decisions, line numbers, and
rewritten code executed with the real runtime.

Golden tests show whole modules: ``check(before, after)`` also checks that rewriting
``after`` again changes nothing and that ``after`` compiles with the original's lines;
``unchanged(before)`` checks that the very same ``str`` comes back.
"""

from __future__ import annotations

import ast
import os
import sys
import textwrap
import time
import traceback
import types
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import pytest

from autofork.transformer import (compile_rewritten, marked_functions, needs_rewrite, parse_rewritten,
                                  rewrite)

Table = Mapping[str, Mapping[str, str]]


class Recorder:
    """A resolver over a table that remembers which modules it was asked about."""

    def __init__(self, table: Optional[Table] = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    def __call__(self, module: str) -> Optional[Mapping[str, str]]:
        self.asked.append(module)
        return self.table.get(module)


def check(before: str, after: str, resolver: Optional[Table] = None, package: Optional[str] = None,
          module: str = "m") -> None:
    got = rewrite(before, module, Recorder(resolver), package)
    assert got == after
    again = rewrite(after, module, Recorder(resolver), package)
    assert again == after, "rewriting rewritten code must change nothing"
    compile_rewritten(before, after, f"{module}.py")


def unchanged(before: str, resolver: Optional[Table] = None, package: Optional[str] = None,
              module: str = "m") -> None:
    assert rewrite(before, module, Recorder(resolver), package) is before


def load(source: str, name: str, tmp_path: Path, resolver: Optional[Table] = None) -> types.ModuleType:
    """Rewrite, compile and execute ``source`` as module ``name`` (a real file, for tracebacks)."""
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    rewritten = rewrite(source, name, Recorder(resolver), filename=str(path))
    code = compile_rewritten(source, rewritten, str(path))
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(code, module.__dict__)
    return module


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


# ----------------------------------------------------------------------- decisions


def test_marked_functions_kinds_and_aliases() -> None:
    source = textwrap.dedent('''\
        import autofork as af
        from autofork import implicit_fork, io_bound, cpu_bound_fork as cpu
        from autofork import io_bound_fork

        @implicit_fork
        def a(): pass

        @io_bound
        @implicit_fork
        def b(): pass

        @implicit_fork
        @io_bound
        def c(): pass

        @af.implicit_fork
        def d(): pass

        @cpu
        def e(): pass

        @io_bound_fork
        async def f(): pass

        @implicit_fork
        def gen():
            yield 1

        @implicit_fork
        def rebound(): pass
        rebound = None

        def plain(): pass

        class K:
            @implicit_fork
            def method(self): pass
    ''')
    assert marked_functions(source) == {"a": "cpu", "b": "io", "c": "io", "d": "cpu", "e": "cpu", "f": "io"}


def test_marked_functions_cheap_exits() -> None:
    assert marked_functions("def f(): pass\n") == {}
    assert marked_functions("implicit_fork = (\n") == {}   # unparsable
    assert marked_functions("def implicit_fork(f): return f\n@implicit_fork\ndef g(): pass\n") == {}


def test_needs_rewrite_asks_only_about_imported_modules() -> None:
    resolver = Recorder({"helpers": {"work": "cpu"}})
    source = "import os\nfrom helpers import other\nx = os.getcwd()\n"
    assert needs_rewrite(source, "m", resolver) is False
    assert sorted(set(resolver.asked)) == ["helpers", "os"]
    assert needs_rewrite("from helpers import work\n", "m", resolver) is True
    assert needs_rewrite("import helpers\n", "m", resolver) is True


def test_needs_rewrite_without_imports_asks_nothing() -> None:
    resolver = Recorder()
    assert needs_rewrite("x = 1\nprint(x)\n", "m", resolver) is False
    assert resolver.asked == []


def test_needs_rewrite_marks_and_relative_imports() -> None:
    resolver = Recorder({"pkg.helpers": {"work": "io"}, "pkg.sub": {"task": "cpu"}, "pkg": {}})
    assert needs_rewrite("from autofork import implicit_fork\n@implicit_fork\ndef f(): pass\n", "m",
                         resolver)
    assert needs_rewrite("from .helpers import work\n", "pkg.mod", resolver, "pkg")
    assert needs_rewrite("from . import sub\nsub.task()\n", "pkg.mod", resolver, "pkg")
    assert not needs_rewrite("from . import sub\n", "pkg.mod", resolver, "pkg")
    assert not needs_rewrite("from .helpers import work\n", "m", resolver)   # no package
    assert not needs_rewrite("from autofork import implicit_fork\n", "m", resolver)
    assert not needs_rewrite("from autofork import implicit_fork\n(", "m", resolver)


def test_the_cheap_test_never_imports_libcst() -> None:
    import subprocess

    script = textwrap.dedent('''\
        import sys
        from autofork import transformer
        resolver = {"helpers": {"other": "cpu"}}.get
        source = "import os\\nfrom helpers import thing\\nprint(os.sep)  # implicit_fork\\n"
        assert not transformer.needs_rewrite(source, "m", resolver)
        assert transformer.rewrite(source, "m", resolver) is source
        assert transformer.marked_functions("from autofork import implicit_fork\\n") == {}
        print("libcst" in sys.modules)
    ''')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_rewrite_returns_the_same_object_when_nothing_to_do() -> None:
    for source in ("x = 1\n", "import os\nos.getcwd()\n", "# implicit_fork\nimport json\n",
                   "from autofork import implicit_fork\n\n@implicit_fork\ndef f(): pass\n"):
        assert rewrite(source, "m", Recorder()) is source


def test_syntax_error_is_pythons_own() -> None:
    source = "from autofork import implicit_fork\n\n@implicit_fork\ndef f(:\n    pass\n"
    with pytest.raises(SyntaxError) as expected:
        compile(source, "bad.py", "exec", dont_inherit=True)
    with pytest.raises(SyntaxError) as got:
        rewrite(source, "bad", Recorder(), filename="bad.py")
    assert (got.value.msg, got.value.lineno, got.value.offset, got.value.filename) == (
        expected.value.msg, expected.value.lineno, expected.value.offset, "bad.py")
    assert needs_rewrite(source, "bad", Recorder()) is False   # the hook compiles it plainly


def test_syntax_error_in_an_importing_module() -> None:
    source = "import helpers\nhelpers.work(1\n"
    with pytest.raises(SyntaxError) as got:
        rewrite(source, "bad", Recorder({"helpers": {"work": "cpu"}}), filename="bad.py")
    assert got.value.lineno == 2 and got.value.filename == "bad.py"


# ---------------------------------------------------------------------- line numbers

RAISING = '''\
"""A module whose lines must survive the rewrite."""
from autofork import implicit_fork


@implicit_fork
def work(x):
    return x


def boom(items):
    """Raise on a known line, below inserted with-lines."""
    for item in items:
        work(item)
    total = work(1)
    if total is None:
        return None
    raise ValueError("boom")  # line 17


class Thing:
    def method(self, items):
        for item in items:
            work(item)
        return items[99]  # line 24
'''


def test_tracebacks_point_at_original_lines(tmp_path: Path) -> None:
    module = load(RAISING, "raising_mod", tmp_path)
    rewritten = rewrite(RAISING, "raising_mod", Recorder())
    assert rewritten.count("\n") > RAISING.count("\n"), "the test needs inserted lines"
    with pytest.raises(ValueError) as info:
        module.boom([])
    frame = traceback.extract_tb(info.value.__traceback__)[-1]
    assert (frame.lineno, frame.name, frame.line) == (17, "boom", 'raise ValueError("boom")  # line 17')
    with pytest.raises(IndexError) as info2:
        module.Thing().method([])
    assert traceback.extract_tb(info2.value.__traceback__)[-1].lineno == 24


def test_code_object_lines_are_the_originals() -> None:
    rewritten = rewrite(RAISING, "raising_mod", Recorder())
    original = {(c.co_name, c.co_firstlineno) for c in code_objects(compile(RAISING, "r.py", "exec"))}
    remapped = list(code_objects(compile_rewritten(RAISING, rewritten, "r.py")))
    assert original == {(c.co_name, c.co_firstlineno) for c in remapped}
    original_lines = {line for c in code_objects(compile(RAISING, "r.py", "exec"))
                      for _, _, line in c.co_lines() if line is not None}
    remapped_lines = {line for c in remapped for _, _, line in c.co_lines() if line is not None}
    assert remapped_lines <= original_lines
    if sys.version_info < (3, 11):
        return  # code objects have no positions beyond lines before 3.11
    original_starts = {start for c in code_objects(compile(RAISING, "r.py", "exec"))
                       for start, _, _, _ in c.co_positions()}
    for c in remapped:
        for start, end, _, _ in c.co_positions():
            assert start is None or start in original_starts   # 0: CPython's, for RESUME
            assert start is None or end is None or start <= end <= RAISING.count("\n")


def test_reindented_lines_keep_their_columns() -> None:
    rewritten = rewrite(RAISING, "raising_mod", Recorder())
    tree = ast.parse(rewritten)
    code = compile_rewritten(RAISING, rewritten, "r.py")
    boom = next(c for c in code_objects(code) if c.co_name == "boom")
    raise_line = RAISING.splitlines()[16]
    nodes = ast.walk(parse_rewritten(RAISING, rewritten, "r.py"))
    assert (17, raise_line.index("ValueError")) in {
        (n.lineno, n.col_offset) for n in nodes if getattr(n, "lineno", None) == 17}
    if sys.version_info >= (3, 11):  # code objects carry columns since 3.11
        columns = {(start, col) for start, _, col, _ in boom.co_positions() if start == 17}
        assert (17, raise_line.index("ValueError")) in columns
    assert tree.body, "the rewritten text parses"


def test_changed_lines_keep_their_columns() -> None:
    source = textwrap.dedent('''\
        from autofork import implicit_fork

        @implicit_fork
        def work(x):
            return x

        def main(items, boom):
            for i in items:
                work(i)
            y = work(1) + boom() + work(2)
            return y is None
    ''')
    rewritten = rewrite(source, "m", Recorder())
    assert "_autofork_rt.fork(work, 1) + boom() + _autofork_rt.fork(work, 2)" in rewritten

    def spans(code: types.CodeType, line: int) -> set[tuple[int, int]]:
        main = next(c for c in code_objects(code) if c.co_name == "main")
        return {(col, end) for start, _, col, end in main.co_positions()
                if start == line and col is not None and end is not None}

    line = source.splitlines()[9]
    boom = (line.index("boom()"), line.index("boom()") + len("boom()"))
    nodes = ast.walk(parse_rewritten(source, rewritten, "m.py"))
    assert boom in {(n.col_offset, n.end_col_offset) for n in nodes
                    if isinstance(n, ast.Call) and n.lineno == 10}
    if sys.version_info < (3, 11):
        return  # code objects carry columns since 3.11
    assert boom in spans(compile(source, "m.py", "exec"), 10)
    assert boom in spans(compile_rewritten(source, rewritten, "m.py"), 10)
    assert all(end <= len(line) for _, end in spans(compile_rewritten(source, rewritten, "m.py"), 10))


# -------------------------------------------------------------------- generator marks


GENERATOR = '''\
from autofork import implicit_fork


@implicit_fork
def numbers(n):
    yield from range(n)


def total():
    return sum(numbers(4))
'''


def test_generator_mark_warns_and_runs_plainly(tmp_path: Path) -> None:
    from autofork.runtime.errors import AutoforkWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = load(GENERATOR, "gen_mod", tmp_path)
    ours = [w for w in caught if issubclass(w.category, AutoforkWarning)]
    assert len(ours) == 1
    assert "numbers()" in str(ours[0].message) and "generator" in str(ours[0].message)
    assert (ours[0].filename, ours[0].lineno) == (str(tmp_path / "gen_mod.py"), 5)
    assert module.total() == 6
    assert "fork(numbers" not in rewrite(GENERATOR, "gen_mod", Recorder())


# ------------------------------------------------------------ executed with the runtime

PROGRAM = '''\
import os
import time
from autofork import implicit_fork, io_bound_fork


@io_bound_fork
def save(path, text):
    time.sleep(0.3)
    with open(path, "w") as fh:
        fh.write(text)


@io_bound_fork
def square(x):
    return x * x


@io_bound_fork
def fail(x):
    raise ValueError(f"bad {x}")


@implicit_fork
def cube(x):
    return x ** 3


def find(x):
    return None if x < 0 else x


@io_bound_fork
def maybe(x):
    return find(x)


def main(folder):
    started = time.perf_counter()
    for i in range(6):
        save(os.path.join(folder, f"{i}.txt"), str(i))
    elapsed = time.perf_counter() - started
    results = []
    for i in range(5):
        results.append(square(i))
    try:
        fail(1)
        caught = None
    except ValueError as exc:
        caught = str(exc)
    missing = maybe(-1)
    found = maybe(3)
    return (elapsed, results, caught, missing is None, found is None, type(found).__name__,
            cube(3) + 1)


def loses(folder):
    for i in range(3):
        fail(i)
'''


def test_rewritten_program_runs_in_parallel_with_sequential_meaning(tmp_path: Path) -> None:
    module = load(PROGRAM, "program_mod", tmp_path)
    folder = tmp_path / "out"
    folder.mkdir()
    elapsed, results, caught, missing_is_none, found_is_none, found_type, cube = module.main(str(folder))
    assert sorted(os.listdir(folder)) == [f"{i}.txt" for i in range(6)]
    assert all((folder / f"{i}.txt").read_text() == str(i) for i in range(6))
    assert elapsed < 6 * 0.3 * 0.75, f"six 0.3 s saves took {elapsed:.2f} s: not parallel"
    assert repr(results) == "[0, 1, 4, 9, 16]"
    assert caught == "bad 1"
    assert (missing_is_none, found_is_none, found_type) == (True, False, "int")
    assert cube == 28
    with pytest.raises(ValueError, match="bad 0"):   # the first failure in call order
        module.loses(str(folder))


def test_module_level_loop_joins_before_the_module_finishes(tmp_path: Path) -> None:
    source = textwrap.dedent(f'''\
        """Module-level discarded forks."""
        from __future__ import annotations
        import time
        from autofork import io_bound_fork

        @io_bound_fork
        def touch(path):
            time.sleep(0.1)
            open(path, "w").close()

        for i in range(4):
            touch({str(tmp_path)!r} + f"/f{{i}}")
        DONE = sorted(__import__("os").listdir({str(tmp_path)!r}))
    ''')
    module = load(source, "toplevel_mod", tmp_path)
    assert [n for n in module.DONE if n.startswith("f")] == ["f0", "f1", "f2", "f3"]


# --------------------------------------------------------------------------- golden


def test_value_uses() -> None:
    """Value-producing calls become lazy forks; a value handed to an unmarked call is
    unwrapped there; a loop joins its value forks and settles the list it fills."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    a = work(1)
    print(work(2), key=work(3))
    results = []
    for item in items:
        results.append(work(item))
    return work(a)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    a = _autofork_rt.fork(work, 1)
    print(_autofork_rt.unwrap(_autofork_rt.fork(work, 2)), key=_autofork_rt.unwrap(_autofork_rt.fork(work, 3)))
    results = []
    with _autofork_rt.Joiner() as _autofork_j1:
        for item in items:
            _autofork_j1.into(results).append(_autofork_j1.fork(work, item))
    return _autofork_rt.fork(work, a)
""",
    )


def test_loop_discard() -> None:
    """A discarded call in a loop: the Joiner wraps the loop."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    for item in items:
        if item:
            work(item)
    print("done")
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    with _autofork_rt.Joiner() as _autofork_j1:
        for item in items:
            if item:
                _autofork_j1.fork(work, item)
    print("done")
""",
    )


def test_nested_loops() -> None:
    """Nested loops: the Joiner wraps the outermost one."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(rows):
    total = 0
    for row in rows:
        while row:
            work(row.pop())
    return total
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(rows):
    total = 0
    with _autofork_rt.Joiner() as _autofork_j1:
        for row in rows:
            while row:
                _autofork_j1.fork(work, row.pop())
    return total
""",
    )


def test_rest_of_body() -> None:
    """No loop: the Joiner wraps the rest of the function body, returns included."""
    check(
        '''\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main():
    """Doc."""
    x = 1
    work(x)
    if x:
        return work(2)
    return x
''',
        '''\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main():
    """Doc."""
    x = 1
    with _autofork_rt.Joiner() as _autofork_j1:
        _autofork_j1.fork(work, x)
        if x:
            return _autofork_rt.fork(work, 2)
        return x
''',
    )


def test_try_body() -> None:
    """A try body is joined before it ends (a loop inside keeps its own Joiner); a discarded call in an except clause belongs to the function."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    try:
        work(0)
        for item in items:
            work(item)
    except ValueError:
        work(-1)
    finally:
        print("end")
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    with _autofork_rt.Joiner() as _autofork_j3:
        try:
            with _autofork_rt.Joiner() as _autofork_j1:
                _autofork_j1.fork(work, 0)
                with _autofork_rt.Joiner() as _autofork_j2:
                    for item in items:
                        _autofork_j2.fork(work, item)
        except ValueError:
            _autofork_j3.fork(work, -1)
        finally:
            print("end")
""",
    )


def test_with_body() -> None:
    """A with body is joined before the context manager exits."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(path, items):
    with open(path) as fh:
        for item in items:
            work(item)
        work(fh)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(path, items):
    with open(path) as fh:
        with _autofork_rt.Joiner() as _autofork_j1:
            for item in items:
                _autofork_j1.fork(work, item)
        with _autofork_rt.Joiner() as _autofork_j2:
            _autofork_j2.fork(work, fh)
""",
    )


def test_module_level() -> None:
    """Module level: the import joins the __future__ line; loop and rest-of-module Joiners."""
    check(
        '''\
"""Module doc."""
from __future__ import annotations

import os
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

for name in os.listdir("."):
    work(name)
work("last")
print("end")
''',
        '''\
"""Module doc."""
from __future__ import annotations; from autofork.runtime import implicit as _autofork_rt

import os
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

with _autofork_rt.Joiner() as _autofork_j1:
    for name in os.listdir("."):
        _autofork_j1.fork(work, name)
with _autofork_rt.Joiner() as _autofork_j2:
    _autofork_j2.fork(work, "last")
    print("end")
''',
    )


def test_module_level_first_compound() -> None:
    """The import is prepended to the first statement line, after a comment; `as par` alias of the mark."""
    check(
        """\
# a comment
from autofork import implicit_fork as par

@par
def work(x):
    return x

x = work(1)
""",
        """\
# a comment
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork as par

@par
def work(x):
    return x

x = _autofork_rt.fork(work, 1)
""",
    )


def test_shadowing() -> None:
    """Locally shadowed names, strings and comments are never rewritten."""
    unchanged(
        '''\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def by_param(work):
    work(1)

def by_assign():
    work = print
    work(1)

def by_for(fs):
    for work in fs:
        work(1)

def by_comp(fs):
    return [work(1) for work in fs]

def by_def():
    def work(x):
        return x
    work(1)

def by_import():
    from os import path as work
    work(1)

def by_except():
    try:
        pass
    except Exception as work:
        work(1)

def by_with(cm):
    with cm as work:
        work(1)

def by_walrus(f):
    if (work := f):
        work(1)

def by_lambda():
    return lambda work: work(1)

def by_del():
    del work

def by_global_free_def():
    global other
    def work(y):
        return y
    return work(2)

print("work(1)")  # work(1)
s = """work(1)"""
''',
    )


def test_module_rebinding() -> None:
    """A module-level rebinding of the marked name disables its rewriting everywhere."""
    unchanged(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

def main():
    return work(1)

if True:
    work = print
""",
    )


def test_unmarked() -> None:
    """Unmarked functions, @io_bound alone (not called: a call warns, see
    test_a_label_only_mark_called_directly_gets_a_warning_prelude) and other decorators:
    nothing changes."""
    unchanged(
        """\
from autofork import implicit_fork, io_bound
import functools

@io_bound
def only_io(x):
    return x

@functools.lru_cache
def cached(x):
    return x

def implicit_fork_lookalike():
    pass

def main():
    print(only_io)
    cached(2)
    return implicit_fork_lookalike()
""",
    )


def test_not_autofork_mark() -> None:
    """A decorator named implicit_fork that is not autofork's is not a mark."""
    unchanged(
        """\
def implicit_fork(f):
    return f

@implicit_fork
def work(x):
    return x

work(1)
""",
    )


def test_other_module_same_name() -> None:
    """Same names from modules that do not mark them, attribute calls on objects, unimported names."""
    unchanged(
        """\
import other
from elsewhere import work

def main(obj):
    other.work(1)
    work(2)
    obj.work(3)
    return helpers.work(4)
""", resolver={'other': {}, 'elsewhere': {}, 'helpers': {'work': 'cpu'}},
    )


def test_mark_aliases() -> None:
    """Marks spelled as autofork.implicit_fork, af.implicit_fork, `as par`, the combined forms, and @io_bound stacked."""
    check(
        """\
import autofork
import autofork as af
from autofork import cpu_bound_fork, io_bound_fork, io_bound
from autofork import implicit_fork as par

@autofork.implicit_fork
def a(x):
    return x

@af.implicit_fork
@af.io_bound
def b(x):
    return x

@par
def c(x):
    return x

@cpu_bound_fork
def d(x):
    return x

@io_bound
@par
def e(x):
    return x

def main():
    return a(1), b(2), c(3), d(4), e(5), io_bound_fork
""",
        """\
from autofork.runtime import implicit as _autofork_rt; import autofork
import autofork as af
from autofork import cpu_bound_fork, io_bound_fork, io_bound
from autofork import implicit_fork as par

@autofork.implicit_fork
def a(x):
    return x

@af.implicit_fork
@af.io_bound
def b(x):
    return x

@par
def c(x):
    return x

@cpu_bound_fork
def d(x):
    return x

@io_bound
@par
def e(x):
    return x

def main():
    return _autofork_rt.fork(a, 1), _autofork_rt.fork(b, 2), _autofork_rt.fork(c, 3), _autofork_rt.fork(d, 4), _autofork_rt.fork(e, 5), io_bound_fork
""",
    )


def test_imports() -> None:
    """from-imports, aliases, `import m`, `import m as mm`, dotted submodules."""
    check(
        """\
from helpers import work, plain
from helpers import work as w
import helpers
import helpers as h
import pkg.sub
import pkg.sub as ps

def main(x):
    r = [work(x), w(x), helpers.work(x), h.work(x), pkg.sub.task(x), ps.task(x)]
    plain(x)
    helpers.plain(x)
    return r
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from helpers import work, plain
from helpers import work as w
import helpers
import helpers as h
import pkg.sub
import pkg.sub as ps

def main(x):
    r = _autofork_rt.settle([_autofork_rt.fork(work, x), _autofork_rt.fork(w, x), _autofork_rt.fork(helpers.work, x), _autofork_rt.fork(h.work, x), _autofork_rt.fork(pkg.sub.task, x), _autofork_rt.fork(ps.task, x)])
    plain(x)
    helpers.plain(x)
    return r
""", resolver={'helpers': {'work': 'cpu'}, 'pkg.sub': {'task': 'io'}, 'pkg': {}},
    )


def test_relative_imports() -> None:
    """Relative imports resolved with the package, a submodule imported with `from . import sub`."""
    check(
        """\
from .helpers import work
from . import sub
from .. import top

def main(x):
    return work(x), sub.task(x), top.thing(x), sub.plain(x)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from .helpers import work
from . import sub
from .. import top

def main(x):
    return _autofork_rt.fork(work, x), _autofork_rt.fork(sub.task, x), _autofork_rt.fork(top.thing, x), sub.plain(x)
""", resolver={'app.pkg.helpers': {'work': 'cpu'}, 'app.pkg.sub': {'task': 'io'}, 'app.top': {'thing': 'cpu'}, 'app.pkg': {}, 'app': {}}, package='app.pkg', module='app.pkg.mod',
    )


def test_methods() -> None:
    """self.m(...) on the same class (also in a closure); not on other objects, staticmethods or a rebound self."""
    check(
        """\
from autofork import implicit_fork

class Worker:
    @implicit_fork
    def step(self, x):
        return x

    def plain(self, x):
        return x

    def run(self, items):
        out = [self.step(i) for i in items]
        for i in items:
            self.step(i)
        other = Worker()
        other.step(1)
        self.plain(2)
        return out

    @staticmethod
    def helper(self):
        return self.step(1)

    def rebinds(self):
        self = Worker()
        return self.step(1)

    def nested(self):
        def inner():
            return self.step(2)
        return inner
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

class Worker:
    @implicit_fork
    def step(self, x):
        return x

    def plain(self, x):
        return x

    def run(self, items):
        out = _autofork_rt.settle([_autofork_rt.fork(self.step, i) for i in items])
        with _autofork_rt.Joiner() as _autofork_j1:
            for i in items:
                _autofork_j1.fork(self.step, i)
        other = Worker()
        other.step(1)
        self.plain(2)
        return out

    @staticmethod
    def helper(self):
        return self.step(1)

    def rebinds(self):
        self = Worker()
        return self.step(1)

    def nested(self):
        def inner():
            return _autofork_rt.fork(self.step, 2)
        return inner
""",
    )


def test_recursion() -> None:
    """Recursive calls and nested marked functions."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)

def outer():
    @implicit_fork
    def inner(k):
        return k
    return inner(1)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def fib(n):
    if n < 2:
        return n
    return _autofork_rt.fork_recursive(fib, n - 1) + _autofork_rt.fork_recursive(fib, n - 2)

def outer():
    @implicit_fork
    def inner(k):
        return k
    return _autofork_rt.fork(inner, 1)
""",
    )


def test_unwrap() -> None:
    """Names bound to a fork meet is / is not / type() / id() unwrapped; a shadowed `type`
    is any other call, whose arguments are unwrapped too."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    r = work(x)
    q: int = work(x)
    plain = x
    if r is None or r is not q:
        pass
    print(type(r), id(q), type(plain), r is plain, None is r)
    if (s := work(1)) is None:
        pass
    return type(r) == int

def shadowed_type(x):
    type = len
    r = work(x)
    return type(r)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    r = _autofork_rt.fork(work, x)
    q: int = _autofork_rt.fork(work, x)
    plain = x
    if _autofork_rt.unwrap(r) is None or _autofork_rt.unwrap(r) is not _autofork_rt.unwrap(q):
        pass
    print(type(_autofork_rt.unwrap(r)), id(_autofork_rt.unwrap(q)), type(plain), _autofork_rt.unwrap(r) is plain, None is _autofork_rt.unwrap(r))
    if (s := work(1)) is None:
        pass
    return type(_autofork_rt.unwrap(r)) == int

def shadowed_type(x):
    type = len
    r = _autofork_rt.fork(work, x)
    return type(_autofork_rt.unwrap(r))
""",
    )


def test_generator_mark() -> None:
    """A marked generator or async generator: a warning at import, its calls stay plain."""
    check(
        '''\
"""Doc."""
from autofork import implicit_fork

@implicit_fork
def gen(n):
    yield n

@implicit_fork
async def agen(n):
    yield n

def main():
    return list(gen(3)), agen(1)
''',
        '''\
"""Doc."""; import warnings as _autofork_warnings; from autofork.runtime.errors import AutoforkWarning as _autofork_Warning; _autofork_warnings.warn_explicit('gen() at line 5 of m is a generator function marked @implicit_fork: a generator cannot be forked, so its calls run plainly', _autofork_Warning, globals().get('__file__') or 'm', 5, __name__); _autofork_warnings.warn_explicit('agen() at line 9 of m is a generator function marked @implicit_fork: a generator cannot be forked, so its calls run plainly', _autofork_Warning, globals().get('__file__') or 'm', 9, __name__)
from autofork import implicit_fork

@implicit_fork
def gen(n):
    yield n

@implicit_fork
async def agen(n):
    yield n

def main():
    return list(gen(3)), agen(1)
''',
    )


def test_async_marked() -> None:
    """async def: value calls fork (awaitable proxy); an awaited call and a dropped coroutine stay plain."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
async def fetch(url):
    return url

async def main(urls):
    pending = [fetch(u) for u in urls]
    first = await fetch(urls[0])
    fetch("dropped")
    return pending, first
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
async def fetch(url):
    return url

async def main(urls):
    pending = [_autofork_rt.fork(fetch, u) for u in urls]
    first = await fetch(urls[0])
    fetch("dropped")
    return pending, first
""",
    )


def test_lambda_and_comprehensions() -> None:
    """Lambdas and comprehensions fork lazily; a comprehension statement joins its calls."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    f = lambda i: work(i)
    squares = {i: work(i) for i in items}
    gen = (work(i) for i in items)
    [work(i) for i in items]
    {work(i) for i in items}
    return f, squares, gen
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    f = lambda i: _autofork_rt.fork(work, i)
    squares = _autofork_rt.settle({i: _autofork_rt.fork(work, i) for i in items})
    gen = (_autofork_rt.fork(work, i) for i in items)
    with _autofork_rt.Joiner() as _autofork_j1:
        [_autofork_j1.fork(work, i) for i in items]
        {_autofork_j1.fork(work, i) for i in items}
        return f, squares, gen
""",
    )


def test_star_args() -> None:
    """*args / **kwargs pass through; a multi-line call keeps its line count."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(args, kwargs):
    a = work(*args, **kwargs)
    work(
        *args,
        **kwargs,
    )
    return a, work()
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(args, kwargs):
    a = _autofork_rt.fork(work, *args, **kwargs)
    with _autofork_rt.Joiner() as _autofork_j1:
        _autofork_j1.fork(
            work, *args,
            **kwargs,
        )
        return a, _autofork_rt.fork(work)
""",
    )


def test_match() -> None:
    """A match subject is unwrapped, or left plain when it is the call itself."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    r = work(x)
    match r:
        case None:
            pass
    match work(x):
        case [a, b]:
            work(a)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    r = _autofork_rt.fork(work, x)
    match _autofork_rt.unwrap(r):
        case None:
            pass
    with _autofork_rt.Joiner() as _autofork_j1:
        match work(x):
            case [a, b]:
                _autofork_j1.fork(work, a)
""",
    )


def test_class_body() -> None:
    """A class body forks values, but a discarded call stays plain (the Joiner name would become an attribute)."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


class Config:
    value = work(1)
    work(2)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


class Config:
    value = _autofork_rt.fork(work, 1)
    work(2)
""",
    )


def test_name_clash() -> None:
    """Inserted names avoid the module's own _autofork_* names."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


_autofork_rt = "mine"
_autofork_j1 = "mine too"

def main(items):
    for i in items:
        work(i)
""",
        """\
from autofork.runtime import implicit as _autofork_rt_2; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


_autofork_rt = "mine"
_autofork_j1 = "mine too"

def main(items):
    with _autofork_rt_2.Joiner() as _autofork_j1_2:
        for i in items:
            _autofork_j1_2.fork(work, i)
""",
    )


def test_suites() -> None:
    """One-line bodies are opened into blocks when they need a Joiner."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def one(): work(1)

def two(items):
    for i in items: work(i)

def three(cm):
    with cm: work(3)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def one():
    with _autofork_rt.Joiner() as _autofork_j1:
        _autofork_j1.fork(work, 1)

def two(items):
    with _autofork_rt.Joiner() as _autofork_j2:
        for i in items: _autofork_j2.fork(work, i)

def three(cm):
    with cm:
        with _autofork_rt.Joiner() as _autofork_j3:
            _autofork_j3.fork(work, 3)
""",
    )


def test_try_value_is_joined_inside_the_body() -> None:
    """A value call in a try or with body is forked through the body's Joiner, which
    finishes it before the body ends: the same except clause sees its exception, and the
    name it was bound to holds again what it held before (``bind``/``finally``)."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    try:
        r = work(x)
    except ValueError:
        r = None
    with open(x) as fh:
        data = work(fh)
    return r, data
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x):
    try:
        try:  # autofork: names as before a call that failed
            with _autofork_rt.Joiner() as _autofork_j1:
                r = _autofork_j1.bind('r', _autofork_j1.fork(work, x))
        finally:  # autofork: names as before a call that failed
            if _autofork_j1.rebinds('r'): r = _autofork_j1.was('r')
            if _autofork_j1.unbinds('r'): del r
    except ValueError:
        r = None
    with open(x) as fh:
        try:  # autofork: names as before a call that failed
            with _autofork_rt.Joiner() as _autofork_j2:
                data = _autofork_j2.bind('data', _autofork_j2.fork(work, fh))
        finally:  # autofork: names as before a call that failed
            if _autofork_j2.rebinds('data'): data = _autofork_j2.was('data')
            if _autofork_j2.unbinds('data'): del data
    return r, data
""",
    )


def test_names_bound_from_forks_in_a_try_loop_are_rebound_after_a_failure() -> None:
    """In a loop in a try body, the fills and the reduction stay as they were (parallel);
    the names bound from forks go through ``bind`` and are rebound in a ``finally``."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def f(x):
    return x

out, d, total, last = [], {}, 0, None
try:
    for i in range(9):
        out.append(f(i))
        d[i] = f(i)
        total += f(i)
        last = f(i)
        first = second = last + 1
except ValueError:
    pass
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def f(x):
    return x

out, d, total, last = [], {}, 0, None
try:
    try:  # autofork: names as before a call that failed
        with _autofork_rt.Joiner() as _autofork_j1:
            for i in range(9):
                _autofork_j1.into(out).append(_autofork_j1.fork(f, i))
                _autofork_j1.into(d)[i] = _autofork_j1.fork(f, i)
                total = _autofork_j1.fold(total, '+=', _autofork_j1.fork(f, i))
                last = _autofork_j1.bind('last', _autofork_j1.fork(f, i))
                first = second = _autofork_j1.bind('first', _autofork_j1.bind('second', last + 1))
    finally:  # autofork: names as before a call that failed
        if _autofork_j1.rebinds('last'): last = _autofork_j1.was('last')
        if _autofork_j1.unbinds('last'): del last
        if _autofork_j1.rebinds('first'): first = _autofork_j1.was('first')
        if _autofork_j1.unbinds('first'): del first
        if _autofork_j1.rebinds('second'): second = _autofork_j1.was('second')
        if _autofork_j1.unbinds('second'): del second
except ValueError:
    pass
""",
    )


def test_a_loop_after_a_value_fork_in_a_try_keeps_its_names_for_the_body() -> None:
    """The loop's joiner comes from the body's (``inner``), which keeps the loop's names as
    they were before it: a failure of ``f(3)`` rebinds them too."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def f(x):
    return x

try:
    a = f(3)
    for x in range(3):
        r = f(x)
except ValueError:
    pass
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def f(x):
    return x

try:
    try:  # autofork: names as before a call that failed
        with _autofork_rt.Joiner() as _autofork_j1:
            a = _autofork_j1.bind('a', _autofork_j1.fork(f, 3))
            try:  # autofork: names as before a call that failed
                with _autofork_j1.inner('r') as _autofork_j2:
                    for x in range(3):
                        r = _autofork_j2.bind('r', _autofork_j2.fork(f, x))
            finally:  # autofork: names as before a call that failed
                if _autofork_j2.rebinds('r'): r = _autofork_j2.was('r')
                if _autofork_j2.unbinds('r'): del r
    finally:  # autofork: names as before a call that failed
        if _autofork_j1.rebinds('a'): a = _autofork_j1.was('a')
        if _autofork_j1.unbinds('a'): del a
        if _autofork_j1.rebinds('r'): r = _autofork_j1.was('r')
        if _autofork_j1.unbinds('r'): del r
except ValueError:
    pass
""",
    )


def test_pending_results_are_settled_before_a_try_that_reads_them() -> None:
    """SPEC 4b: a value fork not settled yet, read in the body of a try with handlers,
    is settled just before the try (its failure raised outside it, as sequentially);
    not for a try without handlers, nor for names read only in ``else``."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def check(i):
    return i

r = check(3)
s = check(1)
t = s * 2
try:
    print(r + t)
except ValueError as e:
    print("caught", e)
try:
    print(r)
finally:
    print("no handler: nothing to settle")
try:
    pass
except ValueError:
    pass
else:
    print(s)  # not caught by the clauses above: nothing to settle
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def check(i):
    return i

r = _autofork_rt.fork(check, 3)
s = _autofork_rt.fork(check, 1)
t = s * 2
_autofork_rt.settle_names('r', 't')
try:
    print(_autofork_rt.unwrap(r + t))
except ValueError as e:
    print("caught", e)
try:
    print(_autofork_rt.unwrap(r))
finally:
    print("no handler: nothing to settle")
try:
    pass
except ValueError:
    pass
else:
    print(_autofork_rt.unwrap(s))  # not caught by the clauses above: nothing to settle
""",
    )


def test_pending_results_are_settled_before_a_with_and_in_loops() -> None:
    """A with body (its context manager may suppress) is treated as a try; a fork joined
    by a loop still running at the try is settled there, one whose loop has ended or
    that the try's own body joins is not."""
    check(
        """\
import contextlib
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    for item in items:
        joined = work(item)
    r = work(0)
    work(-1)
    with contextlib.suppress(ValueError):
        print(r)
    for item in items:
        v = work(item)
        # v: its loop is still running; joined: its loop has ended
        try:
            print(v, joined)
        except ValueError:
            pass
    try:
        t = work(2)
        print(t)
    except ValueError:
        pass
""",
        """\
from autofork.runtime import implicit as _autofork_rt; import contextlib
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    with _autofork_rt.Joiner() as _autofork_j1:
        for item in items:
            joined = _autofork_j1.fork(work, item)
    r = _autofork_rt.fork(work, 0)
    with _autofork_rt.Joiner() as _autofork_j2:
        _autofork_j2.fork(work, -1)
        _autofork_rt.settle_names('r')
        with contextlib.suppress(ValueError):
            print(_autofork_rt.unwrap(r))
        with _autofork_rt.Joiner() as _autofork_j3:
            for item in items:
                v = _autofork_j3.fork(work, item)
                # v: its loop is still running; joined: its loop has ended
                _autofork_rt.settle_names('v')
                try:
                    print(_autofork_rt.unwrap(v), _autofork_rt.unwrap(joined))
                except ValueError:
                    pass
        try:
            try:  # autofork: names as before a call that failed
                with _autofork_rt.Joiner() as _autofork_j4:
                    t = _autofork_j4.bind('t', _autofork_j4.fork(work, 2))
                    print(_autofork_rt.unwrap(t))
            finally:  # autofork: names as before a call that failed
                if _autofork_j4.rebinds('t'): t = _autofork_j4.was('t')
                if _autofork_j4.unbinds('t'): del t
        except ValueError:
            pass
""",
    )


@pytest.mark.skipif(sys.version_info < (3, 11), reason="try/except* is Python 3.11 syntax")
def test_pending_results_are_settled_before_try_star() -> None:
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

r = work(1)
try:
    print(r)
except* ValueError:
    pass
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

r = _autofork_rt.fork(work, 1)
_autofork_rt.settle_names('r')
try:
    print(_autofork_rt.unwrap(r))
except* ValueError:
    pass
""",
    )


SETTLED = """\
import time
from autofork import io_bound_fork

@io_bound_fork
def check(i):
    time.sleep(0.05)
    if i == 3:
        raise ValueError(f"bad {i}")
    return i

def straight():
    r = check(3)
    s = check(1)
    try:
        return r + s
    except ValueError:
        return "caught inside"

def maybe(flag):
    if flag:
        r = check(1)
    try:
        return r
    except NameError:
        return "unbound"
"""


def test_a_failure_settled_before_a_try_escapes_it_at_the_try_line(tmp_path: Path) -> None:
    module = load(SETTLED, "settled", tmp_path)
    with pytest.raises(ValueError, match="bad 3") as caught:
        module.straight()
    entries = traceback.extract_tb(caught.value.__traceback__)
    straight = [(e.lineno, e.line) for e in entries if e.name == "straight"]
    assert straight[0] == (14, "try:")           # raised just before the try, at its line
    assert (12, "r = check(3)") in straight      # then the fork's call site
    assert module.maybe(False) == "unbound"      # a name not bound yet is left to the body
    assert module.maybe(True) == 1


def test_global_rebinding() -> None:
    """A `global` rebinding in another function disables the rewriting."""
    unchanged(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def patch():
    global work
    work = print

def main():
    return work(1)
""",
    )


def test_nonlocal() -> None:
    """A nonlocal rebinding disables the rewriting of that closure only."""
    check(
        """\
from autofork import implicit_fork

def outer():
    @implicit_fork
    def inner(x):
        return x
    def rebinder():
        nonlocal inner
        inner = print
    return inner(1)

def outer2():
    @implicit_fork
    def inner(x):
        return x
    def user():
        return inner(1)
    return user
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

def outer():
    @implicit_fork
    def inner(x):
        return x
    def rebinder():
        nonlocal inner
        inner = print
    return inner(1)

def outer2():
    @implicit_fork
    def inner(x):
        return x
    def user():
        return _autofork_rt.fork(inner, 1)
    return user
""",
    )


def test_star_import() -> None:
    """Names from a star import of a marking module; a def after every star import is not shadowed."""
    check(
        """\
from helpers import *
from autofork import *

@implicit_fork
def mine(x):
    return x

def main():
    return work(1), mine(2), other(3)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from helpers import *
from autofork import *

@implicit_fork
def mine(x):
    return x

def main():
    return _autofork_rt.fork(work, 1), _autofork_rt.fork(mine, 2), other(3)
""", resolver={'helpers': {'work': 'cpu'}},
    )


def test_class_scope_name() -> None:
    """A class attribute shadows the marked name in the class body only, not in its methods."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

class A:
    work = staticmethod(print)
    def m(self):
        return work(1)
    value = work(2)
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x

class A:
    work = staticmethod(print)
    def m(self):
        return _autofork_rt.fork(work, 1)
    value = work(2)
""",
    )


def test_is_direct_calls() -> None:
    """A call directly under is / type() / id() stays plain; a name bound through `if`/`or` is unwrapped."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x, c):
    if work(x) is None or (s := work(x)) is not None:
        pass
    print(type(work(x)), id(work(x) or 0))
    r = work(x) if c else None
    t = c and work(x)
    return r is None, t is None
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(x, c):
    if work(x) is None or (s := work(x)) is not None:
        pass
    print(type(work(x)), id(work(x) or 0))
    r = _autofork_rt.fork(work, x) if c else None
    t = c and _autofork_rt.fork(work, x)
    return _autofork_rt.unwrap(r) is None, _autofork_rt.unwrap(t) is None
""",
    )


def test_star_import_after() -> None:
    """A star import after the marked def may shadow it: left plain."""
    unchanged(
        """\
from autofork import implicit_fork

@implicit_fork
def mine(x):
    return x

from helpers import *

def main():
    return mine(2)
""", resolver={'helpers': {'work': 'cpu'}},
    )


def test_prelude_new_line() -> None:
    """The first statement is compound: the import goes on a line of its own."""
    check(
        """\
if __name__ == "__main__":
    import helpers
    helpers.work(1)
""",
        """\
from autofork.runtime import implicit as _autofork_rt
with _autofork_rt.Joiner() as _autofork_j1:
    if __name__ == "__main__":
        import helpers
        _autofork_j1.fork(helpers.work, 1)
""", resolver={'helpers': {'work': 'io'}},
    )


def test_value_forks_in_a_try_body_run_in_parallel_and_fail_into_its_except(tmp_path: Path) -> None:
    module = load(
        """\
import os, time
from autofork import io_bound_fork

@io_bound_fork
def slow(x):
    time.sleep(0.2)
    if x == 3:
        raise KeyError(x)
    return x

def main():
    began = time.perf_counter()
    try:
        results = []
        for i in range(6):
            results.append(slow(i))
    except KeyError as error:
        return "caught", error.args, time.perf_counter() - began
    return "not caught", None, 0
""",
        "try_values",
        tmp_path,
    )
    outcome, args, seconds = module.main()
    assert (outcome, args) == ("caught", (3,))
    assert seconds < 0.8  # six calls of 0.2 s ran side by side, not one after another


def test_loop_rules() -> None:
    """Issue 9: a loop joins its value forks too; the containers it fills are registered
    with its joiner (``into``); reductions whose accumulator the loop does not otherwise
    read become ``fold``/``then`` steps; a fork's value handed to an unmarked call is
    unwrapped (a list built in the loop: settled); a comprehension or display of forks
    given to unmarked code is settled; calls in a lambda or a generator stay lazy."""
    check(
        """\
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def stores(items, table, out):
    results, pairs = [], []
    for item in items:
        results.append(work(item))
        value = work(item)
        pairs.insert(0, (item, value))
        table[item] = work(item)
        table.setdefault("all", []).append(work(item))
        out += [work(item)]
        rows = [work(i) for i in item]
        print(value, rows)
    return results, pairs, table, value


def reductions(items, counter, seen, text, busy):
    total = 0
    for item in items:
        total += work(item)
        counter.update(work(item))
        seen.add(work(item))
        text = text + work(item)
        busy += work(item)
        if busy:
            pass
    return total, counter, seen, text, busy


def later(items, klass):
    for item in items:
        callbacks = [lambda: work(item)]
        lazy = (work(i) for i in item)
    return ",".join([work(1), work(2)]), sum(work(i) for i in items), callbacks, lazy
""",
        """\
from autofork.runtime import implicit as _autofork_rt; from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def stores(items, table, out):
    results, pairs = [], []
    with _autofork_rt.Joiner() as _autofork_j1:
        for item in items:
            _autofork_j1.into(results).append(_autofork_j1.fork(work, item))
            value = _autofork_j1.fork(work, item)
            _autofork_j1.into(pairs).insert(0, (item, value))
            _autofork_j1.into(table)[item] = _autofork_j1.fork(work, item)
            _autofork_j1.into(table.setdefault("all", [])).append(_autofork_j1.fork(work, item))
            out += _autofork_j1.into(out, [_autofork_j1.fork(work, item)])
            rows = _autofork_j1.into([_autofork_j1.fork(work, i) for i in item])
            print(_autofork_rt.unwrap(value), _autofork_rt.settle(rows))
    return results, pairs, table, value


def reductions(items, counter, seen, text, busy):
    total = 0
    with _autofork_rt.Joiner() as _autofork_j2:
        for item in items:
            total = _autofork_j2.fold(total, '+=', _autofork_j2.fork(work, item))
            _autofork_j2.then(counter.update, _autofork_j2.fork(work, item))
            _autofork_j2.then(seen.add, _autofork_j2.fork(work, item))
            text = _autofork_j2.fold(text, '+', _autofork_j2.fork(work, item))
            busy += _autofork_j2.fork(work, item)
            if busy:
                pass
    return total, counter, seen, text, busy


def later(items, klass):
    for item in items:
        callbacks = [lambda: _autofork_rt.fork(work, item)]
        lazy = (_autofork_rt.fork(work, i) for i in item)
    return ",".join(_autofork_rt.settle([_autofork_rt.fork(work, 1), _autofork_rt.fork(work, 2)])), sum(_autofork_rt.fork(work, i) for i in items), callbacks, lazy
""",
    )


def test_a_label_only_mark_called_directly_gets_a_warning_prelude() -> None:
    """@io_bound/@cpu_bound only label a function for fork(): a direct call gets a warning
    (once per function, inserted like the generator warnings); fork(f, x) gets nothing."""
    source = """\
from autofork import fork, io_bound

@io_bound
def fetch(url):
    return url

print(fetch("a"), fetch("b"))
"""
    assert needs_rewrite(source, "m", Recorder())
    rewritten = rewrite(source, "m", Recorder())
    assert rewritten.count("warn_explicit(") == 1
    assert "fetch() at line 4 of m is marked only @io_bound" in rewritten
    assert "@io_bound_fork" in rewritten and 'print(fetch("a"), fetch("b"))' in rewritten
    assert rewrite(rewritten, "m", Recorder()) == rewritten
    explicit = source.replace('print(fetch("a"), fetch("b"))', 'print(fork(fetch, "a"))')
    assert not needs_rewrite(explicit, "m", Recorder())
    unchanged(explicit)


def test_displays_and_lists_read_in_their_loop() -> None:
    """A display of forks bound to a name outside a loop is settled there (a bare tuple
    gets parentheses); in a loop a tuple is left alone (waiting would serialize the
    loop); a list the loop fills, handed to an unmarked call in the loop, is settled."""
    check(
        """\
import json
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    pair = (1, work(1))
    a, b = work(2), work(3)
    results = []
    for item in items:
        results.append(work(item))
        pair = (item, work(item))
        print(json.dumps(results))
    return pair, a, b
""",
        """\
from autofork.runtime import implicit as _autofork_rt; import json
from autofork import implicit_fork

@implicit_fork
def work(x):
    return x


def main(items):
    pair = _autofork_rt.settle((1, _autofork_rt.fork(work, 1)))
    a, b = _autofork_rt.settle((_autofork_rt.fork(work, 2), _autofork_rt.fork(work, 3)))
    results = []
    with _autofork_rt.Joiner() as _autofork_j1:
        for item in items:
            _autofork_j1.into(results).append(_autofork_j1.fork(work, item))
            pair = (item, _autofork_j1.fork(work, item))
            print(json.dumps(_autofork_rt.settle(results)))
    return pair, a, b
""",
    )


def test_the_walk_skips_every_operator_node_as_a_leaf() -> None:
    """The table of leaves (nodes the walk never enters) holds every operator class of
    libcst, found by the MRO rather than by the slow ABC ``issubclass``."""
    import libcst

    from autofork import transformer

    transformer._libcst()
    bases = (libcst.BaseBinaryOp, libcst.BaseBooleanOp, libcst.BaseCompOp, libcst.BaseUnaryOp,
             libcst.BaseAugOp)
    operators = {obj for obj in vars(libcst).values()
                 if isinstance(obj, type) and issubclass(obj, bases)}
    assert len(operators) > 40 and operators <= transformer._LEAVES
    assert libcst.Call not in transformer._LEAVES and libcst.Name in transformer._LEAVES
