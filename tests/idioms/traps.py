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
    return num(i)          # a result returned from an unmarked function stays a proxy


class Box:
    pass


box = Box()
box.value = num(1)         # a result stored in an attribute ...
table = {}
table["k"] = num(2)        # ... or in a container, outside any loop
show("result returned by a function", lambda: json.dumps(helper(2)))
show("generator of results", lambda: json.dumps(list(num(i) for i in range(3))))
show("result stored in an attribute", lambda: json.dumps(box.value))
show("result stored in a dict outside a loop", lambda: json.dumps(table))
