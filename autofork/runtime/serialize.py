"""Pickling for the trip to a worker: plain pickle when it can, cloudpickle when it must.

cloudpickle sends functions defined in ``__main__`` or in a rewritten module by value,
and since version 3 it renames their code's file to ``<dynamic-code>``; we keep the real
file name, so that a traceback from a worker shows the file and its source lines.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap
from typing import Any

import cloudpickle

__all__ = ["dumps", "cloud_dumps", "Pickler"]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_RENAMED = "<dynamic-code>"


def _code_reduce(code: types.CodeType) -> Any:
    reduced = cloudpickle.cloudpickle._code_reduce(code)
    constructor, args = reduced[0], reduced[1]
    args = tuple(code.co_filename if arg == _RENAMED else arg for arg in args)
    return (constructor, args, *reduced[2:])


class Pickler(cloudpickle.Pickler):
    """cloudpickle's Pickler, keeping the file names of code sent by value."""

    dispatch_table = ChainMap({types.CodeType: _code_reduce},
                              cloudpickle.Pickler.dispatch_table)


def cloud_dumps(obj: Any) -> bytes:
    """cloudpickle, keeping the file names of code sent by value."""
    with io.BytesIO() as buffer:
        Pickler(buffer, protocol=_PROTOCOL).dump(obj)
        return buffer.getvalue()


def dumps(obj: Any) -> bytes:
    """Plain pickle (fast, C) first; cloudpickle for lambdas, local and ``__main__`` objects."""
    try:
        return pickle.dumps(obj, protocol=_PROTOCOL)
    except Exception:  # noqa: BLE001 - whatever plain pickle refuses, cloudpickle may take
        return cloud_dumps(obj)
