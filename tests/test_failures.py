"""A failing marked call under ``python -m autofork``, compared with plain ``python``: it
is caught where it was caught sequentially (SPEC 4b) and its traceback reads the same
(SPEC 5).  Every test runs the same script both ways, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(script: Path, *, autofork: bool, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env.update({"AUTOFORK_WORKERS": "2", "PYTHONPATH": str(ROOT)})
    command = [sys.executable, *(["-m", "autofork"] if autofork else []), str(script)]
    return subprocess.run(command, cwd=script.parent, env=env, capture_output=True, text=True,
                          timeout=60, input=stdin)


def both(tmp_path: Path, source: str, stdin: str = "") -> tuple[subprocess.CompletedProcess[str], ...]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source).lstrip("\n"))
    return run(script, autofork=False, stdin=stdin), run(script, autofork=True, stdin=stdin)


def last_line(stderr: str) -> str:
    return stderr.rstrip("\n").rsplit("\n", 1)[-1]


# ------------------------------------------------ caught where it was caught (SPEC 4b)


@pytest.mark.timeout(60)
def test_a_failure_raised_before_a_try_is_not_caught_by_it(tmp_path: Path) -> None:
    plain, forked = both(tmp_path, '''
        import time
        from autofork import implicit_fork

        @implicit_fork
        def check(i):
            time.sleep(0.05)
            if i == 3:
                raise ValueError(f"bad {i}")
            return i

        r = check(3)          # sequentially: raises here, uncaught
        print("after r")
        s = check(1)
        try:
            print(r + s)      # the proxy must not raise here, inside the try
        except ValueError as e:
            print("caught again", e)
        print("end")
    ''')
    assert plain.returncode == forked.returncode == 1
    assert plain.stdout == forked.stdout == ""
    assert last_line(plain.stderr) == last_line(forked.stderr) == "ValueError: bad 3"


@pytest.mark.timeout(60)
def test_failures_are_caught_by_the_same_handlers_as_sequentially(tmp_path: Path) -> None:
    """Each scenario fails inside a function whose caller catches: sequentially the
    caller catches every one; a try or with in the function itself must not."""
    plain, forked = both(tmp_path, '''
        import contextlib, time
        from autofork import implicit_fork

        @implicit_fork
        def check(i):
            time.sleep(0.02)
            if i == 3:
                raise ValueError(f"bad {i}")
            return i

        def straight():
            r = check(3)
            s = check(1)
            try:
                return r + s
            except ValueError:
                return "caught inside"

        def in_a_loop():
            total = 0
            for i in range(5):
                v = check(i)
                try:
                    total = total + v
                except ValueError:
                    return "caught inside"
            return total

        def suppressed():
            r = check(3)
            with contextlib.suppress(ValueError):
                return r * 2
            return "suppressed inside"

        def derived():
            t = check(3) * 2
            try:
                return t + 1
            except ValueError:
                return "caught inside"

        def unbound(flag):
            if flag:
                r = check(3)
            try:
                return r
            except NameError:
                return "unbound inside"

        for scenario in (straight, in_a_loop, suppressed, derived, lambda: unbound(False)):
            try:
                print(scenario())
            except ValueError as e:
                print("caught by the caller:", e)
    ''')
    assert (plain.returncode, plain.stderr) == (0, "")
    assert plain.stdout == "caught by the caller: bad 3\n" * 4 + "unbound inside\n"
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, plain.stdout, "")


# ------------------------------------------- tracebacks read as the sequential ones (SPEC 5)


def traceback_text(stderr: str) -> str:
    """The printed traceback (what autofork's logger may print before it aside)."""
    start = stderr.find("Traceback (most recent call last):")
    assert start >= 0, stderr
    return stderr[start:]


FAILING = textwrap.dedent('''
    import time
    from autofork import evaluate, fork, implicit_fork


    class AppError(Exception):
        def __init__(self, code, message):
            super().__init__(message)
            self.code = code


    @implicit_fork
    def check(i):
        time.sleep(0.05)
        try:
            if i == 3:
                int("x")
        except ValueError as e:
            raise AppError(42, f"bad {i}") from e
        return i

''')


@pytest.mark.timeout(60)
def test_a_failing_call_in_a_loop_prints_the_sequential_traceback(tmp_path: Path) -> None:
    """The loop's join, unwrap and the fold are autofork's frames: none is printed; the
    call line, the raising line and the chained cause read as under plain python, carets
    (3.11+) under the same text."""
    plain, forked = both(tmp_path, FAILING + textwrap.dedent('''
        total = 0
        for i in range(5):
            total += check(i)
        print(total)
    '''))
    assert plain.returncode == forked.returncode == 1
    assert "total += check(i)" in plain.stderr and "autofork" not in traceback_text(forked.stderr)
    assert traceback_text(forked.stderr) == traceback_text(plain.stderr)


@pytest.mark.timeout(60)
def test_a_failing_value_call_prints_the_sequential_traceback(tmp_path: Path) -> None:
    """A value fork raises where its value is used (``print``): that line of the same
    function is not printed, the call's line is, as sequentially; also from a worker."""
    plain, forked = both(tmp_path, FAILING + textwrap.dedent('''
        evaluate(fork(abs, 1))   # the workers are up: check(3) runs in one of them

        def main():
            r = check(3)
            doubled = r * 2
            print(doubled)

        main()
    '''))
    assert plain.returncode == forked.returncode == 1
    assert "r = check(3)" in plain.stderr and "print(doubled)" not in forked.stderr
    assert traceback_text(forked.stderr) == traceback_text(plain.stderr)


@pytest.mark.timeout(60)
def test_a_failure_never_used_is_printed_at_exit_with_the_sequential_traceback(tmp_path: Path) -> None:
    plain, forked = both(tmp_path, FAILING + textwrap.dedent('''
        r = check(3)
    '''))
    assert plain.returncode == forked.returncode == 1
    assert "check() failed and its result was never used" in forked.stderr
    assert traceback_text(forked.stderr) == traceback_text(plain.stderr)


@pytest.mark.timeout(60)
def test_a_failing_short_call_prints_the_sequential_traceback(tmp_path: Path) -> None:
    """Calls of half a millisecond travel in chunks (or run in the caller): the call site
    of a chunked call keeps its columns too."""
    plain, forked = both(tmp_path, '''
        import time
        from autofork import evaluate, fork, implicit_fork

        @implicit_fork
        def check(i):
            until = time.perf_counter() + 0.0005
            while time.perf_counter() < until:
                pass
            if i == 150:
                raise ValueError(f"bad {i}")
            return i

        evaluate(fork(abs, 1))
        results = []
        for i in range(200):
            results.append(check(i))
        print(sum(results))
    ''')
    assert plain.returncode == forked.returncode == 1
    assert traceback_text(forked.stderr) == traceback_text(plain.stderr)


# ------------------- names and containers after a failure caught in the same frame (SPEC 4b)


REBIND = textwrap.dedent('''
    import contextlib, time
    from autofork import implicit_fork

    @implicit_fork
    def f(x):
        time.sleep(0.01 * (6 - x))   # the later calls finish first
        if x == 3:
            raise ValueError(x)
        return x * 2

''')


@pytest.mark.timeout(60)
def test_module_names_bound_in_a_try_hold_what_they_held_before_the_failing_call(tmp_path: Path) -> None:
    """Sequentially ``r = f(3)`` never binds ``r``, and nothing after the failing call of
    a loop runs: after the handler, each name holds what it held then (or is unbound)."""
    plain, forked = both(tmp_path, REBIND + textwrap.dedent('''
        r = 0
        try:
            r = f(3)
        except ValueError:
            pass
        print("before:", r)

        try:
            q = f(3)
        except ValueError:
            print("unbound:", "q" not in globals())

        last = doubled = None
        try:
            for i in range(6):
                last = f(i)
                doubled = last * 2
        except ValueError as e:
            print("in the handler:", last, doubled, e)
        print("loop:", last, doubled)

        n: int = -1
        try:
            n: int = f(3)
        except ValueError:
            pass
        print("annotated:", n)

        looped = "before"
        try:
            first = f(3)                # fails: the loop after it never ran
            for i in range(3):
                looped = f(i)
        except ValueError:
            pass
        print("loop after it:", looped)
    '''))
    assert (plain.returncode, plain.stderr) == (0, "")
    assert plain.stdout == ("before: 0\nunbound: True\nin the handler: 4 8 3\nloop: 4 8\n"
                            "annotated: -1\nloop after it: before\n")
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, plain.stdout, "")


@pytest.mark.timeout(60)
def test_locals_bound_in_a_try_hold_what_they_held_before_the_failing_call(tmp_path: Path) -> None:
    """The same for a function's locals (unbound: ``UnboundLocalError``, as sequentially),
    a name further out caught by an outer try, a finally, and a with whose context
    manager suppresses the failure."""
    plain, forked = both(tmp_path, REBIND + textwrap.dedent('''
        def main():
            r = 0
            try:
                r = f(3)
            except ValueError:
                pass
            print("before:", r)
            try:
                q = f(3)
            except ValueError:
                pass
            try:
                print(q)
            except NameError as e:
                print("unbound:", type(e).__name__)
            last = -1
            try:
                try:
                    for i in range(6):
                        last = f(i)
                finally:
                    print("finally:", last)
            except ValueError:
                print("outer:", last)
            kept = "kept"
            with contextlib.suppress(ValueError):
                for i in range(6):
                    kept = f(i) + 1
            print("suppressed:", kept)

        main()
    '''))
    assert (plain.returncode, plain.stderr) == (0, "")
    assert plain.stdout == ("before: 0\nunbound: UnboundLocalError\nfinally: 4\nouter: 4\n"
                            "suppressed: 5\n")
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, plain.stdout, "")


@pytest.mark.timeout(60)
def test_a_try_in_a_function_called_from_a_loop_returns_the_sequential_value(tmp_path: Path) -> None:
    plain, forked = both(tmp_path, REBIND + textwrap.dedent('''
        def safe(x, default):
            r = default
            try:
                r = f(x)
            except ValueError:
                pass
            return r

        results = []
        for i in range(6):
            results.append(safe(i, "failed"))
        print(results)
        print([safe(i, None) for i in range(6)])
    '''))
    assert (plain.returncode, plain.stderr) == (0, "")
    assert plain.stdout == "[0, 2, 4, 'failed', 8, 10]\n[0, 2, 4, None, 8, 10]\n"
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, plain.stdout, "")


@pytest.mark.timeout(60)
def test_a_loop_that_failed_in_a_try_keeps_only_what_came_before_the_failing_call(tmp_path: Path) -> None:
    """The containers a loop filled, and its reduction, hold what the calls before the
    failing one put there, and nothing of the calls after it."""
    plain, forked = both(tmp_path, REBIND + textwrap.dedent('''
        out, rows, by_key, plus, total = [], [], {}, [], 0
        try:
            for i in range(6):
                out.append(f(i))
                rows.append((i, f(i)))
                by_key[i] = f(i)
                plus.append(f(i) * 10 + 1)
                total += f(i)
        except ValueError:
            pass
        print(out, rows, by_key, plus, total)
    '''))
    assert (plain.returncode, plain.stderr) == (0, "")
    assert plain.stdout == "[0, 2, 4] [(0, 0), (1, 2), (2, 4)] {0: 0, 1: 2, 2: 4} [1, 21, 41] 6\n"
    assert (forked.returncode, forked.stdout, forked.stderr) == (0, plain.stdout, "")


@pytest.mark.timeout(60)
def test_an_uncaught_failure_through_a_finally_reads_as_sequentially(tmp_path: Path) -> None:
    """The finally sees the names as they were; the failure leaves with the call's line;
    the lazy results bound after it are not reported as failures nobody saw."""
    plain, forked = both(tmp_path, REBIND + textwrap.dedent('''
        def main():
            total = 1
            try:
                for x in range(5):
                    r = f(x)
                    total = total * r + 1
            finally:
                print("finally", r, total)

        main()
    '''))
    assert plain.returncode == forked.returncode == 1
    assert plain.stdout == forked.stdout == "finally 4 13\n"
    assert "r = f(x)" in forked.stderr and "never used" not in forked.stderr
    assert last_line(forked.stderr) == last_line(plain.stderr) == "ValueError: 3"


# ------------------------------------------ what the program wrote after a late failure

LATE = textwrap.dedent('''
    import time
    from autofork import implicit_fork

    @implicit_fork
    def f(x):
        time.sleep(0.3)
        print("in f", x)
        if x == 3:
            raise ValueError(x)
        return x

''')


@pytest.mark.timeout(60)
def test_what_the_caller_prints_after_a_call_that_fails_late_is_not_printed(tmp_path: Path) -> None:
    """The call fails after the caller printed: the print never happened sequentially
    (also when the failure is raised through a lazy operation on the result); what came
    before the failing call is printed, in order."""
    plain, forked = both(tmp_path, LATE + textwrap.dedent('''
        a = f(1)
        print("after a")
        r = f(3)
        print("x")
        b = f(4)
        print(r + 1, b)
    '''))
    assert plain.returncode == forked.returncode == 1
    assert forked.stdout == plain.stdout == "in f 1\nafter a\nin f 3\n"
    assert "r = f(3)" in forked.stderr and "never used" not in forked.stderr
    assert last_line(forked.stderr) == last_line(plain.stderr) == "ValueError: 3"


@pytest.mark.timeout(60)
def test_what_the_caller_prints_after_a_failure_nobody_used_is_not_printed(tmp_path: Path) -> None:
    """The failure is reported at exit: what the program wrote after that call, and the
    failures of the calls after it, never happened sequentially."""
    plain, forked = both(tmp_path, LATE + textwrap.dedent('''
        r = f(3)
        print("x")
        s = f(3)
        print("y")
    '''))
    assert plain.returncode == forked.returncode == 1
    assert forked.stdout == plain.stdout == "in f 3\n"
    assert forked.stderr.count("Traceback") == 1 and "never used" in forked.stderr
    assert last_line(forked.stderr) == last_line(plain.stderr) == "ValueError: 3"


def answer_prompt(script: Path, *, autofork: bool, first: str) -> tuple[int, str, str]:
    """Run ``script`` as a user at a terminal would: give it ``first``, wait (20 s at most)
    for the prompt ``name? `` to show, only then answer it.  (exit code, stdout, stderr);
    the exit code is None if the prompt never showed while the program waited."""
    import select

    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env.update({"AUTOFORK_WORKERS": "2", "PYTHONPATH": str(ROOT)})
    command = [sys.executable, *(["-m", "autofork"] if autofork else []), str(script)]
    proc = subprocess.Popen(command, cwd=script.parent, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(first.encode() + b"\n")
        proc.stdin.flush()
        shown, ended = b"", False
        deadline = time.monotonic() + 20
        while b"name? " not in shown and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    ended = True  # the program ended without prompting
                    break
                shown += chunk
        if b"name? " not in shown and not ended:
            return None, shown.decode(), ""  # type: ignore[return-value]
        out, err = proc.communicate(b"bob\n", timeout=30)
        return proc.returncode, (shown + out).decode(), err.decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.timeout(120)
def test_input_after_a_call_that_fails_raises_before_the_prompt(tmp_path: Path) -> None:
    """``input`` waits for the calls its prompt is queued behind: a failure is raised
    before the prompt, as sequentially; without one, the prompt shows (flushed) before
    the program reads the answer."""
    script = tmp_path / "script.py"
    script.write_text(LATE + textwrap.dedent('''
        import sys
        r = f(int(sys.stdin.readline()))
        name = input("name? ")
        print("hello", name, r)
    '''))
    plain = answer_prompt(script, autofork=False, first="3")
    forked = answer_prompt(script, autofork=True, first="3")
    assert plain[0] == forked[0] == 1
    assert forked[1] == plain[1] == "in f 3\n"
    assert "r = f(int(" in forked[2] and "never used" not in forked[2]
    assert last_line(forked[2]) == last_line(plain[2]) == "ValueError: 3"
    plain = answer_prompt(script, autofork=False, first="2")
    forked = answer_prompt(script, autofork=True, first="2")
    assert plain[0] == forked[0] == 0
    assert forked[1] == plain[1] == "in f 2\nname? hello bob 2\n"


@pytest.mark.timeout(90)
def test_input_in_a_forked_thread_call_does_not_wait_for_the_calls_that_wait_for_it(
        tmp_path: Path) -> None:
    """``input`` inside an explicit I/O fork reads at once: the rewritten call given its
    result waits for it, so waiting for the rewritten calls there would never end."""
    plain, forked = both(tmp_path, textwrap.dedent('''
        import time
        from autofork import fork, io_bound, implicit_fork

        @io_bound
        def ask():
            time.sleep(0.2)
            return input("q? ")

        @implicit_fork
        def g(x):
            return len(x)

        p = fork(ask)
        r = g(p)
        print(r)
    '''), stdin="hello\n")
    assert plain.returncode == forked.returncode == 0
    assert forked.stdout == plain.stdout == "q? 5\n"


# ---------------------------------------- the carets under a value fork's call (3.11+)


@pytest.mark.timeout(60)
def test_the_traceback_of_a_value_fork_reads_as_sequentially_carets_included(tmp_path: Path) -> None:
    """``r = f(3)``, alone or in a try whose failure leaves (re-raised, through a
    finally): the same traceback text, the carets under ``f(3)`` included, and the
    failure is not chained to a second copy of itself."""
    plain, forked = both(tmp_path, LATE + textwrap.dedent('''
        def main(x):
            try:
                r = f(x)
                s = r + 1
            except ValueError:
                print("caught")
                raise
            return s

        def loop():
            try:
                for x in range(5):
                    r = f(x)
                    print(r)
            finally:
                pass

        try:
            r = f(3)
            print(r + 1)
        except KeyError:
            pass
        finally:
            try:
                main(3)
            finally:
                loop()
    '''))
    assert plain.returncode == forked.returncode == 1
    assert forked.stdout == plain.stdout
    assert forked.stderr.count("Traceback") == plain.stderr.count("Traceback") == 3
    assert forked.stderr == plain.stderr


@pytest.mark.timeout(60)
def test_a_try_in_a_class_body_leaves_no_joiner_in_the_class(tmp_path: Path) -> None:
    """The joiner of a try in a class body is not a class attribute: ``vars(C)`` is the
    sequential one; a failure there still reads as sequentially (lines kept)."""
    plain, forked = both(tmp_path, LATE + textwrap.dedent('''
        class C:
            try:
                r = f(5)
            finally:
                pass
            class D:
                try:
                    s = f(6)
                except KeyError:
                    pass

        print(sorted(vars(C)), sorted(vars(C.D)), C.r, C.D.s)

        class E:
            try:
                r = f(3)
            finally:
                pass
    '''))
    assert plain.returncode == forked.returncode == 1
    assert "_autofork" not in forked.stdout
    assert forked.stdout == plain.stdout
    assert forked.stderr == plain.stderr
