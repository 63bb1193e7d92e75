"""fork and friends: laziness, placement, dataflow, exceptions, scope, wait."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback

import pytest

import autofork
from autofork import (FIRST_COMPLETED, FIRST_EXCEPTION, ResultProxy, as_completed, evaluate,
                      evaluate_all, fork, io_bound, scope, unsafe, wait)

pytestmark = pytest.mark.timeout(60)


def sleep_then_return(seconds, value):
    time.sleep(seconds)
    return value


def pid_of(_=None):
    return os.getpid()


@io_bound
def thread_of(_=None):
    return os.getpid(), threading.get_ident()


@unsafe
def inline_of(_=None):
    return os.getpid(), threading.get_ident()


def fail(message):
    raise ValueError(message)


def add(a, b):
    return a + b


@io_bound
def nap_then_return(seconds, value):
    time.sleep(seconds)
    return value


@io_bound
def fail_after(seconds, message):
    time.sleep(seconds)
    raise ValueError(message)


def io_from_a_worker():
    inner = fork(thread_of)
    return os.getpid(), threading.get_ident(), evaluate(inner)


def test_fork_returns_before_the_call_finishes_and_operators_stay_lazy():
    assert fork(add, 1, 1) == 2  # the first fork of a process imports the pool's modules
    began = time.perf_counter()
    result = fork(sleep_then_return, 1.0, 2) + 1
    assert time.perf_counter() - began < 0.5
    assert type(result) is ResultProxy
    assert result == 3
    assert time.perf_counter() - began >= 0.9


def test_placement_cpu_in_another_process_io_in_a_thread_unsafe_inline():
    assert evaluate(fork(pid_of)) != os.getpid()
    pid, thread = evaluate(fork(thread_of))
    assert pid == os.getpid() and thread != threading.get_ident()
    assert fork(inline_of) == (os.getpid(), threading.get_ident())
    assert type(fork(inline_of)) is tuple  # unsafe returns the real value


def test_lambdas_closures_and_local_functions_run_in_workers():
    offset = 10

    def local(x):
        return x + offset

    assert fork(lambda x: x * 2, 21) == 42
    assert fork(local, 5) == 15
    assert fork(local, fork(lambda: 1)) == 11


def test_an_argument_that_cannot_be_sent_names_itself():
    lock = threading.Lock()
    with pytest.raises(TypeError, match=r"argument 2 \(lock"):
        fork(add, 1, lock)
    with pytest.raises(TypeError, match="keyword argument 'b'"):
        fork(add, 1, b=lock)


def test_dataflow_does_not_block_the_caller_nor_later_calls():
    # Both workers up first: on a loaded machine a worker's start-up alone can take a second.
    assert evaluate_all([fork(sleep_then_return, 0.3, i) for i in range(2)]) == [0, 1]
    began = time.perf_counter()
    slow = fork(sleep_then_return, 2.0, 20)
    dependent = fork(add, slow, 1)
    assert time.perf_counter() - began < 1.0
    independent = fork(add, 1, 1)
    assert independent == 2
    assert time.perf_counter() - began < 1.5  # did not wait for the slow input
    assert dependent == 21


def test_dataflow_inside_containers_and_keywords():
    a = fork(sleep_then_return, 0.2, 1)
    assert fork(sum, [a, fork(add, 1, 1), 3]) == 6
    assert fork(add, a, b=fork(add, 2, 3)) == 6
    assert fork(dict, {"x": a}) == {"x": 1}


def test_a_failed_input_fails_the_dependent_call_with_its_exception():
    failed = fork(fail, "input broke")
    dependent = fork(add, failed, 1)
    with pytest.raises(ValueError, match="input broke"):
        evaluate(dependent)


def test_exceptions_keep_their_type_and_read_like_the_sequential_traceback():
    proxy = fork(fail, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        evaluate(proxy)
    text = "".join(traceback.format_exception(info.value))
    assert "proxy = fork(fail, \"boom\")" in text  # the fork call site
    assert "raise ValueError(message)" in text      # the raising line in the worker
    assert text.index("proxy = fork(fail") < text.index("raise ValueError(message)")


def raise_from(message):
    try:
        {}["missing"]
    except KeyError as error:
        raise ValueError(message) from error


def test_a_chained_cause_travels_back_from_the_worker():
    with pytest.raises(ValueError, match="wrapped") as info:
        evaluate(fork(raise_from, "wrapped"))
    assert type(info.value.__cause__) is KeyError
    text = "".join(traceback.format_exception(info.value))
    assert '{}["missing"]' in text and "direct cause" in text


def test_each_evaluation_raises_a_fresh_traceback():
    proxy = fork(fail, "again")
    lengths = []
    for _ in range(3):
        try:
            evaluate(proxy)
        except ValueError as exc:
            lengths.append(len(traceback.format_exception(exc)))
    assert lengths[0] == lengths[1] == lengths[2]


class Unpicklable(Exception):
    def __init__(self, lock):
        super().__init__("holds a lock")
        self.lock = lock


def raise_unpicklable():
    raise Unpicklable(threading.Lock())


class NotAValueError(ValueError):
    def __reduce__(self):
        raise TypeError("refuses to pickle")


def raise_value_subclass():
    raise NotAValueError("picky")


class AppError(Exception):
    """Its __init__ takes other arguments than it passes on: plain pickle cannot rebuild it."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def raise_app_error(code):
    raise AppError(code, f"failed with {code}")


def test_an_exception_whose_init_differs_from_its_args_arrives_as_itself():
    with pytest.raises(AppError, match="failed with 42") as caught:
        evaluate(fork(raise_app_error, 42))
    assert type(caught.value) is AppError
    assert caught.value.code == 42 and caught.value.args == ("failed with 42",)


def test_an_exception_that_cannot_be_pickled_arrives_as_a_clear_stand_in():
    with pytest.raises(autofork.RemoteError, match="Unpicklable: holds a lock"):
        evaluate(fork(raise_unpicklable))
    with pytest.raises(ValueError, match="NotAValueError: picky"):
        evaluate(fork(raise_value_subclass))


def test_io_and_async_failures_keep_type_and_frames():
    @io_bound
    def io_fail():
        raise KeyError("io")

    async def async_fail():
        await asyncio.sleep(0)
        raise LookupError("async")

    with pytest.raises(KeyError):
        evaluate(fork(io_fail))
    with pytest.raises(LookupError) as info:
        evaluate(fork(async_fail))
    assert 'raise LookupError("async")' in "".join(traceback.format_exception(info.value))


def test_coroutines_run_on_the_shared_loop_and_proxies_are_awaitable():
    async def double(x):
        await asyncio.sleep(0.1)
        return 2 * x

    began = time.perf_counter()
    results = [fork(double, i) for i in range(50)]
    assert evaluate_all(results) == [2 * i for i in range(50)]
    assert time.perf_counter() - began < 2

    async def main():
        return await fork(sleep_then_return, 0.1, 7) + await fork(double, 1)

    assert asyncio.run(main()) == 9


def test_generator_functions_cannot_be_forked():
    def numbers():
        yield 1

    async def agen():
        yield 1

    with pytest.raises(TypeError, match="generator"):
        fork(numbers)
    with pytest.raises(TypeError, match="generator"):
        fork(agen)


def test_scope_joins_and_reraises():
    with pytest.raises(ValueError, match="in scope"):
        with scope():
            fork(fail, "in scope")
    if sys.version_info >= (3, 11):
        with pytest.raises(ExceptionGroup) as info:  # noqa: F821 - a builtin since 3.11
            with scope():
                fork(fail, "one")
                fork(fail, "two")
        assert [str(e) for e in info.value.exceptions] == ["one", "two"]
    else:  # no ExceptionGroup: the first failure, with a note counting the others
        with pytest.raises(ValueError, match="one") as info:
            with scope():
                fork(fail, "one")
                fork(fail, "two")
        assert "1 forked call failed as well" in "\n".join(info.value.__notes__)

    @scope()
    def writes(path):
        fork(io_bound(lambda: (time.sleep(0.2), open(path, "w").write("x"))))

    return_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"af-{os.getpid()}")
    writes(return_path)
    assert os.path.exists(return_path)
    os.remove(return_path)


def test_wait_and_as_completed():
    # Threads: no worker start-up (slow on a loaded machine) to reorder the calls.
    slow = fork(nap_then_return, 0.6, "slow")
    quick = fork(nap_then_return, 0.05, "quick")
    done, not_done = wait([slow, quick], return_when=FIRST_COMPLETED)
    assert [evaluate(x) for x in done] == ["quick"] and len(not_done) == 1
    order = [evaluate(x) for x in as_completed([slow, fork(nap_then_return, 0.05, "q2")])]
    assert order == ["q2", "slow"]
    with pytest.raises(TimeoutError):
        list(as_completed([fork(nap_then_return, 1.0, 0)], timeout=0.1))


def test_wait_first_exception_returns_at_the_first_failure():
    slow = fork(nap_then_return, 3.0, "slow")
    failing = fork(fail_after, 0.05, "early")
    began = time.monotonic()
    done, not_done = wait([slow, failing], return_when=FIRST_EXCEPTION)
    assert time.monotonic() - began < 2.5  # not after the slow call
    assert len(done) == 1 and done[0] is failing
    assert len(not_done) == 1 and not_done[0] is slow
    with pytest.raises(ValueError, match="early"):
        evaluate(failing)
    # Without a failure FIRST_EXCEPTION waits for all, as concurrent.futures does.
    done, not_done = wait([fork(nap_then_return, 0.1, 1), 2], return_when=FIRST_EXCEPTION)
    assert sorted(evaluate_all(done)) == [1, 2] and not_done == []


def test_wait_with_a_timeout_returns_what_is_done_by_then():
    slow = fork(nap_then_return, 3.0, "slow")
    quick = fork(nap_then_return, 0.05, "quick")
    began = time.monotonic()
    done, not_done = wait([slow, quick, "not a proxy"], timeout=0.5)
    assert time.monotonic() - began < 2.5
    assert [evaluate(x) for x in done] == ["quick", "not a proxy"]  # in the order given
    assert len(not_done) == 1 and not_done[0] is slow


def test_wait_counts_objects_that_are_not_proxies_as_done():
    marker = object()
    began = time.monotonic()
    done, not_done = wait([marker, fork(nap_then_return, 3.0, 0)],
                          return_when=FIRST_COMPLETED)
    assert time.monotonic() - began < 2.5
    assert len(done) == 1 and done[0] is marker and len(not_done) == 1
    assert wait([]) == ([], []) and wait([1, "a"], timeout=0) == ([1, "a"], [])


def test_scope_keeps_the_blocks_own_exception_with_a_note_about_failed_forks():
    with pytest.raises(KeyError) as info:
        with scope():
            fork(fail, "one")
            fork(fail, "two")
            fork(sleep_then_return, 0.1, "fine")
            raise KeyError("the block's own")
    notes = getattr(info.value, "__notes__", [])
    assert len(notes) == 1 and "2 forked calls" in notes[0], notes


def test_an_io_fork_inside_a_worker_runs_on_that_workers_threads():
    pid, task_thread, (io_pid, io_thread) = evaluate(fork(io_from_a_worker))
    assert pid != os.getpid()  # the outer call ran in a worker process,
    assert io_pid == pid and io_thread != task_thread  # its I/O fork in a thread there


def test_cascading_forks_in_threads_do_not_deadlock_a_full_pool():
    autofork.configure(threads=2)
    try:
        @io_bound
        def tree(depth):
            if depth == 0:
                return 1
            return evaluate(fork(tree, depth - 1)) + evaluate(fork(tree, depth - 1))

        assert fork(tree, 5) == 32
    finally:
        autofork.configure(threads=256)


def nested_cpu(depth):
    if depth == 0:
        return [os.getpid()]
    return fork(nested_cpu, depth - 1) + fork(nested_cpu, depth - 1)


def test_cascading_cpu_forks_stay_within_the_configured_workers():
    pids = evaluate(fork(nested_cpu, 4))
    assert len(pids) == 16
    assert os.getpid() not in pids and len(set(pids)) == 1  # nested forks ran inline


def test_fork_from_32_threads_at_once():
    results = [None] * 32

    def worker(i):
        results[i] = evaluate(fork(add, i, fork(add, i, 0)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [2 * i for i in range(32)]


def test_evaluate_leaves_other_objects_alone():
    marker = object()
    assert evaluate(marker) is marker
    assert evaluate_all([1, fork(add, 1, 1)]) == [1, 2]


def size_of(data):
    return len(data)


def test_a_large_immutable_argument_is_pickled_once_and_sent_once_per_worker():
    from autofork.runtime import engine

    big = b"x" * (8 << 20)
    results = [fork(size_of, big) for _ in range(40)]
    assert evaluate_all(results) == [len(big)] * 40
    pool = engine.backend()
    assert len(pool._blobs.data) == 1  # pickled once, kept under one key
    text = "y" * (2 << 20)
    assert fork(size_of, text) == len(text)
    mutable = bytearray(b"z" * (2 << 20))  # mutable: sent anew, so a change is seen
    first = fork(size_of, mutable)
    mutable.extend(b"zz")
    assert (first, fork(size_of, mutable)) == (2 << 20, (2 << 20) + 2)


def test_changing_the_settings_lets_running_coroutines_finish():
    import autofork

    async def slow():
        await asyncio.sleep(0.3)
        return "done"

    pending = fork(slow)
    autofork.configure(threads=128)  # closes the pools, after their work
    try:
        assert evaluate(pending) == "done"
    finally:
        autofork.configure(threads=256)


def test_a_new_lambda_in_every_iteration_is_kept_once():
    from autofork.runtime import engine

    results = [fork(lambda x: x + 1, i) for i in range(50)]
    assert evaluate_all(results) == list(range(1, 51))
    pool = engine.backend()
    lambdas = [key for key, data in pool._data.items() if b"<lambda>" in data]
    assert len(lambdas) <= 3  # the lambdas of this module's tests, not one per iteration


def slow_size_of(data, seconds):
    time.sleep(seconds)
    return len(data)


@pytest.mark.timeout(60)
def test_more_queued_large_arguments_than_the_cache_keeps_neither_fail_nor_hang(monkeypatch):
    from autofork.runtime import processes

    # The budget of 512 MiB scaled down: 2 large arguments fit, 12 wait in the queue.
    monkeypatch.setattr(processes, "_BLOB_BUDGET", 3 << 20)
    busy = [fork(slow_size_of, b"", 0.5) for _ in range(8)]  # the workers are taken
    blobs = [bytes([i]) * (1 << 20) for i in range(12)]  # distinct, each worth caching
    results = [fork(slow_size_of, blob, 0) for blob in blobs]
    assert evaluate_all(results) == [1 << 20] * 12
    assert evaluate_all(busy) == [0] * 8


def test_an_input_that_failed_before_the_call_was_made_fails_the_call_not_the_fork():
    failed = fork(fail, "input broke")
    autofork.wait([failed])  # finished (and failed) before it is passed on
    dependent = fork(add, failed, 1)  # does not raise here
    in_a_list = fork(len, [failed])
    lazy = failed + 1
    for proxy in (dependent, in_a_list, lazy):
        with pytest.raises(ValueError, match="input broke"):
            evaluate(proxy)
