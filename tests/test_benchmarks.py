"""The benchmark table's shape: every row is shown, with a verdict, and in the JSON report.

The figures depend on the machine, so only the shape is checked.  The table is built
from rows of every kind (met, missed, failed) without measuring anything; one real run
of a single cheap goal checks the plumbing (a goal process, its rows, the JSON file).
``python -m benchmarks --quick`` runs every goal (a minute or more on 2 cores).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from benchmarks import run
    from benchmarks._goals import GOAL_FUNCTIONS
    from benchmarks._rows import GOALS, SPECS, Row
finally:
    sys.path.remove(str(ROOT))


def _verdict_of(line: str) -> str:
    return line.rstrip(" |").rpartition("|")[2].strip()


def test_every_goal_has_a_measuring_function_and_rows() -> None:
    assert set(GOALS) == set(GOAL_FUNCTIONS) == {"0", "1", "2", "3", "4", "5", "6", "7", "8"}
    assert list(GOALS)[0] == "0"  # the whole-process figures come first


@pytest.mark.parametrize("figure, ratio, status, verdict", [
    (1.0, 1e-3, "ok", "yes"), (1.0, 1e6, "ok", "NO"), (None, None, "error: boom", "n/a")])
def test_the_table_shows_every_row_with_its_verdict(figure: float | None, ratio: float | None,
                                                    status: str, verdict: str) -> None:
    rows = []
    for row_id, spec in SPECS.items():
        kind = spec[3]
        good = ratio if kind != "ratio>=" or ratio is None else 1 / ratio
        value = figure if kind != "value<=" or figure is None else (
            0.0 if verdict == "yes" else 1e9)
        rows.append(Row(row_id, autofork=value, baselines=[("plain", 1.0)], ratio=good,
                        status=status, note="a note"))
    out = run.table(rows)
    for row in rows:
        line = next(l for l in out.splitlines() if l.startswith(f"| {row.id} | "))
        assert row.goal in line
        assert _verdict_of(line).startswith(verdict), line
    assert all(f"- {row.id}: a note" in run.notes(rows) for row in rows)
    again = [Row.from_json(json.loads(json.dumps(row.to_json()))) for row in rows]
    assert [(r.id, r.autofork, r.ratio, r.status, r.met()) for r in again] == [
        (r.id, r.autofork, r.ratio, r.status, r.met()) for r in rows]


def test_a_start_up_row_shows_the_difference_to_plain_python() -> None:
    row = Row("0a", autofork=52.0, baselines=[("plain", 20.0)], ratio=32.0)
    line = run.table([row]).splitlines()[-1]
    assert "+32.0 (autofork − plain)" in line and "≤ +40 ms" in line and line.endswith("| yes |")
    assert Row("0a", autofork=90.0, ratio=70.0).met() is False


@pytest.mark.timeout(150)
def test_a_real_run_of_one_goal_prints_its_rows_and_the_json(tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--goals", "6",
                           "--json", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| # | goal | autofork |" in done.stdout, done.stdout
    for row_id in GOALS["6"]:
        line = next(l for l in done.stdout.splitlines() if l.startswith(f"| {row_id} | "))
        assert _verdict_of(line) in ("yes", "n/a") or _verdict_of(line).startswith("NO ("), line
    rows = json.loads(report.read_text())["rows"]
    assert [row["id"] for row in rows] == GOALS["6"]
    assert all({"autofork", "baselines", "ratio", "target", "met", "status"} <= set(row)
               for row in rows)


def test_help_runs_from_the_script_path_too() -> None:
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--json" in done.stdout
