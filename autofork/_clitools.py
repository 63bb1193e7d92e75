"""``python -m autofork --diff`` and ``--compare``."""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
import subprocess
import sys
import time
from typing import Any

from autofork import importhook
from autofork._clirun import Options


def _module_name(path: str) -> tuple[str, str, str]:
    """(module name, package, import root) of a file, from the ``__init__.py`` files above it."""
    directory, filename = os.path.split(os.path.abspath(path))
    stem = os.path.splitext(filename)[0]
    parts = [] if stem == "__init__" else [stem]
    while os.path.isfile(os.path.join(directory, "__init__.py")):
        directory, package = os.path.split(directory)
        parts.insert(0, package)
    name = ".".join(parts) or stem
    package = name if stem == "__init__" else name.rpartition(".")[0]
    return name, package, directory


def diff(files: list[str]) -> int:
    """Print a unified diff of each file against its rewritten source; 1 on an error."""
    from autofork import transformer

    if not files:
        print("python -m autofork: error: --diff needs at least one FILE", file=sys.stderr)
        return 2
    status = 0
    for path in files:
        try:
            with open(path, "rb") as file:
                source = importlib.util.decode_source(file.read())
            name, package, root = _module_name(path)
            # Imports resolve as they would for a program run from the file's directory.
            resolver = importhook.make_resolver(search_path=[os.path.dirname(os.path.abspath(path)), root])
            if not transformer.needs_rewrite(source, name, resolver, package or None):
                continue  # left byte for byte untouched, as the hook leaves it
            rewritten = transformer.rewrite(source, name, resolver, package or None)
        except (OSError, SyntaxError, UnicodeDecodeError) as why:
            print(f"{path}: {type(why).__name__}: {why}", file=sys.stderr)
            status = 1
            continue
        sys.stdout.writelines(difflib.unified_diff(
            source.splitlines(keepends=True), rewritten.splitlines(keepends=True),
            fromfile=path, tofile=f"{path} (autofork)"))
    return status


def _passed_on(options: Options) -> list[str]:
    """The options of this command line that each run gets too."""
    args: list[str] = []
    for name in ("workers", "threads", "backend", "address"):
        value = getattr(options, name)
        if value is not None:
            args += [f"--{name}", str(value)]
    for name in ("include", "exclude"):
        for value in getattr(options, name):
            args += [f"--{name}", value]
    if options.stats:
        args.append("--stats")
    return args


def _run(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - start, done


def _show_diff(what: str, sequential: bytes, parallel: bytes) -> None:
    lines = difflib.unified_diff(
        sequential.decode(errors="replace").splitlines(keepends=True),
        parallel.decode(errors="replace").splitlines(keepends=True),
        fromfile=f"{what} (sequential)", tofile=f"{what} (parallel)")
    for line in lines:
        sys.stderr.write(line if line.endswith("\n") else line + "\n")


def compare(options: Options, target: list[str]) -> int:
    """Run the program sequentially, then in parallel; 0 when they behave the same.

    Both runs get no stdin.  ``AUTOFORK`` is set to 0 for the first and removed for the
    second, so a sequential default in the environment does not make both runs the same.
    """
    program = (["-m", options.module] if options.module is not None else []) + target
    base = [sys.executable, "-m", "autofork", *_passed_on(options)]
    env = dict(os.environ)
    env.pop("AUTOFORK", None)
    seq_time, seq = _run([*base, "--sequential", *program], {**env, "AUTOFORK": "0"})
    trace = ["--trace", options.trace] if options.trace else []  # the parallel run's
    par_time, par = _run([*base, *trace, *program], env)
    differences = []
    if seq.returncode != par.returncode:
        differences.append("exit_code")
    if seq.stdout != par.stdout:
        differences.append("stdout")
    if options.compare_stderr and seq.stderr != par.stderr:
        differences.append("stderr")
    speedup = seq_time / par_time if par_time > 0 else float("inf")
    report: dict[str, Any] = {
        "same": not differences,
        "differences": differences,
        "sequential": {"seconds": round(seq_time, 4), "exit_code": seq.returncode},
        "parallel": {"seconds": round(par_time, 4), "exit_code": par.returncode},
        "speedup": round(speedup, 3),
    }
    if differences or par.returncode or seq.returncode:
        _show_outputs(options, seq, par, differences)
    if options.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(" ".join(program), report)
    return 1 if differences else 0


def _show_outputs(options: Options, seq: subprocess.CompletedProcess[bytes],
                  par: subprocess.CompletedProcess[bytes], differences: list[str]) -> None:
    if "stdout" in differences:
        _show_diff("stdout", seq.stdout, par.stdout)
    if "stderr" in differences:
        _show_diff("stderr", seq.stderr, par.stderr)
    elif not options.compare_stderr:
        # stderr is not compared, but when a run failed its stderr says why.
        for label, done in (("sequential", seq), ("parallel", par)):
            if done.returncode and done.stderr:
                sys.stderr.write(f"--- stderr of the {label} run (exit code {done.returncode}):\n")
                sys.stderr.write(done.stderr.decode(errors="replace"))


def _print_report(program: str, report: dict[str, Any]) -> None:
    seq, par = report["sequential"], report["parallel"]
    verdict = "same output" if report["same"] else "DIFFERENT: " + ", ".join(report["differences"])
    print(f"autofork --compare {program}\n"
          f"  sequential: {seq['seconds']:.2f} s (exit code {seq['exit_code']})\n"
          f"  parallel:   {par['seconds']:.2f} s (exit code {par['exit_code']})\n"
          f"  speed-up:   {report['speedup']:.2f}x\n"
          f"  result:     {verdict}")
