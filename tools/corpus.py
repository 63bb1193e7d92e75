"""Pick the corpus of tests/test_transformer_properties.py: few files, every branch.

    pip install coverage          # this tool only; not a dependency of autofork or its tests
    python tools/corpus.py        # a few minutes on 2 cores; prints the pick

The candidates are every .py of the standard library's json, email and asyncio packages
and of this repository (``CANDIDATES`` in the test module).  For each candidate the tool
runs the two corpus tests (the libcst round trip of an unmarked file, and the marked file's
compile / lines / idempotence check) under coverage, and records the branches (arcs) of
autofork's own code each one runs.  Then, greedily, it picks the file that adds the most
new arcs per second of rewriting, until the pick runs every arc the whole candidate set
runs.  Paste the printed ``PICKED`` list into the test module.

Rerun it when the rewriter (transformer.py, effects.py) changes much: new code reached
only by files outside the pick shows as arcs the pick misses (``--check`` prints them).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _measure(tests, path: Path, kind: str, cov) -> tuple[float, set]:
    test = (tests.test_marked_corpus_compiles_keeps_lines_and_is_idempotent if kind == "marked"
            else tests.test_corpus_round_trips_through_the_libcst_pass)
    began = time.perf_counter()
    test(path)
    seconds = time.perf_counter() - began
    cov.erase()
    cov.start()
    try:
        test(path)
    finally:
        cov.stop()
    data = cov.get_data()
    arcs = {(Path(f).relative_to(ROOT).as_posix(), *arc)
            for f in data.measured_files() for arc in data.arcs(f) or ()}
    return seconds, arcs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only say which arcs the current PICKED misses, and where they are")
    parser.add_argument("--cache", metavar="FILE", type=Path,
                        help="reuse the measurements saved in FILE, or save them there "
                             "(delete it after changing autofork or the candidates)")
    options = parser.parse_args(argv)
    try:
        import coverage
    except ImportError:
        sys.exit("tools/corpus.py needs coverage: pip install coverage")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import test_transformer_properties as tests

    cov = coverage.Coverage(branch=True, data_file=None, include=[str(ROOT / "autofork" / "*")])
    unmarked = set(tests._unmarked(tests.CANDIDATES))
    found: dict[tuple[str, str], tuple[float, set]] = {}
    if options.cache is not None and options.cache.exists():
        found = pickle.loads(options.cache.read_bytes())
    else:
        for path in tests.CANDIDATES:
            for kind in ("unmarked", "marked"):
                if kind == "marked" or path in unmarked:
                    found[(tests.corpus_id(path), kind)] = _measure(tests, path, kind, cov)
        if options.cache is not None:
            options.cache.write_bytes(pickle.dumps(found))
    everything = set().union(*(arcs for _, arcs in found.values()))
    if options.check:
        picked = set(tests.PICKED)
        covered = set().union(*(arcs for (name, _), (_, arcs) in found.items() if name in picked))
        missing = everything - covered
        for arc in sorted(missing):
            where = sorted(name for (name, _), (_, arcs) in found.items() if arc in arcs)
            print(f"missed {arc} (run by {', '.join(where[:3])})")
        print(f"PICKED runs {len(covered)} of the {len(everything)} arcs the candidates run")
        return 1 if missing else 0
    # Greedy: most new arcs per second (a file is one choice: both tests run it).
    per_file: dict[str, tuple[float, set]] = {}
    for (name, _), (seconds, arcs) in found.items():
        total, union = per_file.get(name, (0.0, set()))
        per_file[name] = (total + seconds, union | arcs)
    left, pick, cost = set(everything), [], 0.0
    while left:
        name = max(per_file, key=lambda n: len(per_file[n][1] & left) / (per_file[n][0] + 0.01))
        seconds, arcs = per_file[name]
        if not arcs & left:
            break
        pick.append(name)
        cost += seconds
        left -= arcs
    whole = sum(seconds for seconds, _ in per_file.values())
    print(f"# {len(pick)} of {len(per_file)} files, {cost:.1f} s of {whole:.1f} s "
          f"(this interpreter, no typeguard), all {len(everything)} arcs")
    print("PICKED = [")
    for name in sorted(pick):
        others = set().union(*(per_file[n][1] for n in pick if n != name))
        print(f'    "{name}",  # {per_file[name][0]:.2f} s, '
              f'{len(per_file[name][1] - others)} arcs no other picked file runs')
    print("]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
