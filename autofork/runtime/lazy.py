"""Lazy operators: ``proxy + 1`` returns at once; the sum is computed when ready.

An operation on finished values is computed at once.  Otherwise it becomes a task that
waits for its pending operands and is computed, in the thread that finished the last of
them, as soon as they are all ready; so a running total of 100,000 forked values never
builds a chain that must be evaluated recursively.
"""

from __future__ import annotations

from typing import Any, Callable

from .dataflow import scan, when_ready
from .errors import call_site
from .proxy import new_proxy, unwrap
from .task import Task

__all__ = ["apply"]


def apply(function: Callable[..., Any], operands: tuple) -> Any:
    """``function(*operands)``, as a new proxy when an operand is pending."""
    _, pending = scan(operands, {})
    if not pending:
        return function(*map(unwrap, operands))
    task = Task(function, operands, {}, "lazy", call_site())
    when_ready(task, pending, _compute)
    return new_proxy(task)


def _compute(task: Task) -> None:
    if task.claim():
        task.args = tuple(map(unwrap, task.args))
        task.run_here()

