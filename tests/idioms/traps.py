"""What the rewriter still cannot see: each line differs under python -m autofork
(pass ``evaluate(x)`` there).  ``check.py`` counts these lines."""
import json
import time

from autofork import implicit_fork
from _uses import show


@implicit_fork
def num(i):
    time.sleep(0.01)
    return 3 * i


def helper(i):
    return num(i)          # a result returned from a function stays a proxy


pair = (1, num(1))         # a tuple (or list) display of results, bound to a name
show("display bound to a name", lambda: json.dumps(pair))
show("result returned by a function", lambda: json.dumps(helper(2)))
show("generator of results", lambda: json.dumps(list(num(i) for i in range(3))))
results = []
for i in range(3):
    results.append(num(i))
    if i == 2:
        show("list read inside the loop that fills it", lambda: json.dumps(results))
