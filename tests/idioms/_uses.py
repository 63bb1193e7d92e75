"""The everyday uses of a list of results, each printed on one line (an error as its type).

Imported by the idiom scripts next to it; it marks nothing, so the hook leaves it alone
and every use here sees exactly what the script hands it.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import numpy as np
import pandas as pd


def show(label: str, use: Callable[[], Any]) -> None:
    """Print ``label: repr(use())``, or the exception's type and message."""
    try:
        value = use()
    except Exception as exc:  # noqa: BLE001 - the difference is what the test looks for
        value = f"{type(exc).__name__}: {exc}"
    print(f"{label}: {value!r}")


def uses_of_lists(words: list, nums: list, reals: list) -> None:
    """What programs do with lists of str, int and float results."""
    show("join", lambda: ",".join(words))
    show("json", lambda: json.dumps(nums))
    show("re.match", lambda: bool(re.match("w", words[0])))
    show("startswith", lambda: "w1".startswith(words[1]))
    show("int.__add__", lambda: int.__add__(nums[1], 1))
    show("numpy dtype", lambda: str(np.array(nums).dtype))
    show("numpy sum", lambda: int(np.array(nums).sum()))
    show("pandas dtype", lambda: str(pd.Series(reals).dtype))
    show("pandas print", lambda: pd.DataFrame({"x": reals}).to_string())
    show("sum", lambda: sum(nums))
    show("sorted", lambda: sorted(nums, reverse=True))
    show("max", lambda: max(reals))
    show("format", lambda: f"{nums[1]:03d}|{reals[1]:.2f}")
    show("len", lambda: [len(w) for w in words])
    show("index", lambda: words.index("w2"))
    show("equal", lambda: nums == [0, 3, 6, 9])
    show("type", lambda: [type(n).__name__ for n in nums])
    show("in", lambda: "w2" in words)
    show("set", lambda: sorted(set(nums)))
    show("dict", lambda: dict(zip(words, nums)))
    show("str", lambda: str(words))
    show("bytes", lambda: words[0].encode())
    show("struct", lambda: __import__("struct").pack("<4q", *nums).hex())
    show("math", lambda: __import__("math").fsum(reals))
