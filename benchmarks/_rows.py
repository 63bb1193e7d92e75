"""The rows of the table: what each one measures, its target, and how a row is judged.

Every row is declared here, so that the table always has all of them: a goal whose
process crashed or timed out still shows its rows, with the error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

# id -> (goal, unit of the figures, how the ratio is formed, target kind, target value)
#   target kind "ratio<=": ratio <= value; "ratio>=": ratio >= value; "ratio<": ratio < value;
#   "value<=": the autofork figure itself <= value (the ratio is shown for information);
#   "over<=": the ratio column holds autofork - plain, in the row's unit; it must be <= value.
SPECS: dict[str, tuple[str, str, str, str, float]] = {
    "0a": ("whole process: a 5-line marked script, its rewrite cached", "ms",
           "autofork − plain", "over<=", 40.0),
    "0b": ("whole process: the same, first (rewriting) run", "ms",
           "autofork − plain", "over<=", 300.0),
    "0c": ("whole process: the same under AUTOFORK=0", "ms",
           "autofork − plain", "over<=", 15.0),
    "0d": ("whole process: 20,000 calls of ~30 µs", "s",
           "plain / autofork", "ratio>=", 1.8),
    "0e": ("whole process: 300,000 calls of ~1 µs", "s",
           "autofork / plain", "ratio<=", 1.1),
    "0f": ("whole process: 8 calls of 250 ms", "s",
           "plain / autofork", "ratio>=", 1.9),
    "0g": ("whole process: fib(32) by implicit recursion", "s",
           "plain / autofork", "ratio>=", 1.5),
    "0h": ("whole process: a chain state = step(state, k), 20,000 x ~20 µs", "s",
           "autofork / plain", "ratio<=", 1.2),
    "0i": ("whole process: examples/primes.py", "s",
           "plain / autofork", "ratio>=", 1.8),
    "0j": ("whole process: total += count_words(doc), a Counter, 32 calls of ~100 ms", "s",
           "plain / autofork", "ratio>=", 1.5),
    "1a": ("thread fork, one at a time: evaluate(fork(io_noop, i))", "µs/call",
           "autofork / TPE", "ratio<=", 1.0),
    "1b": ("thread fork, batch: submit N, then evaluate all", "µs/call",
           "autofork / TPE", "ratio<=", 1.0),
    "2a": ("process fork, batch of N trivial calls, warm pool", "µs/call",
           "autofork / PPE", "value<=", 20.0),
    "2b": ("process fork vs ProcessPoolExecutor (PPE)", "µs/call",
           "autofork / PPE", "ratio<", 1 / 3),
    "2c": ("process fork vs the best peer (Pool.apply_async, joblib)", "µs/call",
           "autofork / best peer", "ratio<", 1.0),
    "3a": ("granularity: 20,000 calls of a 20 µs @implicit_fork function", "s",
           "plain / autofork", "ratio>=", 1.8),
    "3b": ("granularity: 100,000 calls of a 1 µs @implicit_fork function", "s",
           "autofork / plain", "ratio<=", 1.1),
    "4": ("coarse: 8 calls of 250 ms, fresh process, start-up included", "s",
          "plain / autofork", "ratio>=", 1.9),
    "5": ("recursion: fib(32) under python -m autofork, timed in the script", "s",
          "plain / autofork", "ratio>=", 1.5),
    "6a": ("I/O: 200 concurrent @io_bound sleeps of 50 ms, cold pool", "s",
           "autofork / TPE(200)", "value<=", 0.08),
    "6b": ("I/O: 200 coroutines sleeping 50 ms", "s",
           "autofork / asyncio.gather", "value<=", 0.06),
    "7a": ("import of a 3,000-line marked module, from the cache", "ms",
           "autofork / plain", "ratio<=", 1.2),
    "7b": ("first (rewriting) import of the same module", "ms",
           "autofork / parse", "ratio<=", 2.0),
    "8a": ("memory of one pending proxy (tracemalloc)", "KB",
           "autofork / PPE future", "value<=", 1.0),
    "8b": ("memory after 100,000 forks evaluated and dropped", "MB",
           "", "value<=", 5.0),
}

GOALS: dict[str, list[str]] = {}
for _row_id in SPECS:
    GOALS.setdefault(_row_id[0], []).append(_row_id)


@dataclass
class Row:
    """One line of the table.  Figures are in the row's unit; None when not measured."""

    id: str
    autofork: Optional[float] = None
    baselines: list[tuple[str, Optional[float]]] = field(default_factory=list)
    ratio: Optional[float] = None
    status: str = "ok"  # "ok", "error: ...", "not available: ..."
    note: str = ""

    @property
    def goal(self) -> str:
        return SPECS[self.id][0]

    @property
    def unit(self) -> str:
        return SPECS[self.id][1]

    @property
    def ratio_of(self) -> str:
        return SPECS[self.id][2]

    @property
    def target(self) -> str:
        kind, value = SPECS[self.id][3], SPECS[self.id][4]
        shown = "1/3" if abs(value - 1 / 3) < 1e-9 else f"{value:g}"
        if kind == "value<=":
            return f"≤ {shown} {self.unit}"
        if kind == "over<=":
            return f"≤ +{shown} {self.unit}"
        return {"ratio<=": "≤ ", "ratio>=": "≥ ", "ratio<": "< "}[kind] + shown

    def met(self) -> Optional[bool]:
        kind, value = SPECS[self.id][3], SPECS[self.id][4]
        if self.status != "ok":
            return None
        measured = self.autofork if kind == "value<=" else self.ratio
        if measured is None:
            return None
        if kind == "ratio<":
            return measured < value
        if kind == "ratio>=":
            return measured >= value
        return measured <= value

    def miss(self) -> Optional[float]:
        """How far off a missed target is, as a factor > 1 (None when met or unknown)."""
        if self.met() is not False:
            return None
        kind, value = SPECS[self.id][3], SPECS[self.id][4]
        measured = self.autofork if kind == "value<=" else self.ratio
        assert measured is not None
        if kind == "ratio>=":
            return value / measured if measured > 0 else float("inf")
        return measured / value if value > 0 else float("inf")

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(goal=self.goal, unit=self.unit, ratio_of=self.ratio_of,
                    target=self.target, met=self.met())
        data["baselines"] = {name: value for name, value in self.baselines}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "Row":
        return cls(id=data["id"], autofork=data.get("autofork"),
                   baselines=list(data.get("baselines", {}).items()),
                   ratio=data.get("ratio"), status=data.get("status", "ok"),
                   note=data.get("note", ""))
