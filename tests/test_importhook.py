"""The import hook: its decisions in this process, its cache across real runs."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import marshal
import os
import py_compile
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from types import CodeType, ModuleType
from typing import Iterator

import pytest

from autofork import importhook
from autofork.importhook import AutoforkLoader, ImportHook, Rules

ROOT = Path(__file__).resolve().parent.parent

MARKED = """
    from autofork import implicit_fork

    VALUE = 1

    @implicit_fork
    def work(x):
        return x + VALUE

    def caller(items):
        results = []
        for item in items:
            results.append(work(item))
        return results
"""


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(textwrap.dedent(text).lstrip("\n").encode(encoding))
    importlib.invalidate_caches()
    return path


class Modules:
    """Unique module names in a temporary directory on sys.path, forgotten afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefix = f"af_{uuid.uuid4().hex[:8]}_"

    def write(self, name: str, text: str, encoding: str = "utf-8") -> tuple[str, Path]:
        full = self.prefix + name
        parts = full.split(".")
        path = self.root.joinpath(*parts[:-1], parts[-1] + ".py")
        return full, write(path, text, encoding)

    def fresh_import(self, name: str) -> ModuleType:
        for loaded in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[loaded]
        return importlib.import_module(name)


def plain_function(path: Path, name: str) -> CodeType:
    """The code plain Python compiles for the top-level function ``name`` of ``path``."""
    plain = compile(path.read_text(), str(path), "exec")
    return next(c for c in plain.co_consts if getattr(c, "co_name", "") == name)


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Modules]:
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("AUTOFORK", raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    made = Modules(tmp_path)
    try:
        yield made
    finally:
        for name in [n for n in sys.modules if n.startswith(made.prefix)]:
            del sys.modules[name]


@pytest.fixture
def hook(modules: Modules) -> Iterator[ImportHook]:
    with ImportHook(Rules()) as installed:
        yield installed


def test_a_module_without_marks_is_left_to_the_normal_loader(modules: Modules, hook: ImportHook,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    name, path = modules.write("plain", "def f(x):\n    return x + 1\n")
    module = modules.fresh_import(name)
    assert type(module.__loader__) is importlib.machinery.SourceFileLoader
    # Its normal pyc: under the suite's typeguard, whose loader patches importlib's
    # cache_from_source process-wide while it runs, the name may carry typeguard's
    # optimization tag instead (x.cpython-311.opt-typeguard461.pyc); never autofork's.
    cached = Path(module.__spec__.cached).name
    assert cached.startswith(Path(importlib.util.cache_from_source(str(path))).name[:-4])
    assert "autofork" not in cached
    # The answer "needs no rewrite" is cached (no code in it), so the next run does not
    # parse the module again.
    answer = Path(importhook.cache_path(str(path))).read_bytes()
    assert answer.endswith(marshal.dumps(None))
    with caplog.at_level(logging.DEBUG, logger="autofork.importhook"):
        again = modules.fresh_import(name)
    assert f"not rewritten {name} (cached answer)" in caplog.text
    assert type(again.__loader__) is importlib.machinery.SourceFileLoader


def test_a_marked_module_is_rewritten_with_its_lines_kept(modules: Modules, hook: ImportHook) -> None:
    name, path = modules.write("marked", MARKED)
    module = modules.fresh_import(name)
    assert isinstance(module.__loader__, AutoforkLoader)
    plain = compile(path.read_text(), str(path), "exec")
    plain_caller = next(c for c in plain.co_consts if getattr(c, "co_name", "") == "caller")
    rewritten = module.caller.__code__
    assert rewritten.co_filename == str(path)
    assert rewritten.co_firstlineno == plain_caller.co_firstlineno
    lines = {line for _, _, line in rewritten.co_lines() if line is not None}
    assert max(lines) == max(line for _, _, line in plain_caller.co_lines() if line is not None)
    assert hook.resolved[name] is not None


def test_autofork_0_rewrites_nothing(modules: Modules, hook: ImportHook,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOFORK", "0")
    name, _ = modules.write("off", MARKED)
    assert type(modules.fresh_import(name).__loader__) is importlib.machinery.SourceFileLoader


def test_the_cache_is_a_checked_hash_pyc_and_is_used(modules: Modules, hook: ImportHook,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    name, path = modules.write("cached", MARKED)
    modules.fresh_import(name)
    pyc = Path(importhook.cache_path(str(path)))
    assert re.fullmatch(r"af_\w+_cached\.cpython-\d+\.autofork-.+\.pyc", pyc.name)
    header = pyc.read_bytes()[:16]
    assert header[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(header[4:8], "little") == 0b11  # hash-based, checked
    assert header[8:] == importlib.util.source_hash(path.read_bytes())
    first = modules.fresh_import(name).caller.__code__
    with caplog.at_level(logging.DEBUG, logger="autofork.importhook"):
        module = modules.fresh_import(name)
    assert f"cache hit {name}" in caplog.text
    assert isinstance(module.__loader__, AutoforkLoader)
    cached = module.caller.__code__
    assert cached.co_code == first.co_code and cached.co_names == first.co_names
    assert cached.co_code != plain_function(path, "caller").co_code  # the rewrite, cached


def test_an_edit_within_the_same_second_is_seen(modules: Modules, hook: ImportHook) -> None:
    name, path = modules.write("edited", MARKED)
    assert modules.fresh_import(name).VALUE == 1
    stat = path.stat()
    path.write_text(path.read_text().replace("VALUE = 1", "VALUE = 2"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    assert modules.fresh_import(name).VALUE == 2


def test_under_dont_write_bytecode_the_cache_is_in_the_cache_dir(
        modules: Modules, hook: ImportHook, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setenv("AUTOFORK_CACHE_DIR", str(tmp_path / "cache"))
    name, path = modules.write("nowrite", MARKED)
    assert isinstance(modules.fresh_import(name).__loader__, AutoforkLoader)
    pyc = Path(importhook.cache_path(str(path)))
    # PYTHONPYCACHEPREFIX's layout: the source's absolute directory below the prefix.
    assert pyc.parent == tmp_path / "cache" / str(path.parent).lstrip(os.sep)
    assert pyc.is_file() and pyc.name.startswith(f"{name}.{sys.implementation.cache_tag}.")
    assert not (path.parent / "__pycache__").exists()  # nothing beside the sources
    with caplog.at_level(logging.DEBUG, logger="autofork.importhook"):
        assert isinstance(modules.fresh_import(name).__loader__, AutoforkLoader)
    assert f"cache hit {name}" in caplog.text


def test_the_cache_dir_falls_back_to_xdg_then_home(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.delenv("AUTOFORK_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert importhook.cache_dir() == str(tmp_path / "xdg" / "autofork")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # ignored, as the XDG spec says
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert importhook.cache_dir() == str(tmp_path / "home" / ".cache" / "autofork")
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert importhook.cache_dir() is None  # beside the sources


def test_autofork_cache_0_reads_and_writes_nothing(modules: Modules, hook: ImportHook,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    name, path = modules.write("uncached", MARKED)
    modules.fresh_import(name)
    pyc = Path(importhook.cache_path(str(path)))
    old = pyc.read_bytes()  # a cache that is valid for this source
    monkeypatch.setenv("AUTOFORK_CACHE", "0")
    assert importhook.cache_path(str(path)) is None
    with caplog.at_level(logging.DEBUG, logger="autofork.importhook"):
        assert isinstance(modules.fresh_import(name).__loader__, AutoforkLoader)
    assert f"rewrote {name}" in caplog.text and "cache hit" not in caplog.text  # not read
    path.write_text(path.read_text().replace("VALUE = 1", "VALUE = 2"))
    module = modules.fresh_import(name)
    assert module.VALUE == 2 and isinstance(module.__loader__, AutoforkLoader)
    assert pyc.read_bytes() == old  # nor written


def test_a_failed_cache_write_costs_nothing_but_speed(modules: Modules, hook: ImportHook,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    name, path = modules.write("readonly", MARKED)
    (path.parent / "__pycache__").write_text("a file where the directory should be")
    module = modules.fresh_import(name)
    assert isinstance(module.__loader__, AutoforkLoader)
    assert module.caller.__code__.co_code != plain_function(path, "caller").co_code
    assert (path.parent / "__pycache__").read_text() == "a file where the directory should be"


def test_a_rewriter_failure_loads_the_module_untransformed_with_a_warning(
        modules: Modules, hook: ImportHook, monkeypatch: pytest.MonkeyPatch) -> None:
    from autofork import transformer
    from autofork.runtime.errors import AutoforkWarning

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("a bug in the rewriter")

    monkeypatch.setattr(transformer, "rewrite", broken)
    name, path = modules.write("unlucky", MARKED)
    with pytest.warns(AutoforkWarning, match=re.escape(str(path))):
        module = modules.fresh_import(name)
    assert module.caller([1, 2]) == [2, 3]  # the plain code: no forks
    assert not Path(importhook.cache_path(str(path))).exists()


def test_source_encodings_are_honoured(modules: Modules, hook: ImportHook) -> None:
    name, _ = modules.write("latin", "# -*- coding: latin-1 -*-\nWORD = 'café'\n" + textwrap.dedent(MARKED),
                            encoding="latin-1")
    module = modules.fresh_import(name)
    assert isinstance(module.__loader__, AutoforkLoader)
    assert module.WORD == "café"


def test_the_resolver_finds_marks_without_importing(modules: Modules) -> None:
    modules.write("pkg.__init__", "raise RuntimeError('imported!')\n")
    name, _ = modules.write("pkg.sub", MARKED)
    record: dict[str, importhook.Dependency] = {}
    resolve = importhook.make_resolver(record=record)
    assert resolve(name) == {"work": "cpu"}
    assert resolve(modules.prefix + "pkg.missing") is None
    assert resolve("json") == {}
    assert modules.prefix + "pkg" not in sys.modules
    assert record[name][2] == (("work", "cpu"),)


def test_concurrent_imports_from_threads(modules: Modules, hook: ImportHook) -> None:
    names = [modules.write(f"threaded{i}", MARKED)[0] for i in range(6)]
    loaded: dict[str, ModuleType] = {}
    errors: list[BaseException] = []

    def load(name: str) -> None:
        try:
            loaded[name] = importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(isinstance(loaded[name].__loader__, AutoforkLoader) for name in names)


@pytest.mark.parametrize("name, origin, expected", [
    ("mine", "/home/u/project/mine.py", True),
    ("json", os.path.join(os.path.dirname(os.__file__), "json", "__init__.py"), False),
    ("numpy", "/venv/lib/python3.11/site-packages/numpy/__init__.py", False),
    ("six", "/usr/lib/python3/dist-packages/six.py", False),
    ("autofork.transformer", "/src/autofork/transformer.py", False),
])
def test_default_rules(name: str, origin: str, expected: bool) -> None:
    assert Rules().wants(name, origin) is expected


def test_include_and_exclude_patterns() -> None:
    rules = Rules(include=importhook.parse_patterns("numpy," + os.pathsep.join(["lib.*_gen", "/opt/x/*.py"])),
                  exclude=importhook.parse_patterns(["numpy.testing", "/home/u/project/generated"]))
    site = "/venv/lib/python3.11/site-packages/"
    assert rules.wants("numpy.linalg", site + "numpy/linalg/__init__.py")
    assert not rules.wants("numpy.testing.x", site + "numpy/testing/x.py")  # exclude wins
    assert not rules.wants("numpyx", site + "numpyx.py")  # a prefix of names, not of text
    assert rules.wants("lib.a_gen", site + "lib/a_gen.py")
    assert rules.wants("anything", "/opt/x/deep/er.py")
    assert not rules.wants("mine", "/home/u/project/generated/mine.py")
    assert rules.wants("mine", "/home/u/project/mine.py")
    assert rules.skips_name("json") and not Rules(include=("json",)).skips_name("json.decoder")
    assert Rules(only=("pkg",)).skips_name("other") and not Rules(only=("pkg",)).skips_name("pkg.sub")


# ------------------------------------------------------------ the cache across real runs


@pytest.mark.timeout(90)
def test_the_cache_across_runs_and_what_invalidates_it(tmp_path: Path) -> None:
    write(tmp_path / "helper.py", """
        from autofork import implicit_fork

        @implicit_fork
        def work(x):
            return x + 1

        def other(x):
            return x - 1
    """)
    write(tmp_path / "mid.py", """
        from helper import work, other
        VALUE = 1

        def run():
            results = []
            for i in range(2):
                results.append(work(i))
            return [int(r) for r in results], other(0), VALUE
    """)
    write(tmp_path / "main.py", """
        import logging
        logging.basicConfig(level=logging.DEBUG, format="LOG %(name)s %(message)s")
        import mid
        print(mid.run())
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOFORK")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # these machines set it; the cache respects it
    env["AUTOFORK_BACKEND"] = "sequential"  # rewritten all the same; no pool to start

    def run(autofork_from: Path | None = None) -> tuple[str, str]:
        changed = {"PYTHONPATH": str(autofork_from)} if autofork_from else {}
        done = subprocess.run([sys.executable, "-m", "autofork", "main.py"], cwd=tmp_path,
                              env={**env, **changed}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        hook_log = " ".join(re.findall(r"LOG autofork\.importhook (\w+(?: \w+)?) mid\b", done.stderr))
        return done.stdout.strip(), hook_log

    assert run() == ("([1, 2], -1, 1)", "rewrote")
    [pyc] = (tmp_path / "__pycache__").glob("mid.*.autofork-*.pyc")
    written = pyc.stat().st_mtime_ns
    old_bytes = pyc.read_bytes()
    assert run() == ("([1, 2], -1, 1)", "cache hit")
    assert pyc.stat().st_mtime_ns == written

    source = tmp_path / "mid.py"
    with open(pyc, "rb") as reader:  # a reader that opened the old file ...
        source.write_text(source.read_text().replace("VALUE = 1", "VALUE = 2"))  # same size
        assert run() == ("([1, 2], -1, 2)", "rewrote")
        assert reader.read() == old_bytes  # ... reads it whole: the new one replaced it
    assert pyc.read_bytes() != old_bytes
    assert [p.name for p in pyc.parent.iterdir() if "mid." in p.name] == [pyc.name]  # no temp left

    helper = tmp_path / "helper.py"
    helper.write_text(helper.read_text().replace("x - 1", "x - 2"))  # its marks unchanged
    assert run() == ("([1, 2], -2, 2)", "cache hit")

    helper.write_text(helper.read_text().replace("def other", "@implicit_fork\ndef other"))
    assert run() == ("([1, 2], -2, 2)", "rewrote")
    assert run() == ("([1, 2], -2, 2)", "cache hit")

    # Another autofork (its rewriter's source changed, its version not): rewrite again.
    changed = tmp_path / "changed"
    shutil.copytree(ROOT / "autofork", changed / "autofork",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(changed / "autofork" / "transformer.py", "a") as rewriter:
        rewriter.write("\n# a change of the rewriter\n")
    assert run(autofork_from=changed) == ("([1, 2], -2, 2)", "rewrote")

    # The dependency's source is deleted (a sourceless helper.pyc stays importable): its
    # marks are unknown now, so mid's calls of them are no longer rewritten.
    py_compile.compile(str(helper), cfile=str(tmp_path / "helper.pyc"), doraise=True)
    helper.unlink()
    assert run(autofork_from=changed) == ("([1, 2], -2, 2)", "not rewritten")


def test_a_rewritten_module_is_tested_for_marks_once(modules: Modules, hook: ImportHook,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The finder's cheap test (an ast parse) said yes: the loader does not make it again."""
    from autofork import transformer

    asked: list[str] = []
    original = transformer.needs_rewrite

    def counting(source: str, module_name: str, *args: object) -> bool:
        asked.append(module_name)
        return original(source, module_name, *args)

    monkeypatch.setattr(transformer, "needs_rewrite", counting)
    name, _ = modules.write("once", MARKED)
    module = modules.fresh_import(name)
    assert isinstance(module.__loader__, AutoforkLoader)
    assert asked.count(name) == 1


def test_a_library_package_s_submodules_are_skipped_by_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A submodule whose package lives in site-packages is decided from the package's
    ``__path__``: no finder search, no read (``import pandas`` loads ~500 of them).  An
    ``include`` pattern still takes it back."""
    site_dir = tmp_path / "site-packages"
    package = f"libpkg_{uuid.uuid4().hex[:8]}"
    write(site_dir / package / "__init__.py", "")
    write(site_dir / package / "sub.py", MARKED)
    monkeypatch.syspath_prepend(str(site_dir))
    monkeypatch.delenv("AUTOFORK", raising=False)
    searched: list[str] = []
    original = importhook._ask_finders

    def counting(name: str, path: object) -> object:
        searched.append(name)
        return original(name, path)  # type: ignore[arg-type]

    monkeypatch.setattr(importhook, "_ask_finders", counting)
    try:
        with ImportHook(Rules()):
            sub = importlib.import_module(f"{package}.sub")
        assert type(sub.__loader__) is importlib.machinery.SourceFileLoader
        assert searched == [package]  # the top-level package only
        for name in (package, f"{package}.sub"):
            del sys.modules[name]
        with ImportHook(Rules(include=(package,))):
            assert isinstance(importlib.import_module(f"{package}.sub").__loader__, AutoforkLoader)
    finally:
        for name in [n for n in sys.modules if n.startswith(package)]:
            del sys.modules[name]
    assert Rules().skips_place([str(site_dir / package)])
    assert not Rules().skips_place([str(tmp_path / "project" / "pkg")])
    assert not Rules().skips_place(None) and not Rules().skips_place([])
    assert not Rules(only=("x",)).skips_place([str(site_dir / package)])


def test_a_module_left_alone_is_searched_for_once(modules: Modules, hook: ImportHook,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook hands the spec it found to the import, which then does not search again."""
    searched: list[str] = []
    original = importlib.machinery.PathFinder.find_spec

    def counting(name: str, *args: object, **kwargs: object) -> object:
        searched.append(name)
        return original(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.machinery.PathFinder, "find_spec", counting)
    name, _ = modules.write("alone", "def f(x):\n    return x + 1\n")
    module = modules.fresh_import(name)
    assert type(module.__loader__) is importlib.machinery.SourceFileLoader
    assert module.f(1) == 2 and searched.count(name) == 1
    # A second autofork hook after this one is still asked: no answer is handed over then.
    with ImportHook(Rules()) as second:
        sys.meta_path.remove(second)
        sys.meta_path.insert(sys.meta_path.index(hook) + 1, second)
        searched.clear()
        modules.fresh_import(name)
        assert searched.count(name) == 2
