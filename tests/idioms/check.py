"""Run every idiom script here plainly and under ``python -m autofork``; count the uses
whose output differs (each is an idiom that still needs ``evaluate``).

    python tests/idioms/check.py            # exit status: the number of differing uses
"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "check")))


def output(script: Path, forked: bool) -> list[str]:
    """The script's stdout and stderr lines, run in a subprocess from this folder."""
    command = [sys.executable, *(["-m", "autofork"] if forked else []), script.name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOFORK")}
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True,
                          timeout=120)
    return (done.stdout + done.stderr).splitlines() + [f"exit status {done.returncode}"]


def main() -> int:
    total = uses = 0
    for script in SCRIPTS:
        plain, forked = output(script, False), output(script, True)
        lines = list(difflib.unified_diff(plain, forked, "python", "python -m autofork",
                                          lineterm="", n=0))
        changed = sum(1 for line in lines if line.startswith("-") and not line.startswith("---"))
        uses += len(plain) - 1
        total += changed
        print(f"{script.name}: {changed} differing line(s)")
        for line in lines:
            print("   ", line)
    print(f"{total} of {uses} uses differ under python -m autofork")
    return min(total, 100)


if __name__ == "__main__":
    sys.exit(main())
