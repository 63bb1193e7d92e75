"""Results built by comprehensions (a list comprehension is a loop)."""
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


words = [word(i) for i in range(4)]
nums = [num(i) for i in range(4)]
reals = [real(i) for i in range(4)]
uses_of_lists(words, nums, reals)
table = {word(i): num(i) for i in range(4)}
show("dict comprehension json", lambda: __import__("json").dumps(table))
