"""Plain versions of rewritten functions, for the places where a call must not fork.

Inside a worker process every nested CPU fork runs inline, so a rewritten function sent
there would pay ``_autofork_rt.fork(...)`` on each of its calls for nothing; for a
recursion like ``fib`` that is several times the work.  So a rewritten function travels
to the workers as its *original* code: compiled from the source file (the rewriter keeps
line numbers, so the code object is found by name and first line), with a copy of its
globals in which every rewritten function it refers to is plain too.  The copy is only
pickled, never run here: by-value functions get a copy of their globals in the worker
anyway.  Anything that does not match exactly (a file edited since the import, a closure
of another shape) keeps the rewritten function: slower, never wrong.
"""

from __future__ import annotations

import linecache
import types
from typing import Any, Callable, Optional

__all__ = ["for_workers"]

_MARK = "_autofork_"
_compiled: dict[str, Optional[types.CodeType]] = {}


def _rewritten(code: types.CodeType) -> bool:
    return any(name.startswith(_MARK) for name in code.co_names) or any(
        isinstance(const, types.CodeType) and _rewritten(const) for const in code.co_consts)


def _module_code(filename: str) -> Optional[types.CodeType]:
    if filename not in _compiled:
        source = "".join(linecache.getlines(filename))
        try:
            _compiled[filename] = compile(source, filename, "exec", dont_inherit=True) if source else None
        except SyntaxError:
            _compiled[filename] = None
    return _compiled[filename]


def _find(code: types.CodeType, name: str, line: int) -> Optional[types.CodeType]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_name == name and const.co_firstlineno == line:
                return const
            found = _find(const, name, line)
            if found is not None:
                return found
    return None


def _original(fn: types.FunctionType) -> Optional[types.CodeType]:
    code = fn.__code__
    module = _module_code(code.co_filename)
    original = module and _find(module, code.co_name, code.co_firstlineno)
    if (original is None or original.co_freevars != code.co_freevars
            or original.co_argcount != code.co_argcount
            or original.co_varnames[:code.co_argcount] != code.co_varnames[:code.co_argcount]):
        return None
    return original


def for_workers(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` as it should run in a worker: plain if it was rewritten or calls what was."""
    if type(fn) is not types.FunctionType or not (
            _rewritten(fn.__code__) or _calls_rewritten(fn, fn.__code__)):
        return fn
    copies: dict[int, types.FunctionType] = {}
    namespace = dict(fn.__globals__)
    plain = _plain(fn, namespace, copies)
    return plain if plain is not None else fn


def _calls_rewritten(fn: types.FunctionType, code: types.CodeType) -> bool:
    return any(_is_rewritten_function(fn.__globals__.get(name), fn.__globals__)
               for name in _global_names(code))


def _is_rewritten_function(value: Any, module_globals: dict) -> bool:
    return (type(value) is types.FunctionType and value.__globals__ is module_globals
            and _rewritten(value.__code__))


def _plain(fn: types.FunctionType, namespace: dict,
           copies: dict[int, types.FunctionType]) -> Optional[types.FunctionType]:
    if id(fn) in copies:
        return copies[id(fn)]
    original = _original(fn) if _rewritten(fn.__code__) else fn.__code__
    if original is None:
        return None
    plain = types.FunctionType(original, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    plain.__kwdefaults__ = fn.__kwdefaults__
    plain.__qualname__ = fn.__qualname__
    plain.__module__ = fn.__module__
    plain.__doc__ = fn.__doc__
    plain.__dict__.update(fn.__dict__)
    copies[id(fn)] = plain
    # The rewritten functions this one calls by global name are plain in the copy too.
    for name in _global_names(original):
        value = namespace.get(name)
        if _is_rewritten_function(value, fn.__globals__):
            replacement = _plain(value, namespace, copies)  # type: ignore[arg-type]
            if replacement is not None:
                namespace[name] = replacement
    return plain


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
