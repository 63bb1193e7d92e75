"""Globals read at call time: a call in a worker sees the module globals its function
reads as they are when it is called, not as they were when the function was first sent.

A function goes to the workers once (``processes._FunctionCache``), by value with the
globals it reads (``__main__``, rewritten modules) or by reference (imported there).  The
program may rebind those globals later (``SCALE = 10`` between two loops), or another
module may (``settings.FACTOR = 7``).  So each function gets a ``Watch``: the globals it
reads, found once from its code and from the same-module functions it calls, with
the values they had when the function was pickled.  Each call asks ``Watch.state()``:

* nothing rebound (the usual case): one generated expression tests each value's identity
  (``g["SCALE"] is last[0] and ...``), about 0.1 µs, and the call carries the current
  state, unchanged;
* something rebound: a new state, numbered from one counter for the whole process, whose
  bytes hold every global rebound since the function was pickled (not the others: a
  large global that never changes is never sent again).  The pool sends a worker those
  bytes only when the worker's copy of the function has another state
  (``worker._apply_globals`` writes them into the function's globals, or into the
  module for another module's attribute).

A global changed in place keeps its identity: a small built-in container of plain data
(a dict, list or set of at most 256 numbers, strings or such containers, three levels
down: ``CONFIG["k"] = v``, ``STOP_WORDS.add(w)``) is compared with a deep copy of itself
at each call (about 1 µs for 20 items), and sent again when it differs.  So is any
global that the module's code changes in place while forks may run (``seen.append(x)``,
``table[k] = v``, ``config.scale = 3``: the rewriter lists them in the module's
``__autofork_in_place__``), whatever its size: with a deep copy, or its pickled bytes
when it is not plain data.  A larger one changed only from elsewhere (another module,
an alias) is not seen: pass such a value as an argument.  Globals read through ``getattr`` or ``globals()`` are not
seen either: only names in the code count.
"""

from __future__ import annotations

import itertools
import sys
import types
from typing import Any, Callable, Optional

from .errors import NotSendable
from .serialize import dumps

_IN_PLACE_NAME = "__autofork_in_place__"  # transformer.IN_PLACE_NAME (no libcst import here)

__all__ = ["Watch", "watch"]

_states = itertools.count(1)  # 0 is "as pickled with the function"
_OWN = ""  # the owner of a function's own globals (a module name otherwise)


class Watch:
    """The globals one function reads, and the state of their values last seen."""

    __slots__ = ("_reads", "_dicts", "_same", "_last", "_in_place", "_copies", "_changed",
                 "current")

    def __init__(self, reads: list[tuple[str, dict, str]]) -> None:
        self._reads = reads
        distinct: dict[int, dict] = {}
        for _, namespace, _ in reads:
            distinct.setdefault(id(namespace), namespace)
        self._dicts = tuple(distinct.values())
        self._same = _identity_test(reads, self._dicts)
        self._last = tuple(namespace[name] for _, namespace, name in reads)
        # The globals the module's code changes in place (the rewriter names them):
        # compared at each call whatever their size.
        self._in_place = frozenset(
            index for index, (_, namespace, name) in enumerate(reads)
            if name in namespace.get(_IN_PLACE_NAME, ()))
        # index -> a deep copy of a small built-in container (or the pickled bytes of a
        # global changed in place), to see it changed in place
        self._copies: dict[int, Any] = _copies(self._last, self._in_place)
        self._changed: dict[tuple[str, str], Any] = {}
        self.current: tuple[int, Optional[bytes]] = (0, None)  # (state, bytes to send)

    def state(self) -> tuple[int, Optional[bytes]]:
        """(state number, pickled rebound globals or None): the globals as they are now.
        Raises what pickling a rebound value raises."""
        try:
            if self._same(*self._dicts, self._last) and (
                    not self._copies or self._unchanged()):
                return self.current
        except KeyError:  # a global was deleted: it keeps its last value in the workers
            pass
        return self._update()

    def _unchanged(self) -> bool:
        last = self._last
        for index, copy in self._copies.items():
            try:
                if _differs(last[index], copy, strict=True):
                    return False
            except Exception:  # noqa: BLE001 - cannot compare: no longer watched in place
                del self._copies[index]
                return True
        return True

    def state_for(self, name: str) -> tuple[int, Optional[bytes]]:
        """``state()``; NotSendable naming the function ``name`` if a rebound value cannot
        be pickled."""
        try:
            return self.state()
        except Exception as error:  # noqa: BLE001
            raise NotSendable(f"fork({name}, ...): a global it reads was rebound to a value "
                              f"that cannot be sent to a worker process: "
                              f"{type(error).__name__}: {error}. Pass the value as an "
                              "argument instead.") from error

    def _update(self) -> tuple[int, Optional[bytes]]:
        now = []
        for index, ((owner, namespace, name), last) in enumerate(zip(self._reads, self._last)):
            value = namespace.get(name, last)
            if value is not last or index in self._copies and _differs(value, self._copies[index]):
                self._changed[(owner, name)] = value
            now.append(value)
        data = dumps(self._changed)
        self._last = tuple(now)
        self._copies = _copies(self._last, self._in_place)
        self.current = (next(_states), data)
        return self.current


# A global of these types, this small, is compared with a copy of itself at each call,
# so that a change in place (``CONFIG["scale"] = 3``, ``STOP_WORDS.add(w)``) is seen.
_CONTAINERS = (dict, list, set)
_IN_PLACE_LIMIT = 256


_SCALARS = (int, float, complex, str, bool, type(None))


def _plain_data(value: Any, depth: int = 3, limit: Optional[int] = _IN_PLACE_LIMIT) -> bool:
    """Small built-in data all the way down (what a configuration holds): cheap to copy
    and to compare, unlike an array or an object of the program's."""
    if isinstance(value, _SCALARS) or isinstance(value, bytes) and len(value) <= 1024:
        return True
    if depth == 0 or not isinstance(value, (*_CONTAINERS, tuple, frozenset)):
        return False
    if limit is not None and len(value) > limit:
        return False
    items = value.items() if isinstance(value, dict) else ((item, None) for item in value)
    return all(_plain_data(key, depth - 1, limit) and _plain_data(item, depth - 1, limit)
               for key, item in items)


class _Pickled:
    """The pickled bytes of a global changed in place that is not plain data."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _copies(values: tuple, in_place: frozenset = frozenset()) -> dict[int, Any]:
    """index -> what to compare the value with at the next call: a deep copy of a small
    built-in container of plain data, or of a global the module changes in place (any
    size; its pickled bytes when it is not plain data: an object of the program's)."""
    import copy

    out: dict[int, Any] = {}
    for index, value in enumerate(values):
        if index in in_place:
            if isinstance(value, _SCALARS) or type(value) in (tuple, frozenset, bytes):
                continue  # immutable: a change rebinds it, which the identity test sees
            if isinstance(value, _CONTAINERS) and _plain_data(value, depth=1, limit=None):
                out[index] = copy.copy(value)  # flat: as good as a deep copy, in C
            elif isinstance(value, _CONTAINERS) and _plain_data(value, limit=None):
                out[index] = copy.deepcopy(value)
            else:
                try:
                    out[index] = _Pickled(dumps(value))
                except Exception:  # noqa: BLE001 - cannot be sent anyway: fails at the call
                    pass
        elif isinstance(value, _CONTAINERS) and _plain_data(value):
            out[index] = copy.deepcopy(value)
    return out


def _differs(value: Any, copy: Any, strict: bool = False) -> bool:
    """Whether ``value`` is no longer what ``copy`` (see ``_copies``) holds; a failing
    comparison raises with ``strict``, else counts as a difference."""
    try:
        if type(copy) is _Pickled:
            return dumps(value) != copy.data
        return bool(value != copy)
    except Exception:  # noqa: BLE001
        if strict:
            raise
        return True


def watch(fn: Callable[..., Any]) -> Optional[Watch]:
    """The watch of the globals ``fn`` reads, or None when it reads none we can see."""
    function = fn.__func__ if isinstance(fn, types.MethodType) else fn
    if type(function) is not types.FunctionType:
        return None
    reads = _reads(function)
    return Watch(reads) if reads else None


def _reads(fn: types.FunctionType) -> list[tuple[str, dict, str]]:
    """(owner, namespace, name) of each global that ``fn`` and the functions of its
    module that it calls read: its own module's, and attributes of modules it names."""
    namespace = fn.__globals__
    names: set[str] = set()
    seen: set[int] = set()
    todo = [fn.__code__]
    while todo:
        code = todo.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        for name in code.co_names:
            names.add(name)
            value = namespace.get(name)
            if type(value) is types.FunctionType and value.__globals__ is namespace:
                todo.append(value.__code__)
        todo.extend(const for const in code.co_consts if isinstance(const, types.CodeType))
    reads = [(_OWN, namespace, name) for name in sorted(names)
             if name in namespace and not name.startswith("__")]
    for _, _, name in list(reads):
        module = namespace[name]
        if type(module) is types.ModuleType and _watched_module(module):
            attributes = module.__dict__
            reads += [(module.__name__, attributes, attr) for attr in sorted(names)
                      if attr in attributes and not attr.startswith("__")]
    return reads


def _watched_module(module: types.ModuleType) -> bool:
    """A module of the program (not of the standard library, nor autofork)."""
    top = module.__name__.partition(".")[0]
    return top not in sys.stdlib_module_names and top != "autofork" and top != "builtins"


def _identity_test(reads: list[tuple[str, dict, str]],
                   dicts: tuple[dict, ...]) -> Callable[..., bool]:
    """``lambda d0, d1, last: d0["a"] is last[0] and d1["b"] is last[1] ...``, compiled:
    one call, no loop in Python."""
    index = {id(d): i for i, d in enumerate(dicts)}
    tests = " and ".join(f"d{index[id(namespace)]}[{name!r}] is last[{i}]"
                         for i, (_, namespace, name) in enumerate(reads))
    parameters = ", ".join(f"d{i}" for i in range(len(dicts)))
    return eval(f"lambda {parameters}, last: {tests}", {})  # noqa: S307 - names are repr'd
