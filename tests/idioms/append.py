"""Results stored by a loop: append, +=, extend, d[k] = ..., and a name bound in the loop."""
import time

from autofork import implicit_fork
from _uses import show, uses_of_lists


@implicit_fork
def word(i):
    time.sleep(0.01)
    return f"w{i}"


@implicit_fork
def num(i):
    time.sleep(0.01)
    return 3 * i


@implicit_fork
def real(i):
    time.sleep(0.01)
    return i / 4


words, nums, reals = [], [], []
before = id(words), id(nums), id(reals)
for i in range(4):
    words.append(word(i))
    nums += [num(i)]
    value = real(i)
    reals.extend([value])
    if i == 3:
        print("read in the loop that fills it:", __import__("json").dumps(nums))
show("same lists", lambda: (id(words), id(nums), id(reals)) == before)
uses_of_lists(words, nums, reals)
table = {}
for i in range(4):
    table[f"w{i}"] = num(i)
show("dict json", lambda: __import__("json").dumps(table))
show("dict values numpy", lambda: str(__import__("numpy").array(list(table.values())).dtype))
show("last value", lambda: __import__("json").dumps(value))
pair = (1, num(1))
first, second = num(2), num(3)
show("display bound to a name", lambda: __import__("json").dumps(pair))
show("unpacked results", lambda: __import__("json").dumps([first, second]))
