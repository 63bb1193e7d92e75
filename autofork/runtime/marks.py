"""The marks: plain attributes on the function, which itself stays unchanged.

``@cpu_bound`` / ``@io_bound`` / ``@unsafe`` say where ``fork`` runs a function;
``@implicit_fork`` asks the import hook to rewrite its call sites.  ``implicit_fork``
only sets a placement when none is set yet, so ``@implicit_fork`` stacked with
``@io_bound`` means I/O in either order.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, TypeVar

__all__ = ["cpu_bound", "io_bound", "unsafe", "implicit_fork", "cpu_bound_fork",
           "io_bound_fork", "trust_effects", "kind_of", "Kind"]

F = TypeVar("F", bound=Callable[..., Any])
Kind = Literal["cpu", "io", "async", "unsafe"]

_KIND = "__autofork_kind__"
_IMPLICIT = "__autofork_implicit__"
_TRUSTED = "__autofork_trust_effects__"


def _mark(fn: F, attribute: str, value: object, *, only_if_unset: bool = False) -> F:
    if not callable(fn):
        raise TypeError(f"autofork marks decorate functions; got {fn!r}")
    if only_if_unset and hasattr(fn, attribute):
        return fn
    try:
        setattr(fn, attribute, value)
    except (AttributeError, TypeError):
        raise TypeError(f"cannot mark {fn!r}: it takes no attributes; wrap it in a def") from None
    return fn


def cpu_bound(fn: F) -> F:
    """Mark ``fn`` CPU-bound: ``fork`` runs it in a worker process (the default)."""
    return _mark(fn, _KIND, "cpu")


def io_bound(fn: F) -> F:
    """Mark ``fn`` I/O-bound: ``fork`` runs it in a thread of this process."""
    return _mark(fn, _KIND, "io")


def unsafe(fn: F) -> F:
    """Mark ``fn`` unsafe to run elsewhere: ``fork`` calls it inline and returns its value."""
    return _mark(fn, _KIND, "unsafe")


def implicit_fork(fn: F) -> F:
    """Mark ``fn`` for the import hook: its call sites become ``fork(fn, ...)``.

    CPU-bound unless also marked ``@io_bound``.  Called plainly, ``fn`` runs as ever.
    """
    _mark(fn, _KIND, "cpu", only_if_unset=True)
    return _mark(fn, _IMPLICIT, True)


def cpu_bound_fork(fn: F) -> F:
    """``@implicit_fork`` + ``@cpu_bound`` in one mark (xfork's name)."""
    return implicit_fork(cpu_bound(fn))


def io_bound_fork(fn: F) -> F:
    """``@implicit_fork`` + ``@io_bound`` in one mark (xfork's name)."""
    return implicit_fork(io_bound(fn))


def trust_effects(fn: F) -> F:
    """Tell the rewriter that the caller need not see what ``fn`` changes (an argument,
    ``self``, a global, the global random generator): fork it anyway, without a warning.

    Only the rewriter reads it; called plainly, ``fn`` runs as ever.
    """
    return _mark(fn, _TRUSTED, True)


def kind_of(fn: Callable[..., Any]) -> Kind:
    """Where ``fork`` runs ``fn``: ``"async"`` for coroutine functions, else its mark, else ``"cpu"``."""
    kind = getattr(fn, _KIND, None)
    if kind != "unsafe" and _is_coroutine_function(fn):
        return "async"
    return kind or "cpu"


def _is_coroutine_function(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    if code is not None:
        return bool(code.co_flags & 0x80)  # CO_COROUTINE; inspect costs 7 ms to import
    import inspect

    return inspect.iscoroutinefunction(fn)
