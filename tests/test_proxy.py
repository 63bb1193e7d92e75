"""The proxy acts like its value: one test per kind of use (SPEC section 3)."""

from __future__ import annotations

import copy
import math
import os
import pickle
import sys
import threading
import time
from pathlib import Path

import pytest

from autofork import ResultProxy, evaluate, fork, io_bound, wait

pytestmark = pytest.mark.timeout(60)


@io_bound
def later(value, seconds=0.05):
    time.sleep(seconds)
    return value


def p(value):
    """A pending proxy for ``value``."""
    proxy = fork(later, value)
    assert type(proxy) is ResultProxy
    return proxy


class Thing:
    """A thing with an attribute."""

    def __init__(self):
        self.x = 1

    def method(self, y):
        return self.x + y


class Managed:
    def __init__(self):
        self.events = []

    def __enter__(self):
        self.events.append("enter")
        return "inside"

    def __exit__(self, *exc):
        self.events.append("exit")
        return False


def test_attributes_get_set_delete():
    thing = p(Thing())
    assert thing.x == 1
    assert thing.method(2) == 3
    thing.y = 5
    assert evaluate(thing).y == 5
    del thing.y
    assert not hasattr(evaluate(thing), "y")


def test_calls_with_positional_and_keyword_arguments():
    assert p(max)(3, 9) == 9
    assert p(sorted)([3, 1, 2], reverse=True) == [3, 2, 1]


def test_items_get_set_delete_and_len_and_in():
    data = p({"a": 1})
    assert data["a"] == 1
    data["b"] = 2
    del data["a"]
    assert evaluate(data) == {"b": 2}
    assert len(p([1, 2, 3])) == 3
    assert 2 in p([1, 2, 3]) and 5 not in p([1, 2, 3])


def test_iteration_and_reversed_and_next():
    assert list(p([1, 2, 3])) == [1, 2, 3]
    assert list(reversed(p([1, 2, 3]))) == [3, 2, 1]
    assert [x for x in p(range(3))] == [0, 1, 2]


def test_comparisons_hash_and_bool():
    assert p(3) == 3 and p(3) != 4 and p(3) < 4 and p(3) <= 3 and p(3) > 2 and p(3) >= 3
    assert hash(p("key")) == hash("key")
    assert {p("key"): 1}["key"] == 1
    assert not p(0) and p([1])
    assert p(2) == p(2)


def test_str_repr_format_print_like_the_value():
    assert str(p("text")) == "text"
    assert repr(p("text")) == "'text'"
    assert f"{p(3.14159):.2f}" == "3.14"
    assert str([p(1), p("a")]) == "[1, 'a']"
    assert bytes(p(b"ab")) == b"ab"


def test_numeric_conversions_and_index():
    assert int(p(3.7)) == 3 and float(p(2)) == 2.0 and complex(p(1)) == 1 + 0j
    assert [10, 20, 30][p(1)] == 20
    assert round(p(2.567), 1) == 2.6 and math.trunc(p(2.5)) == 2
    assert math.floor(p(2.5)) == 2 and math.ceil(p(2.5)) == 3
    assert hex(p(255)) == "0xff"


def test_binary_and_unary_operators_are_lazy():
    began = time.perf_counter()
    slow = fork(later, 6, 0.5)
    results = [slow + 1, 1 + slow, slow - 1, 10 - slow, slow * 2, slow / 4, slow // 4,
               slow % 4, slow ** 2, 2 ** slow, slow << 1, slow >> 1, slow & 3, slow | 1,
               slow ^ 1, -slow, +slow, ~slow, abs(slow), divmod(slow, 4)]
    assert time.perf_counter() - began < 0.3
    assert all(type(r) is ResultProxy for r in results)
    assert [evaluate(r) for r in results] == [7, 7, 5, 4, 12, 1.5, 1, 2, 36, 64, 12, 3, 2,
                                              7, 7, -6, 6, -7, 6, (1, 2)]


class Matrix:
    def __init__(self, name):
        self.name = name

    def __matmul__(self, other):
        return f"{self.name}@{getattr(other, 'name', other)}"

    def __rmatmul__(self, other):
        return f"{other}@{self.name}"

    def __imatmul__(self, other):
        return f"{self.name}@={getattr(other, 'name', other)}"


def test_matmul_is_lazy():
    began = time.perf_counter()
    slow = fork(later, Matrix("a"), 0.5)
    results = [slow @ 1, 2 @ slow, slow @ Matrix("b")]
    in_place = slow
    in_place @= 3
    assert time.perf_counter() - began < 0.3  # none of them waited for the operand
    assert all(type(r) is ResultProxy for r in [*results, in_place])
    assert [evaluate(r) for r in results] == ["a@1", "2@a", "a@b"]
    assert in_place == "a@=3"


def test_in_place_operators_stay_lazy_in_a_loop():
    began = time.perf_counter()
    total = 0
    for i in range(20):
        total += fork(later, i, 0.2)
    assert time.perf_counter() - began < 1.0  # 20 x 0.2 s would take 4 s if it waited
    assert total == sum(range(20))
    items = p([1])
    items += [2]
    assert items == [1, 2]


@io_bound
def opened(gate):
    gate.wait(60)
    return 0


@pytest.mark.timeout(180)  # thousands of forks, slow under typeguard on a loaded machine
def test_a_running_total_of_thousands_of_lazy_additions_needs_no_deep_recursion():
    links = 2500
    assert links > 2 * sys.getrecursionlimit()  # a recursive completion would overflow
    gate = threading.Event()
    total = first = fork(opened, gate)  # pending until the whole chain is built
    for i in range(links):
        total = total + 1
    assert type(total) is ResultProxy and type(first) is ResultProxy
    gate.set()  # now each addition completes the next, thousands deep
    assert wait([total], timeout=60).done, "the chain never completed"
    assert total == links
    assert sum(fork(later, i, 0) for i in range(500)) == sum(range(500))


def test_context_manager_use():
    manager = p(Managed())
    with manager as inside:
        assert inside == "inside"
    assert evaluate(manager).events == ["enter", "exit"]


def test_copy_and_deepcopy_copy_the_value():
    original = [[1], 2]
    proxy = p(original)
    shallow, deep = copy.copy(proxy), copy.deepcopy(proxy)
    assert type(shallow) is list and shallow == original and shallow is not evaluate(proxy)
    assert deep[0] is not evaluate(proxy)[0]


def test_pickle_pickles_the_value():
    proxy = p({"a": [1, 2]})
    assert pickle.loads(pickle.dumps(proxy)) == {"a": [1, 2]}
    assert type(pickle.loads(pickle.dumps(proxy))) is dict


def test_isinstance_and_issubclass_through_class():
    proxy = p(3)
    assert isinstance(proxy, int)
    assert proxy.__class__ is int
    assert issubclass(proxy.__class__, int)
    assert isinstance(proxy, ResultProxy)  # and it still is what it is


def test_doc_and_module_are_the_values():
    thing = p(Thing())
    assert thing.__doc__ == "A thing with an attribute."
    assert thing.__module__ == Thing.__module__ == __name__
    assert p(len).__doc__ == len.__doc__
    assert p(len).__module__ == "builtins"
    # The class itself keeps its own.
    assert ResultProxy.__doc__.startswith("The lazy result of ``fork``")
    assert ResultProxy.__module__ == "autofork.runtime.proxy"
    assert pickle.loads(pickle.dumps(ResultProxy)) is ResultProxy


def test_dir_lists_the_value_attributes():
    assert "append" in dir(p([]))


def test_fspath_and_buffer_protocols(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("hi")
    assert os.fspath(p(target)) == str(target)
    assert open(p(str(target))).read() == "hi"
    assert Path(p(str(target))).read_text() == "hi"
    buffer = p(b"xyz")
    if sys.version_info >= (3, 12):  # PEP 688: memoryview() asks __buffer__
        assert bytes(memoryview(buffer)) == b"xyz"
    else:  # before 3.12 only C types export buffers; the hook is there for 3.12+
        assert bytes(buffer.__buffer__(0)) == b"xyz"


def test_what_a_proxy_cannot_fake_is_as_documented():
    proxy = p(None)
    assert type(proxy) is ResultProxy
    assert proxy is not None  # the documented trap
    assert evaluate(proxy) is None


def test_await_proxy_does_not_block_the_event_loop():
    import asyncio

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        value = await fork(later, 5, 0.3)
        task.cancel()
        return value, ticks

    value, ticks = asyncio.run(main())
    assert value == 5 and ticks >= 10
