"""``import autofork.enable``: switch autofork on from inside a program.

As the first statement of a script run with plain ``python script.py`` (or of a module
run with ``python -m``), it has the effect of ``python -m autofork script.py``: it
installs the import hook, reads the script's file, rewrites it, and runs it afresh in a
new ``__main__`` module.  When that run ends, it exits with the run's exit status, so
the rest of the original, unrewritten execution never happens.  The consequence:
statements above ``import autofork.enable`` have already run once without autofork,
and run a second time in the rewritten run.  autofork warns about them
(``AutoforkWarning``); put the import first (after the docstring and ``from
__future__`` imports, which are fine).

In a package's ``__init__.py`` (any module that is not ``__main__``), it installs the
import hook for that package: its modules imported after this statement are rewritten,
wherever the package lives (site-packages included).  Modules imported by statements
above it are not; autofork warns about those statements too.

Under ``AUTOFORK=0`` it does nothing.  Under ``python -m autofork`` the script is
already rewritten, so at the top of the script it does nothing, and in a package it
adds the package to the running hook.
"""

from __future__ import annotations

import ast
import os
import sys
import types
import warnings
from typing import Optional

from autofork import _clirun, importhook

__all__: list[str] = []


def _importer() -> Optional[types.FrameType]:
    """The frame of the code that imported this module, past the import machinery."""
    frame: Optional[types.FrameType] = sys._getframe(1)
    while frame is not None and (frame.f_globals is globals() or str(
            frame.f_globals.get("__name__", "")).startswith(("importlib", "_frozen_importlib"))):
        frame = frame.f_back
    return frame


def _warn(message: str, frame: types.FrameType) -> None:
    from autofork.runtime.errors import AutoforkWarning

    warnings.warn_explicit(message, AutoforkWarning, filename=frame.f_code.co_filename,
                           lineno=frame.f_lineno, module=str(frame.f_globals.get("__name__")))


def statements_above(source: str, line: int) -> int:
    """How many top-level statements run before the one on ``line``.

    The docstring and ``from __future__`` imports do not count: they must come first.
    """
    body = ast.parse(source).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    body = [node for node in body
            if not (isinstance(node, ast.ImportFrom) and node.module == "__future__")]
    for index, node in enumerate(body):
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return index
    return len(body)


def _check_first(frame: types.FrameType, data: bytes, consequence: str) -> None:
    try:
        import importlib.util

        above = statements_above(importlib.util.decode_source(data), frame.f_lineno)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return
    if frame.f_code.co_name != "<module>":
        _warn(f"import autofork.enable inside {frame.f_code.co_name}(): put it at the top "
              f"of the module; {consequence}", frame)
    elif above:
        _warn(f"import autofork.enable is not the first statement: {above} statement(s) "
              f"above it ran before autofork was on; {consequence}. Move it to the top.", frame)


def _read(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return None


def _enable_main(frame: types.FrameType) -> None:
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None)
    data = _read(path) if path else None
    importhook.install()
    if (data is None or path is None  # (no path: no data either)
            or os.path.abspath(frame.f_code.co_filename) != os.path.abspath(path)):
        _warn("import autofork.enable: the main code is not read from a file, so it cannot "
              "be rewritten; modules imported from now on are", frame)
        return
    _check_first(frame, data, "they run again now, rewritten")
    spec = getattr(main, "__spec__", None)
    program = _clirun.Program(os.path.abspath(path), data, spec)
    code = _clirun.compile_program(program, rewrite=True)
    # Runs the whole program, then ends this process: the unrewritten run never resumes.
    raise SystemExit(_clirun.execute(code, program.module()))


def _enable_package(frame: types.FrameType) -> None:
    globals_ = frame.f_globals
    name = str(globals_.get("__name__", ""))
    package = name if "__path__" in globals_ else str(globals_.get("__package__") or "")
    if not package:
        _warn(f"import autofork.enable in {name}, which is neither __main__ nor in a package: "
              "it has no effect there; put it in the package's __init__.py", frame)
        return
    data = _read(frame.f_code.co_filename)
    if data is not None:
        _check_first(frame, data, "the modules they imported are not rewritten")
    hooks = importhook.installed_hooks()
    if hooks:
        hooks[0].include(package)
    else:
        importhook.install(include=[package], only=[package])


def _enable() -> None:
    if importhook.disabled():
        return
    frame = _importer()
    if frame is None:
        return
    name = frame.f_globals.get("__name__")
    if name == "__mp_main__":
        return  # multiprocessing re-running the main script in a child: never rewrite there
    if name == "__main__":
        if _clirun.running_main is not None and _clirun.running_main is sys.modules.get("__main__"):
            return  # already rewritten by python -m autofork or an earlier enable
        _enable_main(frame)
    else:
        _enable_package(frame)


_enable()
