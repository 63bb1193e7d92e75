"""Settling: the values of finished forks put in place of their proxies, in a container.

After a loop, the list it filled with ``results.append(f(x))`` holds proxies; C code that
checks exact types (``",".join``, ``json.dumps``, ``re.match``, numpy, pandas) refuses or
misreads them.  ``settle`` waits for each proxy, in order, and writes its value where the
proxy was, so the program holds the very same container (``id`` unchanged) with values in
it, as it did sequentially.

What is changed in place: a ``list`` (or any mutable sequence: ``deque``, ``UserList``),
a ``dict`` or other mutable mapping (values; a proxy used as a key is rebuilt as its
value, keeping the order), a ``set``.  Inside those, nested ``list``/``dict``/``set``
are settled in place and a ``tuple`` holding a proxy is replaced by a tuple of values,
``_DEPTH`` levels down.  Anything else is left alone (a numpy array already converted
its elements when they were stored).  The first failure met is raised, as evaluating that
proxy would raise it; it is the first in container order.

``trim`` is the reverse, after a failure raised at the end of a loop: the entries that
came from the failing call and from the calls after it (which the sequential program
never made) are taken out of the container, in place.

``settle_names`` is the same for the names of the caller's frame, just before a ``try`` or
``with`` that would otherwise catch a failure that escaped sequentially (SPEC 4b).
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping, MutableSequence, MutableSet
from typing import Any, no_type_check

from .proxy import ResultProxy, unwrap

__all__ = ["settle", "settle_names", "trim"]

_DEPTH = 3


@no_type_check  # typeguard would read a proxy's __class__, which waits
def settle(obj: Any) -> Any:
    """``obj`` with its proxies replaced by their values (waiting for them).

    A proxy gives its value; a container is changed in place and returned itself;
    anything else is returned as it is.
    """
    if type(obj) is ResultProxy:
        return unwrap(obj)
    return _settled(obj, _DEPTH)


@no_type_check
def settle_names(*names: str) -> None:
    """Wait for the proxies the caller's ``names`` hold, in order; raise the first failure.

    The rewriter puts it just before a ``try``/``with`` whose body reads those names: a
    failure is raised there, outside the block, as the sequential call raised it before
    the block began.  A name not bound yet is skipped (reading it inside the block
    raises ``NameError`` there, as sequentially); the names keep their proxies.
    """
    frame = sys._getframe(1)
    scope, module = frame.f_locals, frame.f_globals
    del frame
    for name in names:
        value = scope.get(name, _UNBOUND)
        if value is _UNBOUND:
            value = module.get(name)
        if type(value) is ResultProxy:
            unwrap(value)


_UNBOUND = object()


@no_type_check
def trim(container: Any, seq: int) -> None:
    """Take out of ``container``, in place, each entry that holds the result of the fork
    ``seq`` (its place in call order) or of a later one: an item of a list or set, a key
    of a mapping (whose key or value holds one), also inside a tuple, list or dict entry,
    ``_DEPTH`` levels down.  A mapping's key is removed, not given back an older value."""
    if type(container) is ResultProxy or type(container) in _ATOMS:
        return
    if type(container) is list or (type(container) is not tuple and isinstance(container, MutableSequence)):
        for index in reversed([i for i, item in enumerate(container) if _late(item, seq, _DEPTH)]):
            del container[index]
    elif isinstance(container, MutableMapping):
        for key in [k for k, v in container.items()
                    if _late(k, seq, _DEPTH) or _late(v, seq, _DEPTH)]:
            del container[key]
    elif isinstance(container, MutableSet):
        for item in [item for item in container if _late(item, seq, _DEPTH)]:
            container.discard(item)


@no_type_check
def _late(obj: Any, seq: int, depth: int) -> bool:
    """Whether ``obj`` holds the result of the fork ``seq`` or of a later one."""
    kind = type(obj)
    if kind is ResultProxy:
        task = obj._autofork_task   # a fork, or a lazy operation on forks
        return max(getattr(task, "seq", -1), getattr(task, "after", -1)) >= seq
    if depth <= 1 or kind in _ATOMS:
        return False
    if kind is tuple or kind is list:
        return any(_late(item, seq, depth - 1) for item in obj)
    if kind is dict:
        return any(_late(value, seq, depth - 1) for value in obj.values())
    return False


@no_type_check
def _settled(obj: Any, depth: int) -> Any:
    """``obj`` or its replacement (only a tuple is ever replaced)."""
    kind = type(obj)
    if kind is ResultProxy:
        return unwrap(obj)
    if depth == 0 or kind in _ATOMS:
        return obj
    if kind is list or (kind is not tuple and isinstance(obj, MutableSequence)):
        _sequence(obj, depth)
    elif kind is dict or isinstance(obj, MutableMapping):
        _mapping(obj, depth)
    elif kind is tuple:
        return _tuple(obj, depth)
    elif kind is set or isinstance(obj, MutableSet):
        _set(obj, depth)
    return obj


_ATOMS = frozenset((int, float, str, bytes, bool, type(None), complex))


@no_type_check
def _sequence(items: Any, depth: int) -> None:
    if set(map(type, items)) <= _ATOMS:
        return  # plain values only (every call ran inline): one pass in C
    changes = []
    for index, item in enumerate(items):
        if type(item) not in _ATOMS:
            new = _settled(item, depth - 1)
            if new is not item:
                changes.append((index, new))
    for index, new in changes:  # after the walk: a deque may not change while iterated
        items[index] = new


@no_type_check
def _mapping(mapping: Any, depth: int) -> None:
    if any(type(key) is ResultProxy for key in mapping):
        # A key that is a proxy: rebuild the mapping with value keys, in the same order.
        pairs = [(unwrap(key), value) for key, value in mapping.items()]
        mapping.clear()
        mapping.update(pairs)
    changes = []
    for key, value in mapping.items():
        if type(value) not in _ATOMS:
            new = _settled(value, depth - 1)
            if new is not value:
                changes.append((key, new))
    for key, new in changes:
        mapping[key] = new


@no_type_check
def _tuple(items: tuple, depth: int) -> tuple:
    values = [_settled(item, depth - 1) for item in items]
    if all(new is old for new, old in zip(values, items)):
        return items
    return tuple(values)


@no_type_check
def _set(items: Any, depth: int) -> None:
    proxies = [item for item in items if type(item) is ResultProxy or type(item) is tuple]
    for item in proxies:
        new = _settled(item, depth - 1)
        if new is not item:
            items.discard(item)
            items.add(new)
