"""ResultProxy: stands for a forked call's value, and acts like it.

Every use of the value (attributes, calls, items, iteration, comparisons, ``hash``,
``bool``, ``str``/``repr``/``format``, numeric conversions, ``with``, ``copy``, ``pickle``,
``isinstance`` through ``__class__``, ``dir``, ``__doc__``, ``__module__``,
``__index__``/``__fspath__``/``__buffer__``)
waits for the value and forwards to it.  ``repr`` and ``str`` are the value's own, so a
list of results prints as it did sequentially.  Arithmetic operators with a pending proxy
on either side do not wait: they return a new proxy whose value is computed as soon as
the inputs are ready (``total += fork(f, x)`` in a loop stays parallel); those operators
are added to the class by ``lazy``, which builds on this module (``api`` imports it).

The dunders are generated from a few helpers instead of being typed out one by one;
``tests/test_proxy.py`` exercises each of them.

What a proxy cannot fake: ``type(p)`` is ``ResultProxy``, ``p is None`` compares the
proxy, ``id(p)`` is the proxy's.  Use ``evaluate(p)`` where that matters.
"""

from __future__ import annotations

import copy
import operator
import os
from typing import Any, Callable, Generic, TypeVar, no_type_check

from .task import DONE, Task

__all__ = ["ResultProxy", "new_proxy", "unwrap"]

T = TypeVar("T")


# Functions that take or return proxies are not checked by typeguard (the test suite's
# --typeguard-packages): checking a proxy's type reads __class__, which waits for the value.
@no_type_check
def _value(proxy: Any) -> Any:
    return proxy._autofork_task.result()


class ResultProxy(Generic[T]):
    """The lazy result of ``fork``: waits for the value only when it is used."""

    __slots__ = ("_autofork_task", "__weakref__")

    _autofork_task: Task

    def __init__(self, task: Task) -> None:
        _set_task(self, task)

    # -- what the value is --------------------------------------------------------------

    @property  # type: ignore[misc]
    @no_type_check
    def __class__(self) -> type:  # noqa: D401 - isinstance() reads this
        return type(_value(self))

    def __getattr__(self, name: str) -> Any:
        return getattr(_value(self), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(_value(self), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(_value(self), name)

    def __dir__(self) -> list[str]:
        return dir(_value(self))

    def __repr__(self) -> str:
        return repr(_value(self))

    def __str__(self) -> str:
        return str(_value(self))

    def __format__(self, spec: str) -> str:
        return format(_value(self), spec)

    def __bytes__(self) -> bytes:
        return bytes(_value(self))

    def __hash__(self) -> int:
        return hash(_value(self))

    def __bool__(self) -> bool:
        return bool(_value(self))

    def __fspath__(self) -> Any:
        return os.fspath(_value(self))

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(_value(self))

    def __sizeof__(self) -> int:
        return _value(self).__sizeof__()

    # -- copying and pickling: the value's ---------------------------------------------

    def __copy__(self) -> Any:
        return copy.copy(_value(self))

    def __deepcopy__(self, memo: dict) -> Any:
        return copy.deepcopy(_value(self), memo)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        # operator.getitem((value,), 0) rebuilds the bare value wherever it is unpickled,
        # even where autofork is not installed.
        return (operator.getitem, ((_value(self),), 0))

    def __reduce__(self) -> tuple:
        return self.__reduce_ex__(2)

    # -- awaiting --------------------------------------------------------------------------

    def __await__(self) -> Any:
        task = self._autofork_task
        if task.state != DONE:
            import asyncio

            loop = asyncio.get_running_loop()
            future = loop.create_future()

            def wake(_: Task) -> None:
                loop.call_soon_threadsafe(_resolve_future, future)

            task.add_done_callback(wake)
            yield from future.__await__()
        return task.result()


class _ClassOrValue(str):
    """``ResultProxy.__doc__`` and ``__module__``: the class's own text when read on the
    class (a ``str``, so help(), pickle and typing see a true docstring and module), the
    value's when read on a proxy (a descriptor: ``p.__doc__`` is the value's docstring).
    """

    name: str

    def __new__(cls, text: str, name: str) -> "_ClassOrValue":
        self = super().__new__(cls, text)
        self.name = name
        return self

    def __reduce__(self) -> tuple:
        return (str, (str(self),))  # pickle writes the class's module name: a plain str

    @no_type_check
    def __get__(self, proxy: Any, owner: Any = None) -> Any:
        if proxy is None:
            return str(self)
        return getattr(_value(proxy), self.name)


ResultProxy.__doc__ = _ClassOrValue(ResultProxy.__doc__ or "", "__doc__")
ResultProxy.__module__ = _ClassOrValue(__name__, "__module__")


def _resolve_future(future: Any) -> None:
    if not future.done():
        future.set_result(None)


_set_task = ResultProxy._autofork_task.__set__  # type: ignore[attr-defined,misc]


@no_type_check
def new_proxy(task: Task) -> ResultProxy:
    """A proxy for ``task`` (faster than calling the class)."""
    proxy = object.__new__(ResultProxy)
    _set_task(proxy, task)
    return proxy


@no_type_check
def unwrap(obj: Any) -> Any:
    """The real value of a proxy (waiting for it); any other object as it is."""
    while type(obj) is ResultProxy:  # a call may return a proxy of another call
        obj = obj._autofork_task.result()
    return obj


# -- generated dunders -------------------------------------------------------------------

def _waiting(name: str, function: Callable[..., Any]) -> None:
    """A dunder that waits for the value, unwraps proxy arguments and calls ``function``."""

    def method(self: Any, *args: Any) -> Any:  # Any: see _value
        return function(_value(self), *map(unwrap, args))

    method.__name__ = method.__qualname__ = name
    setattr(ResultProxy, name, method)


def _call(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value(*args, **kwargs)


def _method(name: str) -> Callable[..., Any]:
    return lambda value, *args: getattr(value, name)(*args)


_WAITING: dict[str, Callable[..., Any]] = {
    "__call__": _call,
    "__getitem__": operator.getitem, "__setitem__": operator.setitem,
    "__delitem__": operator.delitem, "__contains__": operator.contains,
    "__iter__": iter, "__reversed__": reversed, "__len__": len, "__next__": next,
    "__length_hint__": operator.length_hint,
    "__eq__": operator.eq, "__ne__": operator.ne, "__lt__": operator.lt,
    "__le__": operator.le, "__gt__": operator.gt, "__ge__": operator.ge,
    "__int__": int, "__float__": float, "__complex__": complex, "__index__": operator.index,
    "__round__": round, "__trunc__": _method("__trunc__"), "__floor__": _method("__floor__"),
    "__ceil__": _method("__ceil__"),
    "__enter__": _method("__enter__"), "__exit__": _method("__exit__"),
    "__aenter__": _method("__aenter__"), "__aexit__": _method("__aexit__"),
    "__aiter__": _method("__aiter__"), "__anext__": _method("__anext__"),
}
for _name, _function in _WAITING.items():
    _waiting(_name, _function)

# __call__ takes keyword arguments too.
ResultProxy.__call__ = lambda self, *args, **kwargs: _value(self)(  # type: ignore[method-assign]
    *map(unwrap, args), **{key: unwrap(value) for key, value in kwargs.items()})

del _name, _function
