"""Reductions: the accumulator is not otherwise read in the loop."""
import collections
import time

from autofork import implicit_fork
from _uses import show


@implicit_fork
def count_words(text):
    time.sleep(0.01)
    return collections.Counter(text.split())


@implicit_fork
def num(i):
    time.sleep(0.01)
    return 3 * i


docs = ["a b a", "b c", "c c a", "d"] * 2
total = collections.Counter()
for doc in docs:
    total += count_words(doc)
show("counter +=", lambda: sorted(total.items()))
merged = collections.Counter()
for doc in docs:
    merged.update(count_words(doc))
show("counter update", lambda: sorted(merged.items()))
summed = collections.Counter()
for doc in docs:
    summed = summed + count_words(doc)
show("counter acc = acc +", lambda: sorted(summed.items()))
acc = 0
for i in range(5):
    acc += num(i)
show("int +=", lambda: __import__("json").dumps(acc))
seen = []
for i in range(5):
    seen.extend([num(i)] * 2)
show("extend", lambda: __import__("json").dumps(seen))
