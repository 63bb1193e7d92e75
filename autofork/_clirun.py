"""Run the user's program as plain ``python`` would, with its main code rewritten.

Shared by ``python -m autofork`` and ``import autofork.enable``.  Modelled on
coverage.py's ``PyRunner``: a real ``__main__`` module, ``SystemExit`` let through, the
runner's own frame removed from the user's traceback.  The import hook is never asked
for ``__main__``, so the main code is rewritten here.
"""

from __future__ import annotations

import builtins
import importlib.machinery
import os
import sys
import time
import types
from typing import Optional

from autofork import _phases, importhook

#: The ``__main__`` module autofork is running, so that ``import autofork.enable`` at
#: the top of it knows the switch is already on.
running_main: Optional[types.ModuleType] = None


class Options:
    """The command line's options: their defaults, or what argparse filled in."""

    def __init__(self) -> None:
        self.module: Optional[str] = None
        self.sequential = False
        self.workers: Optional[int] = None
        self.threads: Optional[int] = None
        self.backend: Optional[str] = None
        self.address: Optional[str] = None
        self.include: list[str] = []
        self.exclude: list[str] = []
        self.stats = False
        self.trace: Optional[str] = None
        self.diff = False
        self.compare = False
        self.compare_stderr = False
        self.json = False


class NoProgram(Exception):
    """The script or module cannot be found; the message is what ``python`` would print."""


class Program:
    """What to run: the source, and the attributes its ``__main__`` module gets."""

    def __init__(self, path: str, data: bytes,
                 spec: Optional[importlib.machinery.ModuleSpec]) -> None:
        self.path = path
        self.data = data
        self.spec = spec  # None for a script, as under python

    @property
    def package(self) -> Optional[str]:
        return None if self.spec is None else self.spec.parent

    def module(self) -> types.ModuleType:
        """A fresh ``__main__`` module, its attributes as ``python`` sets them."""
        module = types.ModuleType("__main__")
        module.__file__ = self.path
        module.__builtins__ = builtins  # type: ignore[attr-defined]
        module.__package__ = self.package
        module.__spec__ = self.spec
        if self.spec is None:
            module.__loader__ = importlib.machinery.SourceFileLoader("__main__", self.path)
            module.__cached__ = None  # type: ignore[attr-defined]
        else:
            module.__loader__ = self.spec.loader
            module.__cached__ = self.spec.cached  # type: ignore[attr-defined]
        return module


def script(path: str) -> Program:
    """The program ``python path`` runs (a file, or a directory with ``__main__.py``)."""
    full = os.path.abspath(path)
    if os.path.isdir(full):
        full = os.path.join(full, "__main__.py")
    try:
        with open(full, "rb") as file:
            data = file.read()
    except OSError as why:
        raise NoProgram(f"{sys.executable}: can't open file {full!r}: "
                        f"[Errno {why.errno}] {why.strerror}") from None
    return Program(full, data, None)


def module(name: str) -> Program:
    """The program ``python -m name`` runs; imports its parent packages, as Python does."""
    try:
        spec = importhook.plain_spec(name)
        if spec is not None and spec.submodule_search_locations is not None:
            main_name = name + ".__main__"
            spec = importhook.plain_spec(main_name)
            if spec is None:
                raise NoProgram(f"{sys.executable}: No module named {main_name}; "
                                f"{name!r} is a package and cannot be directly executed")
    except (ImportError, ValueError) as why:
        raise NoProgram(f"{sys.executable}: Error while finding module specification "
                        f"for {name!r} ({type(why).__name__}: {why})") from None
    if spec is None or spec.origin is None or spec.loader is None:
        raise NoProgram(f"{sys.executable}: No module named {name}")
    get_data = getattr(spec.loader, "get_data", None)
    try:
        data = get_data(spec.origin) if get_data is not None else b""
    except OSError as why:
        raise NoProgram(f"{sys.executable}: {why}") from None
    return Program(spec.origin, data, spec)


def compile_program(program: Program, rewrite: bool) -> types.CodeType:
    """The program's code, rewritten when ``rewrite`` and it needs it.

    Raises the ``SyntaxError`` plain Python would for a user's syntax error.
    """
    if program.spec is not None and not program.path.endswith(".py"):
        code = program.spec.loader.get_code(program.spec.name)  # type: ignore[union-attr]
        if code is None:
            raise NoProgram(f"{sys.executable}: No code object available for {program.spec.name}")
        return code
    if rewrite:
        if b"implicit_fork" in program.data or b"cpu_bound_fork" in program.data:
            # CPU forks are coming: start the workers while the script is being rewritten.
            from autofork.runtime import engine

            began = time.perf_counter()
            engine.prestart()
            _phases.note("pool starting", began)
        search_path = [os.path.dirname(program.path)] if program.spec is None else []
        return importhook.main_code(program.data, program.path, program.package, search_path)
    return compile(program.data, program.path, "exec", dont_inherit=True)


def _finish(status: int) -> int:
    """Join outstanding forks; unobserved failures make a zero status 1.

    Only when the runtime was imported: no import, no forks, nothing to wait for.
    """
    engine = sys.modules.get("autofork.runtime.engine")
    _phases.note("program done")
    if engine is None:
        return status
    began = time.perf_counter()
    failed = engine.finish()  # prints each failure nobody saw
    _phases.note("outstanding forks joined", began)
    return 1 if failed and status == 0 else status


def _interrupted() -> None:
    engine = sys.modules.get("autofork.runtime.engine")
    if engine is not None:
        engine.interrupt()


def _report(exc: BaseException) -> None:
    """Print ``exc`` as the interpreter would, without the runner's own frame, nor
    autofork's between the program's (``errors.without_internal_frames``)."""
    from autofork.runtime.errors import without_internal_frames

    tb = exc.__traceback__
    exc.__traceback__ = tb.tb_next if tb is not None else None
    without_internal_frames(exc)
    tb = exc.__traceback__
    try:
        sys.excepthook(type(exc), exc, tb)
    except Exception:  # noqa: BLE001 - a broken excepthook: Python falls back too
        sys.__excepthook__(type(exc), exc, tb)


def execute(code: types.CodeType, main: types.ModuleType) -> int:
    """Run ``code`` as ``__main__``; returns the exit status, or lets ``SystemExit`` through.

    An uncaught exception is printed as the interpreter prints it (status 1;
    ``KeyboardInterrupt``: 130).  Outstanding forks are joined before returning.
    """
    global running_main
    sys.modules["__main__"] = running_main = main
    try:
        exec(code, main.__dict__)
    except SystemExit as exit_:
        status = _finish(_exit_status(exit_))
        if status != _exit_status(exit_):
            raise SystemExit(status) from None
        raise
    except KeyboardInterrupt as exc:
        _interrupted()  # kill the workers first: one Ctrl-C is enough
        _report(exc)
        return 130
    except BaseException as exc:  # noqa: BLE001 - the user's uncaught exception
        _report(exc)
        return _finish(1)
    return _finish(0)


def _exit_status(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1  # a message: Python prints it and exits 1
