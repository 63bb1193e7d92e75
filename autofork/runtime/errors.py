"""Exceptions of autofork, and how a failure travels from a worker back to the caller.

The exception tree::

    AutoforkWarning(UserWarning)          every warning autofork emits; filter it as a class
    NotSendable(TypeError)                a call that cannot be pickled for a worker process
    WorkerCrashed(RuntimeError)           the worker process running a call died
    RemoteError(Exception)                stand-in for an exception that could not be pickled
                                          (a subclass per original type also derives from the
                                          nearest builtin base, so ``except ValueError`` still works)

How a traceback is rebuilt: a call that fails in a worker sends back its exception
(pickled, or described when it cannot be pickled) and the (file, line, function, and on
3.11+ the columns) of each frame below the worker's own.  The caller rebuilds a *real*
traceback from them: for each frame it runs a ``raise`` compiled (from an ``ast``) with
that file name, function name and the frame's very positions, so that 3.11+ draws its
carets under the same text as the sequential traceback (under the whole line, that is
none, when the columns are unknown), and links the resulting traceback entries.  The fork call site is put first, so a
printed traceback reads: the caller's frames down to where the value was used, the fork
call site, then the frames inside the function down to the raising line.  Source lines
come from the caller's ``linecache``, so they show for functions defined in ``__main__``
or in a rewritten module too (cloudpickle ships those by value but keeps their file name).

``without_internal_frames`` makes an uncaught exception read as the sequential one when
it is printed at the top (``python -m autofork``): autofork's own frames between the
user's (a ``Joiner`` exit, ``unwrap``, ``Task.result``) are dropped, and so is the user
frame where the value was waited for when the rebuilt call site that follows is in the
same function (the sequential traceback shows the call line only).
"""

from __future__ import annotations

import ast
import builtins
import functools
import linecache
import os
import pickle
import sys
import traceback
from types import CodeType, TracebackType
from typing import Any, NamedTuple, Optional


__all__ = ["AutoforkWarning", "NotSendable", "WorkerCrashed", "RemoteError", "Frame", "Failure",
           "call_site", "site_at", "without_internal_frames"]


class AutoforkWarning(UserWarning):
    """A warning from autofork (a fallback it took, a mark it ignored)."""


class NotSendable(TypeError):
    """A call that cannot be sent to a worker process (its function or an argument does
    not pickle).  Raised by ``fork``; a rewritten call runs in the caller instead."""


class WorkerCrashed(RuntimeError):
    """The worker process that ran a forked call died before returning its result."""

    def __init__(self, function: str, cause: str, detail: str = "") -> None:
        self.function = function
        self.cause = cause
        self.detail = detail
        message = f"the worker process running {function}() died ({cause})"
        if detail:
            message += f"; {detail}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.function, self.cause, self.detail))


class RemoteError(Exception):
    """Stands in for an exception raised by a forked call that could not be sent back."""

    def __init__(self, type_name: str, message: str, reason: str = "") -> None:
        self.type_name = type_name
        self.message = message
        self.reason = reason
        text = f"{type_name}: {message}" if message else type_name
        if reason:
            text += f" (sent as a stand-in: {reason})"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_remote_error, (self.type_name, self.message, self.reason, self._builtin_base()))

    def _builtin_base(self) -> str:
        for klass in type(self).__mro__:
            if klass.__module__ == "builtins" and klass is not object:
                return klass.__name__
        return "Exception"


@functools.lru_cache(maxsize=None)
def _remote_error_class(builtin_base: str) -> type[RemoteError]:
    base = getattr(builtins, builtin_base, Exception)
    if not (isinstance(base, type) and issubclass(base, BaseException)) or base is Exception:
        return RemoteError
    return type(f"Remote{base.__name__}", (RemoteError, base), {"__module__": __name__})


def _remote_error(type_name: str, message: str, reason: str, builtin_base: str) -> RemoteError:
    return _remote_error_class(builtin_base)(type_name, message, reason)


class Frame(NamedTuple):
    """Where a frame of a traceback stood: enough to rebuild it in another process.

    ``end_lineno``, ``colno``, ``end_colno``: the span of the instruction that raised (or
    called), as 3.11+ code objects keep it (columns are UTF-8 byte offsets, as in
    ``traceback.FrameSummary``); None when unknown (Python 3.10).
    """

    filename: str
    lineno: int
    name: str
    end_lineno: Optional[int] = None
    colno: Optional[int] = None
    end_colno: Optional[int] = None


def _frame(summary: traceback.FrameSummary) -> Frame:
    return Frame(summary.filename, summary.lineno or 0, summary.name,
                 getattr(summary, "end_lineno", None), getattr(summary, "colno", None),
                 getattr(summary, "end_colno", None))


class Failure:
    """A failed call, ready to be raised again (in this process or after a trip).

    It holds the exception pickled, so every raise gets a fresh exception object whose
    traceback is rebuilt from scratch (no traceback piles up over repeated evaluations,
    and no frame of the worker keeps memory alive).
    """

    __slots__ = ("payload", "frames", "site", "cause", "_local", "_local_tb", "raised", "seq",
                 "last")

    def __init__(self, payload: bytes, frames: list[Frame], site: Frame | None = None,
                 cause: tuple[bool, Failure] | None = None) -> None:
        self.payload = payload
        self.frames = frames
        self.site = site
        # (explicit, failure): what ``raise ... from`` (True) or an ``except`` block
        # (False) chained to the exception in the worker; pickling loses it otherwise.
        self.cause = cause
        self._local: BaseException | None = None
        self._local_tb: TracebackType | None = None
        # Raised in the caller where the program stopped (a join), or never seen by
        # anybody (``NeverMade``): a lazy operation that inherited it, dropped with the
        # names after that failure, is not reported at exit as a failure nobody saw.
        self.raised = False
        # The output place (``Task.seq``) of the rewritten call that failed with it, -1
        # if none: a lazy operation that inherited it and is raised stops the sequential
        # program at that call, as the call itself would (``task.stopped_at``).
        self.seq = -1
        # The exception ``exception`` made last: a join that sees it leave its block
        # lets it go on, not a second copy (whose context it would become).
        self.last: BaseException | None = None

    @classmethod
    def capture(cls, exc: BaseException, skip: int = 1) -> Failure:
        """Describe ``exc``, dropping the first ``skip`` frames (the runner's own)."""
        frames = [_frame(f) for f in traceback.extract_tb(exc.__traceback__)[skip:]]
        return cls(_dump_exception(exc), frames, None, _chained(exc, _CHAIN_DEPTH))

    @classmethod
    def local(cls, exc: BaseException, skip: int = 1) -> Failure:
        """Like capture, for an exception that never leaves this process: kept as is."""
        tb = exc.__traceback__
        for _ in range(skip):
            tb = tb.tb_next if tb is not None else None
        failure = cls(b"", [], None)
        failure._local = exc
        failure._local_tb = tb
        return failure

    def __reduce__(self) -> tuple[Any, ...]:
        if self._local is not None:
            shipped = Failure.capture(self._local.with_traceback(self._local_tb), skip=0)
            return (Failure, (shipped.payload, shipped.frames, self.site, shipped.cause))
        return (Failure, (self.payload, self.frames, self.site, self.cause))

    def exception(self) -> BaseException:
        """A fresh exception of the original type, with the sequential-looking traceback."""
        if self._local is not None:
            exc = self._local
            remote_tb = self._local_tb
        else:
            exc = _load_exception(self.payload)
            remote_tb = None
            for frame in reversed(self.frames):
                remote_tb = _synthetic_tb(frame, remote_tb)
            if self.cause is not None:
                explicit, cause = self.cause
                if explicit:
                    exc.__cause__ = cause.exception()
                else:
                    exc.__context__ = cause.exception()
        if self.site is not None:
            remote_tb = _synthetic_tb(self.site, remote_tb)
        self.last = exc
        return exc.with_traceback(remote_tb)


_CHAIN_DEPTH = 5


def _chained(exc: BaseException, depth: int) -> tuple[bool, Failure] | None:
    """The exception chained to ``exc`` (its cause, else its unsuppressed context)."""
    explicit = exc.__cause__ is not None
    chained = exc.__cause__ if explicit else (
        None if exc.__suppress_context__ else exc.__context__)
    if chained is None or depth == 0:
        return None
    frames = [_frame(f) for f in traceback.extract_tb(chained.__traceback__)]
    return explicit, Failure(_dump_exception(chained), frames, None, _chained(chained, depth - 1))


def _dump_exception(exc: BaseException) -> bytes:
    """Pickle ``exc``; when it cannot travel, pickle a RemoteError that names it instead.

    An exception pickles as ``type(exc)(*exc.args)``, which fails to rebuild when its
    ``__init__`` takes other arguments than it passes on (``AppError(code, msg)`` calling
    ``super().__init__(msg)``): such an exception travels as its class, ``args`` and
    attributes, rebuilt without calling ``__init__``, so ``except AppError as e: e.code``
    works in the caller as it did sequentially.
    """
    from .serialize import cloud_dumps

    try:
        data = cloud_dumps(exc)
        pickle.loads(data)  # an exception that pickles but cannot be rebuilt is no better
        return data
    except Exception:  # noqa: BLE001 - try it as class, args and attributes
        pass
    try:
        cls = type(exc)
        if cls.__reduce__ is not BaseException.__reduce__ or cls.__reduce_ex__ is not (
                BaseException.__reduce_ex__):
            raise TypeError(f"{cls.__qualname__} defines how it pickles")  # its own choice
        data = cloud_dumps(_AsState(exc))
        pickle.loads(data)
        return data
    except Exception as why:  # noqa: BLE001 - any pickling failure means "send a stand-in"
        base = next((k.__name__ for k in type(exc).__mro__
                     if k.__module__ == "builtins" and k is not object), "Exception")
        standin = _remote_error(f"{type(exc).__module__}.{type(exc).__qualname__}",
                                str(exc), f"{type(why).__name__}: {why}", base)
        return cloud_dumps(standin)


class _AsState:
    """Pickles an exception as its class, ``args`` and ``__dict__`` (see _dump_exception)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple[Any, ...]:
        exc = self.exc
        return (_rebuild_exception, (type(exc), exc.args, getattr(exc, "__dict__", None)))


def _rebuild_exception(cls: type[BaseException], args: tuple, state: dict | None) -> BaseException:
    exc = BaseException.__new__(cls, *args)  # sets args; __init__ is not called
    exc.args = args
    if state:
        exc.__dict__.update(state)
    return exc


def _load_exception(payload: bytes) -> BaseException:
    try:
        return pickle.loads(payload)
    except Exception as why:  # noqa: BLE001 - the class may not import here
        return RemoteError("<unknown>", "an exception that could not be unpickled here",
                           f"{type(why).__name__}: {why}")


@functools.lru_cache(maxsize=1024)
def _raiser(frame: Frame) -> CodeType:
    """``raise _autofork_marker`` whose instruction has ``frame``'s file, name and span."""
    line, end_line, col, end_col = _span(frame)
    where = {"lineno": line, "end_lineno": end_line, "col_offset": col, "end_col_offset": end_col}
    marker = ast.Name("_autofork_marker", ast.Load(), **where)
    module = ast.Module([ast.Raise(exc=marker, cause=None, **where)], [])
    code = compile(module, frame.filename, "exec", dont_inherit=True)
    replace: dict[str, Any] = {"co_name": frame.name}
    if hasattr(code, "co_qualname"):
        replace["co_qualname"] = frame.name
    return code.replace(**replace)


def _span(frame: Frame) -> tuple[int, int, int, int]:
    """(line, end line, column, end column) to compile ``frame``'s raise with.

    Unknown columns span the whole source line: 3.11+ draws no carets under a whole line.
    """
    line = max(frame.lineno, 1)
    end_line, col, end_col = frame.end_lineno, frame.colno, frame.end_colno
    if end_line is not None and col is not None and end_col is not None and (
            end_line > line or end_line == line and end_col >= col):
        return line, end_line, col, end_col
    text = linecache.getline(frame.filename, line).rstrip().encode("utf-8")
    return line, line, len(text) - len(text.lstrip()), len(text)


class _Marker(Exception):
    pass


# The globals of every rebuilt frame: how ``without_internal_frames`` knows one.
_SYNTHETIC: dict[str, Any] = {"_autofork_marker": _Marker}


def _synthetic_tb(frame: Frame, tb_next: TracebackType | None) -> TracebackType | None:
    """A real traceback entry at ``frame``, followed by ``tb_next``."""
    try:
        exec(_raiser(frame), _SYNTHETIC)
    except _Marker as marker:
        entry = marker.__traceback__.tb_next  # type: ignore[union-attr]
        assert entry is not None
        entry.tb_next = tb_next
        return entry
    return tb_next  # unreachable: the code always raises


_INTERNAL = os.path.dirname(os.path.abspath(__file__))


_internal_files: dict[str, bool] = {}  # file name -> inside autofork's runtime
_new_frame = tuple.__new__  # Frame(...) without NamedTuple's Python-level __new__


def call_site() -> Frame | None:
    """The first frame outside autofork's runtime: where the user forked.

    On every fork: each file name is tested once, and each call site's Frame (with its
    columns) built once, then found by its code object and instruction.
    """
    frame = sys._getframe(1)
    internal = _internal_files
    while frame is not None:
        code = frame.f_code
        name = code.co_filename
        inside = internal.get(name)
        if inside is None:
            inside = internal[name] = name.startswith(_INTERNAL)
        if not inside:
            known = _SITES.get(id(code))
            if known is not None and known[0] is code:
                site = known[2].get(frame.f_lasti)
                if site is not None:
                    return site
            return site_at(code, frame.f_lineno, frame.f_lasti)
        frame = frame.f_back  # type: ignore[assignment]
    return None


def site_at(code: CodeType, line: int, lasti: int = -1) -> Frame:
    """The Frame of the instruction at ``lasti`` in ``code`` (its span on 3.11+)."""
    known = _SITES.get(id(code))
    if known is None or known[0] is not code:
        if len(_SITES) >= 256:
            _SITES.clear()
        table = list(code.co_positions()) if hasattr(code, "co_positions") else []
        known = _SITES[id(code)] = (code, table, {})
    table = known[1]
    if 0 <= lasti and lasti // 2 < len(table):
        start, end_line, col, end_col = table[lasti // 2]
        if start != line:
            end_line = None
    else:
        end_line = col = end_col = None  # Python 3.10: lines only
    site = _new_frame(Frame, (code.co_filename, line, code.co_name, end_line, col, end_col))
    if lasti >= 0:
        known[2][lasti] = site
    return site


# id(code) -> (code, its co_positions, {instruction offset: Frame}): the call sites seen.
_SITES: dict[int, tuple[CodeType, list[tuple[Any, ...]], dict[int, Frame]]] = {}


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def without_internal_frames(exc: BaseException) -> None:
    """Drop autofork's own frames from the tracebacks of ``exc`` and of the exceptions
    chained to it (cause, context, members of a group), in place.

    A run of autofork frames is dropped when a frame of the program follows it (one at
    the end is autofork raising, and stays; but a ``KeyboardInterrupt`` met while
    autofork waited for a fork ends at the program's line, as it ended in the program's
    own code sequentially); when what follows is a rebuilt call site
    (``Failure.exception``) in the same function as the frame before the run, that frame
    goes too: it is where the value was waited for, and the sequential traceback shows
    the call's line only.
    """
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = _trimmed(current.__traceback__,
                                         isinstance(current, KeyboardInterrupt))
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        todo.extend(getattr(current, "exceptions", ()))


def _trimmed(tb: TracebackType | None, tail: bool = False) -> TracebackType | None:
    """``tb`` without autofork's frames (see without_internal_frames); ``tail``: also
    those at its end, if a frame of the program comes before them."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    ours = [e.tb_frame.f_code.co_filename.startswith(_PACKAGE) for e in entries]
    if tail and not all(ours):
        ours.append(False)  # as if the program's code came next
    kept: list[TracebackType] = []
    dropped = False   # autofork frames were dropped since the last kept entry
    for index, entry in enumerate(entries):
        if ours[index] and not all(ours[index:]):
            dropped = True
            continue
        if (dropped and kept and entry.tb_frame.f_globals is _SYNTHETIC
                and _same_function(kept[-1], entry)):
            kept.pop()
        dropped = False
        kept.append(entry)
    for before, after in zip(kept, kept[1:]):
        before.tb_next = after
    if kept:
        kept[-1].tb_next = None
    return kept[0] if kept else None


def _same_function(a: TracebackType, b: TracebackType) -> bool:
    x, y = a.tb_frame.f_code, b.tb_frame.f_code
    return (x.co_filename, x.co_name) == (y.co_filename, y.co_name)


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on Python 3.10, kept in ``__notes__`` (not printed there)."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]  # type: ignore[attr-defined]
