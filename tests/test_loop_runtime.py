"""What rewritten loops call: Joiner.into/fold/then and settle, with real threads and workers.

The rewriter's side (which loops get these calls) is tested in test_transformer.py and,
end to end, in test_loops.py.
"""

from __future__ import annotations

import collections
import os
import threading
import time

import pytest

from autofork import ResultProxy, evaluate, fork, io_bound
from autofork.runtime.implicit import Joiner, settle

pytestmark = pytest.mark.timeout(60)


@io_bound
def late(seconds, value):
    """``value`` after ``seconds``: calls given decreasing delays finish in reverse order."""
    time.sleep(seconds)
    return value


@io_bound
def fail_late(seconds, message):
    time.sleep(seconds)
    raise ValueError(message)


def words(text):
    return collections.Counter(text.split()), os.getpid()


def test_settle_puts_values_in_place_of_proxies_in_the_same_containers():
    items = [fork(late, 0.05, 1), 2, (3, fork(late, 0.01, "x")), [fork(late, 0, 4.5)]]
    table = {"a": fork(late, 0.02, "A"), "b": {"c": fork(late, 0, None)}}
    queue = collections.deque([fork(late, 0, 7)])
    found = {fork(late, 0, 8), 9}
    keys = {fork(late, 0, "k"): 1}
    before = list(map(id, (items, table, queue, found, keys, items[3], table["b"])))
    for container in (items, table, queue, found, keys):
        assert settle(container) is container
    assert list(map(id, (items, table, queue, found, keys, items[3], table["b"]))) == before
    assert items == [1, 2, (3, "x"), [4.5]] and type(items[2][1]) is str
    assert type(items[0]) is int and type(items[3][0]) is float
    assert table == {"a": "A", "b": {"c": None}} and table["b"]["c"] is None
    assert type(queue[0]) is int and found == {8, 9} and {type(x) for x in found} == {int}
    assert [type(k) for k in keys] == [str]
    assert settle(fork(late, 0, 5)) == 5 and type(settle(fork(late, 0, 5))) is int
    assert settle("text") == "text"


def test_a_joiner_finishes_every_fork_then_settles_what_was_registered():
    results, sizes = [], {}
    began = time.perf_counter()
    with Joiner() as joiner:
        for i in range(6):
            joiner.into(results).append(joiner.fork(late, 0.2, i))
            joiner.into(sizes)[f"k{i}"] = joiner.fork(late, 0.2, i * i)
        assert type(results[0]) is ResultProxy   # nothing was waited for inside the loop
    assert time.perf_counter() - began < 1.2      # twelve 0.2 s calls side by side
    assert results == [0, 1, 2, 3, 4, 5] and {type(r) for r in results} == {int}
    assert ",".join(f"{k}={v}" for k, v in sizes.items()).startswith("k0=0,k1=1")
    assert {type(v) for v in sizes.values()} == {int}


def test_the_first_failure_in_call_order_is_raised_at_the_exit_and_nothing_is_settled():
    results = []
    with pytest.raises(ValueError, match="first") as caught:
        with Joiner() as joiner:
            joiner.into(results).append(joiner.fork(late, 0.1, 0))
            joiner.fork(fail_late, 0.3, "first")       # fails last, but was called first
            joiner.fork(fail_late, 0.0, "second")
            joiner.into(results).append(joiner.fork(late, 0.1, 1))
    assert "1 later forked call in the same block failed too" in caught.value.__notes__[0]
    assert type(results[0]) is ResultProxy  # the loop did not end: no values put in place


def test_an_in_place_reduction_is_deferred_and_applied_in_call_order():
    total = collections.Counter()
    order = []
    with Joiner() as joiner:
        for i in range(5):
            # The first calls finish last; the reduction still sees them first.
            same = joiner.fold(total, "+=", joiner.fork(late, 0.05 * (5 - i), collections.Counter(
                {f"w{i}": i + 1})))
            assert same is total
            joiner.then(order.append, joiner.fork(late, 0.05 * (5 - i), i))
        assert order == []                    # not applied while results are pending
    assert total == collections.Counter({f"w{i}": i + 1 for i in range(5)})
    assert list(total) == [f"w{i}" for i in range(5)]   # insertion order = call order
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.timeout(120)
def test_a_counter_reduction_of_worker_results_runs_in_other_processes_and_equals_plain():
    docs = ["a b a", "b c", "c c a", "d"] * 4
    evaluate(fork(abs, 1))  # workers are up (before, a waiting caller may run a call)
    total = collections.Counter()
    pids = set()
    with Joiner() as joiner:
        for doc in docs:
            result = joiner.fork(words, doc)
            joiner.fold(total, "+=", result[0])
            joiner.then(pids.add, result[1])
    plain = collections.Counter()
    for doc in docs:
        plain += words(doc)[0]
    assert total == plain
    assert pids - {os.getpid()}   # (a waiting caller may run a queued call itself)


def test_a_new_value_reduction_returns_a_proxy_and_keeps_call_order():
    text = ""
    with Joiner() as joiner:
        for i in range(4):
            text = joiner.fold(text, "+", joiner.fork(late, 0.05 * (4 - i), str(i)))
        assert type(text) is ResultProxy
    assert text == "0123"
    number = 0
    with Joiner() as joiner:
        for i in range(4):
            number = joiner.fold(number, "+=", joiner.fork(late, 0.01, i))
    assert number == 6


def test_waiting_for_a_reduction_inside_the_loop_applies_the_steps_up_to_it():
    text = ""
    with Joiner() as joiner:
        text = joiner.fold(text, "+", joiner.fork(late, 0.05, "a"))
        middle = text
        text = joiner.fold(text, "+", joiner.fork(late, 0.5, "b"))
        began = time.perf_counter()
        assert middle == "a"                    # applies the first step only
        assert time.perf_counter() - began < 0.4
        seen = []
        threading.Thread(target=lambda: seen.append(str(text))).start()
    assert text == "ab"


def test_a_failing_step_is_raised_at_the_exit_in_call_order():
    total = 0
    with pytest.raises(TypeError):
        with Joiner() as joiner:
            total = joiner.fold(total, "+=", joiner.fork(late, 0.1, 1))
            total = joiner.fold(total, "+=", joiner.fork(late, 0.0, None))   # int + None
            joiner.fork(fail_late, 0.0, "later")
    with pytest.raises(ValueError, match="earlier"):
        with Joiner() as joiner:
            joiner.fork(fail_late, 0.2, "earlier")
            total = joiner.fold(0, "+=", joiner.fork(late, 0.0, None))


def test_after_a_failed_operand_the_accumulator_is_what_the_sequential_loop_left():
    total = 10
    text = ""
    with pytest.raises(ValueError, match="bad"):
        with Joiner() as joiner:
            for i in range(5):
                value = joiner.fork(fail_late, 0.0, "bad") if i == 3 else joiner.fork(late, 0.05, i)
                total = joiner.fold(total, "+=", value)
                text = joiner.fold(text, "+", joiner.fork(late, 0.0, str(i)) if i != 3 else value)
    assert total == 10 + 0 + 1 + 2          # sequentially, `total += f(3)` never assigned
    assert text == "012"


def test_a_failed_operand_stops_the_reduction_where_the_sequential_loop_stopped():
    total = collections.Counter()
    with pytest.raises(ValueError, match="bad"):
        with Joiner() as joiner:
            joiner.fold(total, "+=", joiner.fork(late, 0.1, collections.Counter("a")))
            joiner.fold(total, "+=", joiner.fork(fail_late, 0.0, "bad"))
            joiner.fold(total, "+=", joiner.fork(late, 0.0, collections.Counter("b")))
    assert total == collections.Counter("a")


def test_bind_keeps_what_a_name_held_before_the_failing_call_and_its_memory_flat():
    """``bind`` in a long loop with a reduction keeps only the records a failure could
    still need; after a failure, ``rebinds``/``was`` give the value before the failing
    call's binding and ``unbinds`` says a name unbound before it must go."""
    def loop():
        total, last = 0, "before"
        joiner = Joiner()
        for i in range(5000):  # finished values: no failure can undo these
            total = joiner.fold(total, "+=", i)
            last = joiner.bind("last", i)
        assert len(joiner._bound) < 2048
        failing = Joiner()
        with pytest.raises(ValueError, match="bad"):
            with failing:
                last = failing.bind("last", failing.fork(fail_late, 0.05, "bad"))
                fresh = failing.bind("fresh", failing.fork(late, 0, 1))
        assert failing.rebinds("last") and failing.was("last") == 4999
        assert not failing.rebinds("fresh") and failing.unbinds("fresh")
        assert not failing.unbinds("last")   # given back already

    loop()
