"""Arguments a call changed in place, where they were copies of the caller's.

A call that runs in a worker (or in the caller, from its pickled arguments, while no
worker is ready: ``processes.ProcessPool.steal``) gets copies of its arguments; a change
that a method of unknown type makes to one of them would be lost silently, where the
sequential program would have seen it.  ``before`` pickles each argument that could
change, ``report`` pickles them again after the call and, for those that differ, notes
it (``output.note_changed``): the caller warns once per function, in call order.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .output import note_changed
from .serialize import dumps

__all__ = ["before", "report"]

# Arguments of these types cannot change in place: a call given only these is not checked.
_ATOMS = frozenset({int, float, str, bytes, bool, type(None), complex, range, frozenset})
_CHECK_ALL = 64  # the first calls of a function here are all checked; later, one in 64
_checked: dict[Any, int] = {}  # function -> its calls here with arguments worth checking


def before(fn: Callable[..., Any], args: tuple, kwargs: dict) -> Optional[list]:
    """(label, value, pickled value) of each argument that could change in place, or None.

    SPEC 4b: the caller's objects are copies here (in a worker, or in a caller that runs a
    queued call from its pickled arguments), so a change that a method of unknown
    type makes to an argument would be lost silently; pickling it again after the call
    shows the change.  Arguments of the ``_ATOMS`` types cost one set lookup each; the
    others two picklings, on the first ``_CHECK_ALL`` calls of a function in this process
    and on one call in ``_CHECK_ALL`` after them (a function that changes its argument
    usually does so on every call, and one warning per function is all the caller shows).
    """
    atoms = _ATOMS
    for value in args:
        if type(value) not in atoms:
            break
    else:
        if not kwargs or all(type(value) in atoms for value in kwargs.values()):
            return None
    calls = _checked[fn] = _checked.get(fn, 0) + 1
    if calls > _CHECK_ALL and calls % _CHECK_ALL:
        return None
    before = []
    for label, value in [*enumerate(args), *kwargs.items()]:
        if type(value) in atoms:
            continue
        try:
            before.append((label, value, dumps(value)))
        except Exception:  # noqa: BLE001 - what cannot be pickled here is not checked
            continue
    return before or None


def report(fn: Callable[..., Any], before: list, into: Optional[list] = None) -> None:
    """Tell the caller (``output.note_changed``) which arguments the call changed."""
    changed = []
    for label, value, data in before:
        try:
            if dumps(value) != data:
                changed.append((label, type(value).__name__))
        except Exception:  # noqa: BLE001 - it became unpicklable: not reported
            pass
    if changed:
        note_changed(fn, changed, into)
