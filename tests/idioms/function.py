"""The same loops inside a function, and a name bound to a result outside any loop."""
import json
import re
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


def main():
    words = []
    nums = {}
    for i in range(4):
        words.append(word(i))
        nums[i] = num(i)
    reals = [real(i) for i in range(4)]
    uses_of_lists(words, list(nums.values()), reals)
    single = num(5)
    twice = single * 2          # lazy arithmetic: still a fork result
    name = word(7)
    print("name json", json.dumps(single), json.dumps(twice))
    print("name int.__add__", int.__add__(single, 1))
    print("name re", bool(re.match("w", name)), "w7".startswith(name), ",".join([name, name]))
    print("name is", single is None, type(single).__name__)
    print("name passed on", num(single))


main()
