"""The marks: the function stays itself; where fork runs it follows the marks."""

from __future__ import annotations

import pytest

from autofork import (cpu_bound, cpu_bound_fork, implicit_fork, io_bound, io_bound_fork,
                      unsafe)
from autofork.runtime.marks import kind_of


def plain(x):
    return x + 1


def test_a_mark_returns_the_function_itself_still_callable_plainly():
    for mark in (cpu_bound, io_bound, unsafe, implicit_fork, cpu_bound_fork, io_bound_fork):
        def f(x):
            return x * 2

        assert mark(f) is f and f(4) == 8


def test_implicit_fork_is_cpu_bound_unless_stacked_with_io_bound_in_either_order():
    @implicit_fork
    def a():
        pass

    @implicit_fork
    @io_bound
    def b():
        pass

    @io_bound
    @implicit_fork
    def c():
        pass

    assert (kind_of(a), kind_of(b), kind_of(c)) == ("cpu", "io", "io")
    assert kind_of(cpu_bound_fork(lambda: 0)) == "cpu"
    assert kind_of(io_bound_fork(lambda: 0)) == "io"


def test_coroutine_functions_go_to_the_event_loop_and_unmarked_ones_to_processes():
    async def coroutine():
        pass

    assert kind_of(coroutine) == "async"
    assert kind_of(implicit_fork(coroutine)) == "async"
    assert kind_of(plain) == "cpu"


def test_marking_a_callable_that_takes_no_attributes_says_what_to_do():
    with pytest.raises(TypeError, match="takes no attributes; wrap it in a def"):
        io_bound(len)
