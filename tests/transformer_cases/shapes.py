"""Shapes the rewriter meets rarely, for the corpus of tests/test_transformer_properties.py.

Each shape here was found, among the corpus candidates, only in a large file that costs
seconds to rewrite (autofork/transformer.py, asyncio/base_events.py, benchmarks/_goals.py);
tools/corpus.py picks this file instead.  Never run: the test marks every def and rewrites.
"""

from __future__ import annotations

import heapq
import random


def total(xs):
    return sum(x * x for x in xs)


def shapes(xs, heap, *rest):
    best = total(x for x in xs)       # a generator expression, the call's only argument
    heapq.heappush(heap, *rest)       # a module function that changes its first argument
    heapq.heappush(*rest)             # ... given by a star argument
    random.shuffle(*rest)             # the global random generator
    [total([x]) for x in xs]          # comprehensions as statements
    {total([x]) for x in xs}
    total([best])                     # a call as a statement
    if (found := total(xs)) > best:   # an assignment expression
        best = found
    acc, seen = 0, []
    for x in xs:
        acc += total([x])             # an accumulator the loop mentions
        seen.append(total([acc, x]))
    return acc, best, seen


def put(table=[], key=0):             # a parameter whose default the function changes
    table.append(key)


def defaults(rows, x):
    put()                             # the default: state made once, when the def ran
    put(*rows)                        # the changed argument given by a star argument
    put(key=x)


def rebinds(xs):
    xs = xs or []                     # a parameter rebound first, not to a copy of it
    xs.append(1)
    return xs
