"""``python -m benchmarks --quick`` runs and prints the table with every goal's rows.

The figures depend on the machine, so only the shape is checked: every row is there,
and the JSON file has the same rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(150)
def test_quick_benchmarks_print_every_goal(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks._rows import GOALS, SPECS
    finally:
        sys.path.remove(str(ROOT))
    report = tmp_path / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--json", str(report)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=140)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "| # | goal | autofork |" in out, out
    assert set(GOALS) == {"1", "2", "3", "4", "5", "6", "7", "8"}
    for row_id, spec in SPECS.items():
        line = next((l for l in out.splitlines() if l.startswith(f"| {row_id} | ")), None)
        assert line is not None, f"row {row_id} missing:\n{out}"
        assert spec[0] in line
        assert line.rstrip().endswith(("| yes |", "| n/a |", "off) |")), line
    rows = json.loads(report.read_text())["rows"]
    assert [row["id"] for row in rows] == list(SPECS)
    assert all({"autofork", "baselines", "ratio", "target", "met", "status"} <= set(row)
               for row in rows)


def test_help_runs_from_the_script_path_too() -> None:
    done = subprocess.run([sys.executable, "benchmarks/run.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--quick" in done.stdout and "--json" in done.stdout
