"""A mutation check: does the test suite notice when a promised behaviour breaks?

    python tools/mutation.py               # every mutant (about 10-15 minutes on 2 cores)
    python tools/mutation.py --list        # the mutants and the tests each one runs
    python tools/mutation.py NAME...       # only these mutants (names or name prefixes)
    python tools/mutation.py --anchors     # only check that each mutant still applies

Each mutant is one deliberate break of autofork, written as a text substitution in one
file.  The script copies the repository (without .git, virtual environments and caches)
to a temporary directory once, then for each mutant: applies it to the copy, runs the
test files that should notice it (``pytest -x``, with the copy first on ``PYTHONPATH``),
and restores the file.  A mutant is

* caught      when those tests fail (or time out);
* SURVIVED    when they pass: a behaviour the README promises that no test defends (or
  code that moved: an anchor left in a place nothing runs any more breaks nothing, so
  look at the mutant before writing a test);
* not applied when its anchor text is no longer in the file exactly once (the code moved:
  rewrite the mutant), or when the tests could not even run (pytest usage error).

The score is caught / applied.  Not part of the test suite (it runs the suite dozens of
times): run it by hand after changing the tests or the code they defend.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(".git", "__pycache__", "*.pyc", ".pytest_cache", "venv*", ".venv",
                               "build", "dist", "*.egg-info", ".hypothesis")
_TIMEOUT = 600  # seconds for one mutant's tests: a hang counts as caught


@dataclass(frozen=True)
class Mutant:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""

    name: str
    path: str
    old: str
    new: str
    # pytest arguments: the test files, with "-k" naming the tests meant to catch it (a
    # whole file would also count its timing-sensitive tests, flaky on a loaded machine).
    tests: tuple[str, ...]
    what: str


MUTANTS = [
    # -- the process pool ---------------------------------------------------------------
    Mutant("crash-fails-unbegun", "autofork/runtime/processes.py",
           "        for entry in reversed(later):\n",
           "        for task, *_ in later:\n"
           "            task.set_failure(_crash_failure(task, cause, 'mutant'))\n"
           "        for entry in reversed([]):\n",
           ("tests/test_faults.py", "-k", "not_begun"),
           "a dead worker's calls it had not begun are failed instead of re-queued"),
    # -- granularity -----------------------------------------------------------------
    Mutant("recursion-always-forks", "autofork/runtime/granularity.py",
           "    if pool.idle() if pool.ready() else pool.pending() < config.settings().workers:\n",
           "    if True:\n",
           ("tests/test_granularity.py", "-k", "recursion"),
           'the recursion rule "fork only while a worker is idle" turned off'),
    Mutant("tiny-never-inline-set", "autofork/runtime/granularity.py",
           "inline.add(fn)",
           "inline.discard(fn)",
           ("tests/test_granularity.py", "-k", "tiny"),
           "a tiny function is never moved to the inline set (the one-lookup hot path)"),
    Mutant("tiny-never-inline", "autofork/runtime/granularity.py",
           "    inline = mean < _INLINE_BELOW\n",
           "    inline = False\n",
           ("tests/test_granularity.py", "-k", "tiny"),
           "a tiny function is never run inline"),
    Mutant("completion-recursive", "autofork/runtime/task.py",
           "    if queue is not None:\n        queue.append((callback, task))\n        return\n",
           "",
           ("tests/test_proxy.py", "-k", "running_total"),
           "a finished task completes the tasks waiting on it recursively (a long chain of "
           "lazy additions overflows the stack)"),
    # -- the import hook's cache ------------------------------------------------------
    Mutant("cache-ignores-fingerprint", "autofork/importhook.py",
           "fingerprint != _fingerprint() or ", "",
           ("tests/test_importhook.py", "-k", "cache"),
           "the cache ignores a change of autofork's own fingerprint"),
    Mutant("cache-deleted-dependency-valid", "autofork/importhook.py",
           "            if old_marks is not None:\n                return False\n",
           "            pass\n",
           ("tests/test_importhook.py", "-k", "cache"),
           "the cache treats a deleted dependency as valid"),
    Mutant("cache-ignores-marks", "autofork/importhook.py",
           "            if _frozen(found.marks()) != old_marks:\n                return False\n",
           "            pass\n",
           ("tests/test_importhook.py", "-k", "cache"),
           "the cache ignores a change of a dependency's marks"),
    Mutant("cache-write-in-place", "autofork/importhook.py",
           '        with open(temporary, "wb") as file:\n            file.write(blob)\n'
           "        os.replace(temporary, pyc)\n",
           '        with open(pyc, "wb") as file:\n            file.write(blob)\n',
           ("tests/test_importhook.py", "-k", "cache"),
           "the cache file is rewritten in place, not replaced atomically"),
    Mutant("cache-reads-plain-code", "autofork/importhook.py",
           "            return self._spec(spec, AutoforkLoader(fullname, origin, code=code), pyc)",
           "            return self._spec(spec, AutoforkLoader(fullname, origin, code=compile("
           "data, origin, 'exec')), pyc)",
           ("tests/test_importhook.py", "-k", "cache"),
           "a cache hit loads the plain code instead of the cached rewrite"),
    # -- the explicit API and the proxy ----------------------------------------------
    Mutant("wait-first-exception-as-all", "autofork/runtime/api.py",
           "if return_when == FIRST_EXCEPTION and", "if False and",
           ("tests/test_api.py", "-k", "wait"),
           "wait(..., return_when=FIRST_EXCEPTION) behaves as ALL_COMPLETED"),
    Mutant("wait-ignores-timeout", "autofork/runtime/api.py",
           "        condition.wait_for(reached, timeout)\n",
           "        condition.wait_for(reached)\n",
           ("tests/test_api.py", "-k", "wait"),
           "wait() ignores its timeout"),
    Mutant("scope-drops-note", "autofork/runtime/api.py",
           '            add_note(value, _count_note(len(failures), "also failed"))\n',
           "            pass\n",
           ("tests/test_api.py", "-k", "scope"),
           "scope() drops its note when the block itself raised"),
    Mutant("matmul-waits", "autofork/runtime/lazy.py",
           "del _name, _function\n",
           "del _name, _function\n"
           "ResultProxy.__matmul__ = lambda self, other: unwrap(self) @ unwrap(other)\n"
           "ResultProxy.__rmatmul__ = lambda self, other: unwrap(other) @ unwrap(self)\n",
           ("tests/test_proxy.py", "-k", "lazy"),
           "@ (matmul) waits for its operands"),
    Mutant("io-fork-in-worker-inline", "autofork/runtime/api.py",
           'kind == "cpu" and',
           'kind in ("cpu", "io") and',
           ("tests/test_api.py", "-k", "worker or cascading"),
           "an I/O fork inside a worker runs inline instead of on the worker's threads"),
    # -- rewritten loops ---------------------------------------------------------------
    Mutant("joiner-never-waits", "autofork/runtime/implicit.py",
           "    for index, (position, task) in enumerate(tasks):\n        task.wait()\n",
           "    for index, (position, task) in enumerate(tasks):\n        pass\n",
           ("tests/test_cli.py", "-k", "discarded"),
           "a loop's discarded forks are not waited for at its end"),
    Mutant("joiner-last-failure", "autofork/runtime/implicit.py",
           "    first = failed[0][1]\n", "    first = failed[-1][1]\n",
           ("tests/test_loop_runtime.py", "tests/test_transformer.py",
            "-k", "first or sequential_meaning"),
           "a loop raises its last failure instead of the first in call order"),
    Mutant("no-back-pressure", "autofork/runtime/processes.py",
           "if len(self._queue) >= _MAX_QUEUED and", "if False and",
           ("tests/test_faults.py", "-k", "back_pressure"),
           "fork() never waits when the queue is full"),
    Mutant("unobserved-failure-silent", "autofork/runtime/engine.py",
           "    failures = unobserved_failures()\n", "    failures = []\n",
           ("tests/test_faults.py", "tests/test_cli.py", "-k", "unobserved or nobody"),
           "a failure nobody looked at is not printed at exit, and the status stays 0"),
    # -- the command line and the environment -------------------------------------------
    Mutant("cli-ignores-sequential", "autofork/__main__.py",
           'run.add_argument("--sequential", action="store_true",',
           'run.add_argument("--sequential", action="store_const", const=False, default=False,',
           ("tests/test_cli.py", "-k", "sequential"),
           "--sequential is accepted and ignored"),
    Mutant("cli-ignores-workers", "autofork/__main__.py",
           '"workers": options.workers,', '"workers": None,',
           ("tests/test_cli.py", "-k", "workers_and_threads and option"),
           "--workers is accepted and ignored"),
    Mutant("cli-ignores-threads", "autofork/__main__.py",
           '"threads": options.threads,', '"threads": None,',
           ("tests/test_cli.py", "-k", "workers_and_threads and option"),
           "--threads is accepted and ignored"),
    Mutant("env-ignores-workers", "autofork/runtime/config.py",
           'changes["workers"] = _positive_int("AUTOFORK_WORKERS", env["AUTOFORK_WORKERS"])',
           'pass',
           ("tests/test_cli.py", "-k", "workers_and_threads and environment"),
           "AUTOFORK_WORKERS is ignored"),
    Mutant("env-ignores-threads", "autofork/runtime/config.py",
           'changes["threads"] = _positive_int("AUTOFORK_THREADS", env["AUTOFORK_THREADS"])',
           'pass',
           ("tests/test_cli.py", "-k", "workers_and_threads and environment"),
           "AUTOFORK_THREADS is ignored"),
    Mutant("include-ignored", "autofork/importhook.py",
           "        if any(_matches(p, name, origin) for p in self.include):\n"
           "            return True\n",
           "",
           ("tests/test_cli.py", "-k", "include_and_exclude"),
           "--include / AUTOFORK_INCLUDE add nothing"),
    Mutant("exclude-ignored", "autofork/importhook.py",
           "        if any(_matches(p, name, origin) for p in self.exclude):\n"
           "            return False\n",
           "",
           ("tests/test_cli.py", "-k", "include_and_exclude"),
           "--exclude / AUTOFORK_EXCLUDE remove nothing"),
    Mutant("env-include-ignored", "autofork/importhook.py",
           'include=parse_patterns([os.environ.get("AUTOFORK_INCLUDE", ""), *include]),',
           'include=parse_patterns([*include]),',
           ("tests/test_cli.py", "-k", "include_and_exclude"),
           "AUTOFORK_INCLUDE is ignored"),
    Mutant("compare-ignores-stderr", "autofork/_clitools.py",
           "if options.compare_stderr and seq.stderr != par.stderr:",
           "if False and seq.stderr != par.stderr:",
           ("tests/test_cli.py", "-k", "compare_stderr"),
           "--compare-stderr compares nothing"),
    # -- the rewriter ------------------------------------------------------------------
    Mutant("try-rule-off", "autofork/transformer.py",
           '        self._in_region("try", node.body)\n', "        self.visit(node.body)\n",
           ("tests/test_transformer_properties.py", "-k", "programs"),
           "a fork inside a try body is not finished before the body ends"),
    Mutant("with-rule-off", "autofork/transformer.py",
           '        self._in_region("with", node.body)\n', "        self.visit(node.body)\n",
           ("tests/test_transformer_properties.py", "-k", "programs"),
           "a fork inside a with body is not finished before the body ends"),
    # -- Ctrl-C and the statistics --------------------------------------------------------
    Mutant("ctrl-c-kills-nothing", "autofork/runtime/engine.py",
           "    _interrupted = True\n    shutdown(kill=True)\n", "    pass\n",
           ("tests/test_faults.py", "-k", "ctrl_c"),
           "Ctrl-C leaves the workers running (the exit then waits for them)"),
    Mutant("ctrl-c-waits", "autofork/runtime/engine.py",
           "    _interrupted = True\n    shutdown(kill=True)\n",
           "    _interrupted = True\n    shutdown()\n",
           ("tests/test_dask.py", "-k", "ctrl_c"),
           "Ctrl-C waits for the calls in flight (on Dask: the cluster's tasks) to finish"),
    Mutant("stats-miscounts-inline", "autofork/runtime/stats.py",
           "        entry.inline += 1\n", "",
           ("tests/test_granularity.py", "-k", "stats"),
           "--stats does not count the calls that ran inline"),
    Mutant("stats-forgets-places", "autofork/runtime/stats.py",
           "        entry.places[place] = entry.places.get(place, 0) + calls\n", "",
           ("tests/test_granularity.py", "-k", "stats"),
           "--stats does not say where the calls ran"),
    Mutant("start-method-unchecked", "autofork/runtime/config.py",
           "    if name not in _START_METHODS:\n", "    if False:\n",
           ("tests/test_cli.py", "-k", "start_method"),
           "a start method that does not exist is taken"),
]


def _copy_repository(into: Path) -> Path:
    target = into / "repo"
    shutil.copytree(ROOT, target, ignore=_SKIP)
    return target


def _environment(repo: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AUTOFORK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH", "")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _check_imports_the_copy(repo: Path, env: dict[str, str]) -> None:
    where = subprocess.run([sys.executable, "-c", "import autofork; print(autofork.__file__)"],
                           cwd=repo, env=env, capture_output=True, text=True, check=True).stdout
    if not Path(where.strip()).resolve().is_relative_to(repo.resolve()):
        sys.exit(f"the copy's tests would import autofork from {where.strip()}, not the copy")


def _anchor_count(path: Path, anchor: str) -> int:
    return path.read_text().count(anchor) if path.exists() else 0


def _run(mutant: Mutant, repo: Path, env: dict[str, str]) -> tuple[str, float, str]:
    """(outcome, seconds, last lines of pytest's output) for one mutant."""
    path = repo / mutant.path
    if not path.exists():
        return "not applied", 0.0, f"{mutant.path} does not exist"
    original = path.read_text()
    count = original.count(mutant.old)
    if count != 1:
        return "not applied", 0.0, f"anchor found {count} times in {mutant.path}"
    path.write_text(original.replace(mutant.old, mutant.new))
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-p", "no:randomly", *mutant.tests],
            cwd=repo, env=env, capture_output=True, text=True, timeout=_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "caught", time.monotonic() - began, f"timed out after {_TIMEOUT} s"
    finally:
        path.write_text(original)
    seconds = time.monotonic() - began
    lines = done.stdout.strip().splitlines()
    tail = "\n".join(lines[-3:])
    if done.returncode == 0:
        return "SURVIVED", seconds, tail
    if done.returncode == 1:
        failed = [line.split()[1] for line in lines if line.startswith(("FAILED ", "ERROR "))]
        return "caught", seconds, "by " + (", ".join(failed) or tail)
    return "not applied", seconds, f"pytest exit status {done.returncode}: {tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="run only these mutants (name prefixes)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--anchors", action="store_true",
                        help="only check that each mutant's anchor text is still there, once")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="also say which test caught each mutant")
    options = parser.parse_args(argv)
    chosen = [m for m in MUTANTS
              if not options.names or any(m.name.startswith(n) for n in options.names)]
    if options.list or not chosen:
        for mutant in MUTANTS:
            print(f"{mutant.name:32} {mutant.path}: {mutant.what}\n{'':32} tests: "
                  f"{' '.join(mutant.tests)}")
        return 0 if chosen or not options.names else 2
    if options.anchors:
        missing = [m for m in chosen if _anchor_count(ROOT / m.path, m.old) != 1]
        for mutant in missing:
            print(f"not applied {mutant.name}: anchor found "
                  f"{_anchor_count(ROOT / mutant.path, mutant.old)} times in {mutant.path}")
        print(f"{len(chosen) - len(missing)} of {len(chosen)} mutants apply")
        return 1 if missing else 0
    outcomes: dict[str, list[str]] = {"caught": [], "SURVIVED": [], "not applied": []}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="autofork-mutation-") as scratch:
        repo = _copy_repository(Path(scratch))
        env = _environment(repo)
        _check_imports_the_copy(repo, env)
        for mutant in chosen:
            outcome, seconds, detail = _run(mutant, repo, env)
            outcomes[outcome].append(mutant.name)
            print(f"{outcome:11} {mutant.name:32} {seconds:6.1f} s  {mutant.what}", flush=True)
            if outcome != "caught" or options.verbose:
                print("            " + detail.replace("\n", "\n            "), flush=True)
    applied = len(outcomes["caught"]) + len(outcomes["SURVIVED"])
    print(f"\n{len(outcomes['caught'])} of {applied} applied mutants caught"
          f" ({len(outcomes['not applied'])} not applied) in {time.monotonic() - began:.0f} s")
    if outcomes["SURVIVED"]:
        print("survived: " + ", ".join(outcomes["SURVIVED"]))
    return 0 if not outcomes["SURVIVED"] and not outcomes["not applied"] else 1


if __name__ == "__main__":
    sys.exit(main())
