"""Run every benchmark goal next to its baselines and print the table.

    python -m benchmarks                 # the full run (5-15 minutes on 2 cores)
    python -m benchmarks --quick         # a smaller version (under a minute)
    python -m benchmarks --json FILE     # also write the rows as JSON
    python -m benchmarks --goals 2,5     # only these goals
    python benchmarks/run.py ...         # the same

Each goal runs in its own process (fresh interpreter, its own time limit); autofork and
the goal's baselines are measured in that same process, interleaved, best of a few runs.
A goal that fails or hangs shows its rows with the error; the table always prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks._goals import MARK  # noqa: E402
from benchmarks._measure import ROOT, clean_env  # noqa: E402
from benchmarks._rows import GOALS, Row  # noqa: E402

# Time limits, seconds: (per goal, whole run).  The full run must end within 15 minutes.
LIMITS = {False: (200.0, 870.0), True: (45.0, 150.0)}
# Goal 0 runs each case as whole processes, several times, three ways: it needs longer.
GOAL_LIMITS = {"0": {False: 540.0, True: 60.0}}

LEGEND = ("TPE = concurrent.futures.ThreadPoolExecutor, PPE = ProcessPoolExecutor, "
          "Pool = multiprocessing.Pool (apply_async / map), joblib = Parallel(n_jobs=2), "
          "plain = the same calls in a plain loop. Ratios are of the figures shown.")


def run_goal(goal: str, quick: bool, timeout: float) -> tuple[list[Row], float]:
    """Measure one goal in a fresh process; its rows (errors included) and wall time."""
    command = [sys.executable, "-c", "from benchmarks._goals import main; main()", goal]
    if quick:
        command.append("--quick")
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    failure = ""
    try:
        out, err = process.communicate(timeout=max(1.0, timeout))
        if process.returncode != 0:
            lines = [line for line in err.strip().splitlines() if line.strip()]
            failure = (f"error: goal process exited with {process.returncode}"
                       + (f": {lines[-1].strip()[:100]}" if lines else ""))
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # the goal's process group, workers too
        except ProcessLookupError:
            pass
        out, err = process.communicate()
        failure = f"error: timed out after {timeout:.0f} s"
    rows = {}
    for line in out.splitlines():
        if line.startswith(MARK):
            row = Row.from_json(json.loads(line[len(MARK):]))
            rows[row.id] = row
    for row_id in GOALS[goal]:
        if row_id not in rows:
            rows[row_id] = Row(row_id, status=failure or "error: no result")
    return [rows[row_id] for row_id in GOALS[goal]], time.perf_counter() - start


def number(value: Optional[float]) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 0.1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cells(row: Row) -> list[str]:
    if row.status == "ok":
        autofork = f"{number(row.autofork)} {row.unit}"
    else:
        autofork = row.status.replace("|", "/")
    baselines = ", ".join(f"{name} {number(value) if value is not None else 'error'}"
                          for name, value in row.baselines) or "—"
    sign = "+" if row.target.startswith("≤ +") and row.ratio is not None and row.ratio >= 0 else ""
    ratio = f"{sign}{number(row.ratio)} ({row.ratio_of})" if row.ratio is not None else "—"
    met = row.met()
    verdict = "n/a" if met is None else "yes" if met else f"NO ({row.miss():.2f}× off)"
    return [row.id, row.goal, autofork, baselines, ratio, row.target, verdict]


def table(rows: list[Row]) -> str:
    header = ["#", "goal", "autofork", "baselines (same unit)", "ratio", "target", "met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


def notes(rows: list[Row]) -> str:
    return "\n".join(f"- {row.id}: {row.note}" for row in rows if row.note)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_note(before: Optional[float]) -> str:
    """The load average before and after: other work on the machine skews every figure."""
    after = load_average()
    if before is None or after is None:
        return ""
    return f", load average {before:.1f} before, {after:.1f} after"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    parser.add_argument("--goals", metavar="LIST", default=",".join(GOALS),
                        help="comma-separated goals to run (default: all)")
    options = parser.parse_args(argv)
    asked = {g.strip() for g in options.goals.split(",") if g.strip()}
    unknown = sorted(asked - set(GOALS))
    chosen = [g for g in GOALS if g in asked]
    if unknown:
        parser.error(f"no such goal: {', '.join(unknown)} (goals: {', '.join(GOALS)})")

    per_goal, whole = LIMITS[options.quick]
    load = load_average()
    started = time.perf_counter()
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    command = "python -m benchmarks" + (" --quick" if options.quick else "")
    rows: list[Row] = []
    for goal in chosen:
        left = whole - (time.perf_counter() - started)
        if left < 5:
            rows += [Row(r, status="error: skipped, the run's time limit was spent")
                     for r in GOALS[goal]]
            continue
        print(f"goal {goal} ...", end=" ", file=sys.stderr, flush=True)
        limit = GOAL_LIMITS.get(goal, {}).get(options.quick, per_goal)
        goal_rows, seconds = run_goal(goal, options.quick, min(limit, left))
        print(f"{seconds:.1f} s", file=sys.stderr, flush=True)
        rows += goal_rows
    total = time.perf_counter() - started

    print(f"autofork benchmarks, {when}: `{command}`, Python {platform.python_version()}, "
          f"{cores()} cores, {platform.system()} {platform.machine()}, {total:.0f} s"
          f"{load_note(load)}")
    print()
    print(table(rows))
    print()
    print(LEGEND)
    if notes(rows):
        print()
        print(notes(rows))
    met = [row.met() for row in rows]
    print()
    print(f"{met.count(True)} of {len(rows)} rows met, {met.count(False)} missed, "
          f"{met.count(None)} not measured.")
    if options.json:
        report = {"date": when, "command": command, "python": platform.python_version(),
                  "cores": cores(), "load_average_before": load, "seconds": round(total, 1), "quick": options.quick,
                  "rows": [row.to_json() for row in rows]}
        Path(options.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
