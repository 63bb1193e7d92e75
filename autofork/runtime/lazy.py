"""Lazy operators: ``proxy + 1`` returns at once; the sum is computed when ready.

An operation on finished values is computed at once.  Otherwise it becomes a task that
waits for its pending operands and is computed, in the thread that finished the last of
them, as soon as they are all ready; so a running total of 100,000 forked values never
builds a chain that must be evaluated recursively.

Importing this module adds the arithmetic operators (``+``, ``-=``, ``abs``...) to
``proxy.ResultProxy``; ``api`` imports it, so every proxy a fork returns has them.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

from .dataflow import scan, when_ready
from .errors import call_site
from .proxy import ResultProxy, new_proxy, unwrap
from .task import Task

__all__ = ["apply"]


def apply(function: Callable[..., Any], operands: tuple) -> Any:
    """``function(*operands)``, as a new proxy when an operand is pending."""
    _, pending = scan(operands, {})
    if not pending:
        return function(*map(unwrap, operands))
    task = Task(function, operands, {}, "lazy", call_site())
    task.after = max(max(getattr(t, "seq", -1), getattr(t, "after", -1)) for t in pending)
    when_ready(task, pending, _compute)
    return new_proxy(task)


def _compute(task: Task) -> None:
    if task.claim():
        task.args = tuple(map(unwrap, task.args))
        task.run_here()


# -- the operators of ResultProxy: added here, where apply lives -----------------------

def _lazy(name: str, function: Callable[..., Any], reflected: bool = False) -> None:
    """An operator that returns a new proxy at once when an operand is still pending."""

    def method(self: Any, *others: Any) -> Any:  # Any: checking a proxy's type waits for it
        operands = (*others, self) if reflected else (self, *others)
        return apply(function, operands)

    method.__name__ = method.__qualname__ = name
    setattr(ResultProxy, name, method)


_BINARY: dict[str, Callable[..., Any]] = {
    "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod,
    "pow": pow, "matmul": operator.matmul, "lshift": operator.lshift,
    "rshift": operator.rshift, "and": operator.and_, "or": operator.or_,
    "xor": operator.xor, "divmod": divmod,
}
for _name, _function in _BINARY.items():
    _lazy(f"__{_name}__", _function)
    _lazy(f"__r{_name}__", _function, reflected=True)
    in_place = getattr(operator, f"i{_name}", None) or getattr(operator, f"i{_name}_", None)
    if in_place is not None:
        _lazy(f"__i{_name}__", in_place)

_UNARY: dict[str, Callable[..., Any]] = {"neg": operator.neg, "pos": operator.pos,
                                       "invert": operator.invert, "abs": abs}
for _name, _function in _UNARY.items():
    _lazy(f"__{_name}__", _function)

del _name, _function
