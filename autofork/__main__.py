"""``python -m autofork``: run a program with its marked calls forked.

    python -m autofork [options] script.py [args...]
    python -m autofork [options] -m package.module [args...]
    python -m autofork --diff FILE...
    python -m autofork --compare [--json] [--compare-stderr] [options] script.py [args...]

Options end at the script name (or ``-m module``, or ``--``): everything after belongs
to the program, so ``python -m autofork s.py --help`` shows the script's help.  The
program sees ``sys.argv``, ``__name__``, ``__file__``, ``sys.path[0]``, exit codes and
uncaught-exception output as under plain ``python``.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Optional, Sequence

from autofork import _phases
from autofork._clirun import Options

if TYPE_CHECKING:
    import argparse

_PROG = "python -m autofork"
_USAGE = f"""\
{_PROG} [options] script.py [args...]
       {_PROG} [options] -m module [args...]
       {_PROG} --diff FILE...
       {_PROG} --compare [--json] [--compare-stderr] [options] (script.py | -m module) [args...]"""


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog=_PROG, usage=_USAGE, allow_abbrev=False,
        description="Run a Python program with the calls of functions marked "
                    "@implicit_fork running in parallel.",
        epilog="AUTOFORK=0 in the environment is the same as --sequential. "
               "AUTOFORK_INCLUDE / AUTOFORK_EXCLUDE add to --include / --exclude. "
               "AUTOFORK_CACHE=0 turns the cache of rewritten code off; under "
               "PYTHONDONTWRITEBYTECODE it lives in AUTOFORK_CACHE_DIR (else "
               "$XDG_CACHE_HOME/autofork or ~/.cache/autofork). AUTOFORK_LOG=DEBUG times "
               "each phase of the run.",
    )
    run = parser.add_argument_group("running")
    run.add_argument("-m", dest="module", metavar="MODULE",
                     help="run library module MODULE as a script (its arguments follow)")
    run.add_argument("--sequential", action="store_true",
                     help="rewrite nothing and run every fork inline (as AUTOFORK=0)")
    run.add_argument("--workers", type=int, metavar="N", help="worker processes")
    run.add_argument("--threads", type=int, metavar="N", help="most threads for I/O-bound calls")
    run.add_argument("--backend", metavar="NAME", help="local (default), sequential or dask")
    run.add_argument("--address", metavar="ADDR", help="Dask scheduler address, tcp://host:port")
    run.add_argument("--include", action="append", default=[], metavar="PATTERNS",
                     help="also rewrite these modules (names or path globs, comma-separated); "
                          "by default the standard library and site-packages are skipped")
    run.add_argument("--exclude", action="append", default=[], metavar="PATTERNS",
                     help="never rewrite these modules (wins over --include)")
    run.add_argument("--stats", action="store_true", help="print per-function statistics at exit")
    run.add_argument("--trace", metavar="FILE", help="write a Chrome trace of every task to FILE")
    tools = parser.add_argument_group("tools")
    tools.add_argument("--diff", action="store_true",
                       help="print a unified diff of each FILE against its rewritten source")
    tools.add_argument("--compare", action="store_true",
                       help="run the program sequentially, then in parallel; compare exit code "
                            "and stdout, show both times; exit 1 on a difference")
    tools.add_argument("--compare-stderr", action="store_true",
                       help="with --compare: compare stderr too")
    tools.add_argument("--json", action="store_true", help="with --compare: print a JSON report")
    return parser


# Options that take a value: the splitter must skip the value, not take it for the script.
_WITH_VALUE = frozenset({"--workers", "--threads", "--backend", "--address", "--include",
                         "--exclude", "--trace"})


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split at the program: (autofork's options, [script or -m module, *its arguments]).

    argparse cannot stop at the first positional argument by itself (``REMAINDER``
    still takes later ``--options`` as its own), so the split is done here.
    """
    argv = list(argv)
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[:i], argv[i + 1:]
        if arg == "-m":
            return argv[:i], argv[i:]
        if arg.startswith("-m") and not arg.startswith("--"):
            return argv[:i], ["-m", arg[2:], *argv[i + 1:]]
        if not arg.startswith("-") or arg == "-":
            return argv[:i], argv[i:]
        i += 2 if arg in _WITH_VALUE else 1
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (``SystemExit`` from the program passes)."""
    _phases.setup_from_environment()
    ours, target = split_argv(sys.argv[1:] if argv is None else argv)
    options = Options()
    if ours:  # argparse only when there is something to parse (it costs ms to import)
        _parser().parse_args(ours, namespace=options)
    if target[:1] == ["-m"]:
        if len(target) < 2:
            _parser().error("argument -m: expected one argument")
        options.module, target = target[1], target[2:]
    if options.diff:
        from autofork import _clitools

        return _clitools.diff(target)
    if options.module is None and not target:
        _parser().error("give a script to run, or -m module")
    if options.compare:
        from autofork import _clitools

        return _clitools.compare(options, target)
    if options.json or options.compare_stderr:
        _parser().error("--json and --compare-stderr go with --compare")
    try:
        _configure(options)
    except ValueError as why:  # a bad --workers, --backend...: say so as argparse would
        _parser().error(str(why))
    return run(options, target)


def run(options: Options, target: list[str]) -> int:
    """Run the script (``target[0]``) or module (``options.module``) as ``__main__``."""
    from autofork import _clirun, importhook

    began = _phases.STARTED
    sequential = importhook.disabled()
    include = importhook.parse_patterns(options.include)
    exclude = importhook.parse_patterns(options.exclude)
    # Children (and workers that install the hook) see the same rules.
    _export("AUTOFORK_INCLUDE", include)
    _export("AUTOFORK_EXCLUDE", exclude)
    if not sequential:
        importhook.install()
    _phases.note("hook installed" if not sequential else "start-up, AUTOFORK=0", began)
    try:
        if options.module is not None:
            program = _clirun.module(options.module)
            sys.argv = [program.path, *target]
        else:
            _set_path0(target[0])
            program = _clirun.script(target[0])
            sys.argv = list(target)
    except _clirun.NoProgram as why:
        print(why, file=sys.stderr)
        return 1 if options.module is not None else 2
    try:
        code = _clirun.compile_program(program, rewrite=not sequential)
    except SyntaxError as error:
        error.__traceback__ = None  # as python prints it: no traceback, only the place
        sys.excepthook(type(error), error, None)
        return 1
    return _clirun.execute(code, program.module())


def _set_path0(script: str) -> None:
    # python puts the script's directory first on sys.path, not the current directory
    # that "python -m autofork" put there; under -P (safe_path) it puts nothing.
    if getattr(sys.flags, "safe_path", False):
        return
    directory = os.path.dirname(os.path.abspath(script))
    if os.path.isdir(script):
        directory = os.path.abspath(script)
    if sys.path and sys.path[0] in ("", os.getcwd()):
        sys.path[0] = directory
    else:
        sys.path.insert(0, directory)


def _export(name: str, patterns: tuple[str, ...]) -> None:
    if patterns:
        current = os.environ.get(name, "")
        os.environ[name] = ",".join(filter(None, [current, *patterns]))


def _configure(options: Options) -> None:
    settings: dict[str, Any] = {
        "workers": options.workers, "threads": options.threads, "backend": options.backend,
        "address": options.address, "trace": options.trace,
        "stats": True if options.stats else None,
    }
    if options.sequential:
        settings["backend"] = "sequential"
    settings = {key: value for key, value in settings.items() if value is not None}
    if options.sequential:
        os.environ["AUTOFORK"] = "0"  # for the hook, and for the program's children
    if settings:
        from autofork import configure

        configure(**settings)


if __name__ == "__main__":
    sys.exit(main())
