"""Pickling for the trip to a worker: plain pickle when it can, cloudpickle when it must.

cloudpickle sends functions defined in ``__main__`` or in a rewritten module by value,
and since version 3 it renames their code's file to ``<dynamic-code>``; we keep the real
file name, so that a traceback from a worker shows the file and its source lines.
"""

from __future__ import annotations

import functools
import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

__all__ = ["dumps", "cloud_dumps", "Pickler"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_RENAMED = "<dynamic-code>"
_MAIN = b"__main__"


def _code_reduce(code: types.CodeType) -> Any:
    # cloudpickle's own reducer, a private function (there in 3.0 to 3.1; pyproject.toml
    # asks for cloudpickle>=3.0,<4 for it): its result, with the real file name put back.
    reduced = cloudpickle.cloudpickle._code_reduce(code)
    constructor, args = reduced[0], reduced[1]
    args = tuple(code.co_filename if arg == _RENAMED else arg for arg in args)
    return (constructor, args, *reduced[2:])


def _lru_cache_reduce(wrapper: Any) -> Any:
    # A cached function (functools.lru_cache, functools.cache) pickles as a reference
    # to its module's attribute; a worker's __main__ is not the script, so one of the
    # script's is rebuilt there instead: a new cache around the function sent by value.
    if getattr(wrapper, "__module__", None) != "__main__":
        return wrapper.__reduce__()
    parameters = wrapper.cache_parameters()
    return (_cached, (wrapper.__wrapped__, parameters["maxsize"], parameters["typed"]))


def _cached(fn: Any, maxsize: Any, typed: bool) -> Any:
    return functools.lru_cache(maxsize=maxsize, typed=typed)(fn)


class Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, keeping the file names of code sent by value, and sending
    the script's cached functions (``@lru_cache``) by value."""

    dispatch_table = ChainMap({types.CodeType: _code_reduce,
                               functools._lru_cache_wrapper: _lru_cache_reduce},
                              cloudpickle.Pickler.dispatch_table)


def cloud_dumps(obj: Any) -> bytes:
    """cloudpickle, keeping the file names of code sent by value."""
    with io.BytesIO() as buffer:
        Pickler(buffer, protocol=_PROTOCOL).dump(obj)
        return buffer.getvalue()


def dumps(obj: Any) -> bytes:
    """Plain pickle (fast, C) first; cloudpickle for lambdas, local and ``__main__`` objects.

    Plain pickle writes a class or function of the script as a reference to
    ``__main__.Name``, and succeeds; but a worker's ``__main__`` is not the script, so the
    reference would not resolve there.  Such a reference shows as the bytes ``__main__``
    in the output (a search costs about a nanosecond per 20 bytes): those objects go again,
    by value, through cloudpickle.  A string that merely contains ``__main__`` costs a
    second, slower pickling, nothing worse.
    """
    try:
        data = pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:  # noqa: BLE001 - whatever plain pickle refuses, cloudpickle may take
        return cloud_dumps(obj)
    return cloud_dumps(obj) if _MAIN in data else data
