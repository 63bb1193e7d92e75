"""Output in call order: what forked calls print, log and warn reaches the caller's
streams, handlers and filters in the order of the calls, as in the sequential program.

Data flow::

    caller thread                  worker process / pool thread        completing thread
    -------------                  ----------------------------        -----------------
    fork: seq = begin()  -------->  the call runs; its writes,
                                    log records and warnings go
                                    to a list, not to the streams
    print("x"): nothing pending?                                        end(seq, captured):
      write it;  else queue it                                          the entries whose
      behind the last seq begun      captured list -- with result -->    earlier seqs are all
                                                                        ended are emitted

The log is a sequence of segments: [text the caller wrote before fork 0][fork 0's
output][text written after fork 0 began][fork 1's output]... A fork's segment is filled
when its call ends (``Task._finish`` calls ``end``); then every segment whose
predecessors are all filled is emitted, at once, by the thread that filled it.  So the
caller never blocks on a write: with forks pending it only queues the text.  A join, an
``evaluate`` or the exit waits for calls to end, and so lets their output out.

Rules:

* A rewritten call that fails stops the sequential program at that call; the forks
  made after it ran anyway, and the caller went on until it used the failed value or
  reached the end of the loop.  So what comes after a failed rewritten call is held;
  when its failure is raised in the caller (``raised``), that output is dropped (the
  program's ``except`` then writes after the output of the calls before).  At the exit
  a failure nobody raised is reported and so raised too (``engine.finish``); ``input``
  waits for the calls its prompt is queued behind and raises such a failure before
  prompting (``task.stop_before_read``).  Held output still there at exit goes out.  Explicit ``fork`` calls are the
  program's own parallelism: their failures hold nothing.

* Emission never holds the lock while it writes: a logging handler holds its own lock
  while it writes to our stream (a caller thread's ``log.info``), and emission calls
  those same handlers for a worker's records; holding both in turn would deadlock.  One
  thread emits at a time (``_emitter``); what it writes itself goes straight through.
* Nothing pending and nothing queued: a write costs one flag test more than ``print``.
  A call that writes nothing sends ``None`` back and costs its ``begin`` and ``end``.
* The caller's ``sys.stdout``/``sys.stderr`` are wrapped (``_OrderedStream``) at the
  first fork, and again if the program replaces them; logging handlers that hold the
  stream being wrapped (``basicConfig(stream=sys.stdout)`` before the first fork) are
  pointed at the wrapper.

In a worker process (``capture_in_worker``) the streams, the root logger and
``warnings.showwarning`` append to one list that ``take`` empties after each call: the
caller emits a record through ``logging.getLogger(name).handle`` if that logger is
enabled for its level, and a warning through ``warnings.warn_explicit`` with the
registry of the module that raised it, so its own handlers, levels, formats and
warning filters decide, as they did sequentially.  In a pool thread of this process,
the call's writes (its log lines already formatted by the caller's handlers) are kept
in the task's own list (``run_captured``).
"""

from __future__ import annotations

import bisect
import contextvars
import logging
import os
import sys
import threading
import warnings
from typing import Any, Callable, Optional

__all__ = ["begin", "end", "raised", "held", "voided", "flush", "run_captured", "capture_in_worker", "take",
           "note_changed"]

# Kinds of captured entries: (kind, payload).
_OUT, _ERR, _LOG, _WARN, _TEXT = 1, 2, 3, 4, 0  # _TEXT: (stream, text) the caller wrote
_CHANGED = 5  # a call changed arguments in a worker: (function, file, line, [(label, type)])
_OUT_BYTES, _ERR_BYTES = 6, 7  # bytes written to sys.stdout.buffer / sys.stderr.buffer

_capture: contextvars.ContextVar[Optional[list]] = contextvars.ContextVar(
    "autofork_capture", default=None)
_in_worker = False


class _Log:
    """The ordered log of the calling process (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next = 0  # the seq the next fork gets
        self.low = 0  # every seq below it has been emitted
        self.ended: dict[int, Optional[list]] = {}  # seq -> what it wrote, not yet emitted
        self.text: dict[int, list] = {}  # seq -> entries the caller wrote before it began
        self.quiet = True  # nothing pending, queued or being emitted: write straight on
        self.emitter: Optional[int] = None  # the thread emitting now
        self.out: Any = None  # the _OrderedStream wrappers installed
        self.err: Any = None
        # Rewritten calls that failed, not yet raised in the caller (sorted seqs): what
        # came after the first of them waits, for sequentially it never happened.
        self.failed: list[int] = []
        self.dropped: set[int] = set()  # forks whose output was dropped before they ended
        self.void: list[tuple[int, int]] = []  # [first, last) seqs made after a raised failure

    def begin(self) -> int:
        if sys.stdout is not self.out or sys.stderr is not self.err:
            self._install()
        with self.lock:
            seq = self.next
            self.next = seq + 1
            self.quiet = False
            return seq

    def end(self, seq: int, captured: Optional[list], failed: bool = False) -> None:
        with self.lock:
            if self.dropped and seq in self.dropped:
                self.dropped.discard(seq)  # after a failure that was raised: never happened
                return
            if (seq == self.low and captured is None and self.emitter is None and not failed
                    and not self.text and seq + 1 not in self.ended and not self.failed):
                self.low = low = seq + 1  # the usual case: nothing to write, nothing waits
                self.quiet = low == self.next
                return
            if failed:
                bisect.insort(self.failed, seq)
            self.ended[seq] = captured
            if seq != self.low or self.emitter is not None:
                return  # an earlier call is still running, or the emitter will see it
        self._drain()

    def write(self, stream: Any, text: str | bytes) -> int:
        # autofork's own threads (the dispatcher's traceback, say) write at once: behind
        # a fork that never ends, their text would never be seen.
        if threading.current_thread().name.startswith("autofork-"):
            return stream.write(text)
        with self.lock:
            if self.emitter != threading.get_ident():
                if not self.quiet:
                    self.text.setdefault(self.next, []).append((_TEXT, (stream, text)))
                    return len(text)
        return stream.write(text)

    def raised(self, seq: int) -> None:
        """The failure of the rewritten call ``seq`` is being raised in the caller: what
        came after that call (the output of later forks, the caller's own writes) never
        happened in the sequential program, which stopped there: it is dropped."""
        with self.lock:
            if seq not in self.failed:
                return
            for later in range(seq + 1, self.next):
                if later not in self.ended:
                    self.dropped.add(later)  # still running: its end is ignored
                self.ended[later] = None
            if seq + 1 < self.next:
                self.void.append((seq + 1, self.next))
            for key in [key for key in self.text if key > seq]:
                del self.text[key]
            self.failed = [other for other in self.failed if other < seq]
        self._drain()

    def flush(self, force: bool = False) -> None:
        """Emit what is ready; with ``force``, everything (at exit: calls that never
        ended are given up, and output held behind a failure that was never raised goes)."""
        if force:
            with self.lock:
                for seq in range(self.low, self.next):
                    self.ended.setdefault(seq, None)
                self.failed = []
        self._drain()

    def _drain(self) -> None:
        me = threading.get_ident()
        while True:
            with self.lock:
                if self.emitter is not None and self.emitter != me:
                    return  # that thread emits what we ended too, before it stops
                batch = self._ready()
                if not batch:
                    self.emitter = None
                    self.quiet = self.low == self.next and not self.text and not self.failed
                    return
                self.emitter = me
            try:
                _emit(batch, self)
            except BaseException:
                with self.lock:
                    self.emitter = None
                raise

    def _ready(self) -> list:
        """Pop the entries that may go out now, in order (under the lock)."""
        batch: list = []
        text, ended = self.text, self.ended
        fence = self.failed[0] if self.failed else self.next
        while True:
            if self.low > fence:
                return batch  # after a failed call: held until it is raised (or the exit)
            if text:
                batch.extend(text.pop(self.low, ()))
            if self.low == self.next or self.low not in ended:
                return batch
            captured = ended.pop(self.low)
            if captured:
                batch.extend(captured)
            self.low += 1

    def _install(self) -> None:
        with self.lock:
            if sys.stdout is not self.out and sys.stdout is not None:
                self.out = _wrap(sys.stdout, _OUT)
            if sys.stderr is not self.err and sys.stderr is not None:
                self.err = _wrap(sys.stderr, _ERR)


def _wrap(stream: Any, which: int) -> "_OrderedStream":
    if type(stream) is _OrderedStream:
        return stream
    wrapper = _OrderedStream(stream, which)
    if which == _OUT:
        sys.stdout = wrapper
    else:
        sys.stderr = wrapper
    for handler in _stream_handlers():
        if handler.stream is stream:
            handler.stream = wrapper
    return wrapper


def _stream_handlers() -> list:
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    return [handler for logger in loggers for handler in getattr(logger, "handlers", ())
            if isinstance(handler, logging.StreamHandler)]


class _OrderedStream:
    """``sys.stdout`` or ``sys.stderr`` of a program that forks: text written while forks
    are pending is queued behind them.  Everything else is the wrapped stream's."""

    def __init__(self, stream: Any, which: int) -> None:
        self._stream = stream
        self._which = which

    def write(self, text: str) -> int:
        captured = _capture.get()
        if captured is not None:  # a forked call running in a thread of this process
            captured.append((self._which, text))
            return len(text)
        if _log.quiet:
            return self._stream.write(text)
        return _log.write(self._stream, text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Flush what may go out; text queued behind running forks waits for them."""
        if _capture.get() is None:
            self._stream.flush()

    @property
    def buffer(self) -> Any:
        """The wrapped stream's bytes layer, in call order as the text is."""
        return _OrderedBuffer(self._stream.buffer, _OUT_BYTES if self._which == _OUT
                              else _ERR_BYTES)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _OrderedBuffer:
    """``sys.stdout.buffer`` of a program that forks: bytes written by a forked call
    running in a thread of this process go to its list, bytes written while forks are
    pending are queued behind them, as text is."""

    def __init__(self, binary: Any, which: int) -> None:
        self._binary = binary
        self._which = which

    def write(self, data: Any) -> int:
        captured = _capture.get()
        if captured is not None:
            data = bytes(data)  # a bytearray or memoryview may change after the call
            captured.append((self._which, data))
            return len(data)
        if _log.quiet:
            return self._binary.write(data)
        return _log.write(self._binary, bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _capture.get() is None:
            self._binary.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._binary, name)


_log = _Log()


def begin() -> int:
    """A fork starts, in call order: its place in the output (-1: not ordered here)."""
    if _in_worker:
        return -1  # a worker's own writes are captured per call already
    return _log.begin()


def end(seq: int, captured: Optional[list], failed: bool = False, call: Any = None) -> None:
    """The call of ``seq`` is over and wrote ``captured`` (None: nothing); ``failed``: it
    was a rewritten call and raised (what comes after it waits, see ``raised``); ``call``:
    its task, whose ``site`` (the line that made the call) is where a warning is shown
    whose ``stacklevel`` went past the function into autofork's own frames."""
    if captured and call is not None:
        _resite(captured, call)
    _log.end(seq, captured, failed)


_OWN_FILES = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_shown_before: Optional[Callable[..., Any]] = None


def _show_in_call(message: Any, category: type, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    """``warnings.showwarning`` once a call ran in this process (``run_captured``): a
    warning of such a call whose ``stacklevel`` reached autofork's frames is kept with the
    call's output, to be moved to the call's line (``_resite``) and shown by the caller."""
    captured = _capture.get()
    if captured is not None and file is None and str(filename).startswith(_OWN_FILES):
        captured.append((_WARN, (str(message), category, filename, lineno)))
        return
    if _shown_before is not None:
        _shown_before(message, category, filename, lineno, file, line)


def _resite(captured: list, call: Any) -> None:
    """``warnings.warn(..., stacklevel=2)`` in a forked function names the frame above it:
    sequentially the line that called it, in a fork a frame of autofork (a worker's loop,
    ``run_captured``): such a warning is moved to the call's line, as sequentially."""
    for index, (kind, payload) in enumerate(captured):
        if kind == _WARN and str(payload[2]).startswith(_OWN_FILES):
            site = call.site
            if site is None:
                return
            captured[index] = (_WARN, (payload[0], payload[1], site.filename, site.lineno))


def raised(seq: int) -> None:
    """The failure of the rewritten call ``seq`` is raised in the caller now."""
    if seq >= 0 and _log.failed:
        _log.raised(seq)


def held() -> bool:
    """Whether the caller's writes are queued now (forks pending, or output held); never
    in a forked call running in a thread (its writes go to its own list)."""
    return not _log.quiet and _capture.get() is None


def voided(seq: int) -> bool:
    """Whether the fork ``seq`` was made after a rewritten call whose failure was raised
    (and before that raise): a call the sequential program never made."""
    return seq >= 0 and any(first <= seq < last for first, last in _log.void)


def flush(force: bool = False) -> None:
    """Emit the output that may go out (``force``: all of it, at exit)."""
    _log.flush(force)


def run_captured(fn: Callable[..., Any], args: tuple, kwargs: dict, into: list) -> Any:
    """``fn(*args, **kwargs)`` in this thread, what it writes appended to ``into``."""
    global _shown_before
    if _shown_before is None:
        _shown_before = warnings.showwarning
        warnings.showwarning = _show_in_call
    token = _capture.set(into)
    try:
        return fn(*args, **kwargs)
    finally:
        _capture.reset(token)
        if "__warningregistry__" in globals():
            # A warning that reached this frame (stacklevel) was noted here, as shown
            # at this line: the caller decides at the call's line (_resite), not here.
            globals()["__warningregistry__"].clear()


# -- emitting in the caller ----------------------------------------------------------------

def _emit(batch: list, log: _Log) -> None:
    for kind, payload in batch:
        try:
            if kind == _TEXT:
                payload[0].write(payload[1])
            elif kind == _OUT or kind == _ERR:
                wrapper = log.out if kind == _OUT else log.err
                stream = getattr(wrapper, "_stream", wrapper)
                if stream is not None:
                    stream.write(payload)
            elif kind == _OUT_BYTES or kind == _ERR_BYTES:
                _write_bytes(log.out if kind == _OUT_BYTES else log.err, payload)
            elif kind == _LOG:
                _handle(payload)
            elif kind == _WARN:
                _warn(*payload)
            elif kind == _CHANGED:
                _warn_changed(*payload)
        except Warning as error:  # a filter the program set to "error" after the call began
            _write_stderr(log, warnings.formatwarning(str(error), type(error), *payload[2:]))
        except Exception:  # noqa: BLE001 - a closed stream, a failing handler: go on
            pass


def _write_bytes(wrapper: Any, data: bytes) -> None:
    """What a call wrote to ``sys.stdout.buffer``: to the caller's stream's buffer, as the
    same write did sequentially (a stream without one, a ``StringIO``, gets it decoded)."""
    stream = getattr(wrapper, "_stream", wrapper)
    if stream is None:
        return
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        binary.write(data)
    else:
        stream.write(data.decode(getattr(stream, "encoding", None) or "utf-8", "replace"))


def _write_stderr(log: _Log, text: str) -> None:
    stream = getattr(log.err, "_stream", log.err)
    if stream is not None:
        stream.write(text)


def _handle(fields: dict) -> None:
    record = logging.makeLogRecord(fields)
    start = getattr(logging, "_startTime", None)
    if start is not None:
        record.relativeCreated = (record.created - start) * 1000
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


def _warn(message: str, category: type, filename: str, lineno: int) -> None:
    module = _module_of(filename)
    if module is not None:
        registry = module.__dict__.setdefault("__warningregistry__", {})
        # Its globals only help find the source of a module loaded from elsewhere than
        # a file; a script's (no __spec__) made 3.12+ warn "Module globals is missing a
        # __spec__.loader" at each warning.
        spec = module.__dict__.get("__spec__")
        warnings.warn_explicit(message, category, filename, lineno, module.__name__, registry,
                               module.__dict__ if getattr(spec, "loader", None) else None)
    else:
        warnings.warn_explicit(message, category, filename, lineno)


_warned_changed: set[tuple[str, str]] = set()


def _warn_changed(name: str, filename: str, lineno: int, changed: list) -> None:
    """Once per function: a call changed its arguments in a worker, where they were copies."""
    if (name, filename) in _warned_changed:
        return
    _warned_changed.add((name, filename))
    from .errors import AutoforkWarning

    what = ", ".join(f"{_label(label)} ({kind})" for label, kind in changed)
    warnings.warn_explicit(AutoforkWarning(
        f"{name}() changed {what} in a worker process, where it was a copy (or in the "
        f"caller, on a copy, while no worker was ready): the caller's "
        f"object stays as it was, unlike in the sequential program. Return the new value "
        f"instead (or mark {name} @io_bound: threads share the caller's objects)"),
        AutoforkWarning, filename, lineno)


def _label(label: Any) -> str:
    if isinstance(label, int):
        return f"its argument {label + 1}"
    return f"its argument {label!r}"


def _module_of(filename: str) -> Any:
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == filename:
            return module
    return None


# -- capturing in a worker process -------------------------------------------------------

_captured: list = []


class _Sink:
    """What a worker's captured streams share: writes of ``_kind`` go to the call's list."""

    _kind = _OUT

    def write(self, data: Any) -> int:
        _captured.append((self._kind, data))
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class _Capture(_Sink):
    """A worker's ``sys.stdout``/``sys.stderr``: writes, of text or of bytes to its
    ``buffer``, go to the call's list.  Anything else is the worker's real stream's: its
    ``fileno()`` is the caller's terminal or pipe, inherited, so a subprocess given
    ``stdout=sys.stdout`` writes there directly (not ordered, as raw fd writes never are)."""

    encoding = "utf-8"
    errors = "strict"

    def __init__(self, which: int) -> None:
        self._kind = which
        self.buffer = _BytesCapture(_OUT_BYTES if which == _OUT else _ERR_BYTES)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        return super().write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(sys.__stdout__ if self._kind == _OUT else sys.__stderr__, name)


class _BytesCapture(_Sink):
    """A worker's ``sys.stdout.buffer``: bytes written go to the call's list."""

    def __init__(self, which: int) -> None:
        self._kind = which

    def write(self, data: Any) -> int:
        return super().write(bytes(data))  # a bytearray or memoryview may change later


class _Records(logging.Handler):
    """The worker's only root handler: each record goes to the call's list, as fields."""

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(record.__dict__)
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info and not record.exc_text:
            fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
        fields["exc_info"] = None
        fields.pop("message", None)
        _captured.append((_LOG, fields))


_ALWAYS = {"default": "always", "module": "always", "once": "always", "ignore": "always"}


def _show_warning(message: Any, category: type, filename: str, lineno: int,
                  file: Any = None, line: Any = None) -> None:
    _captured.append((_WARN, (str(message), category, filename, lineno)))


def capture_in_worker() -> None:
    """In a worker process: capture every call's output for its caller."""
    global _in_worker
    _in_worker = True
    sys.stdout = _Capture(_OUT)  # type: ignore[assignment]
    sys.stderr = _Capture(_ERR)  # type: ignore[assignment]
    root = logging.getLogger()
    root.handlers[:] = [_Records()]
    root.setLevel(1)  # every record goes: the caller's levels decide
    # Every warning shown goes (the caller's filters and registries decide whether it is
    # shown there, with the module and line the call's own frames give it: an "ignore"
    # here would judge a warn(..., stacklevel=2) by autofork's module, where Python's
    # default filters ignore a DeprecationWarning); "error" from -W stays (it raises in
    # the call, as sequentially).
    warnings.filters[:] = [  # type: ignore[index]  # typeshed: a Sequence; it is a list
        (_ALWAYS.get(action, action), *rest) for action, *rest in warnings.filters]
    warnings.defaultaction = _ALWAYS.get(warnings.defaultaction, warnings.defaultaction)  # type: ignore[attr-defined]
    getattr(warnings, "_filters_mutated", lambda: None)()  # the C module caches them
    warnings.showwarning = _show_warning


def note_changed(fn: Callable[..., Any], changed: list, into: Optional[list] = None) -> None:
    """The call of ``fn`` that just ran (in a worker, or in this process on copies of its
    arguments: then ``into`` is its captured output) changed these arguments
    ([(position or keyword, type name)]); its caller warns, in call order."""
    code = getattr(fn, "__code__", None)
    names = code.co_varnames[:code.co_argcount] if code is not None else ()
    named = [(names[label] if isinstance(label, int) and label < len(names) else label, kind)
             for label, kind in changed]
    (_captured if into is None else into).append(
        (_CHANGED, (getattr(fn, "__qualname__", repr(fn)), getattr(code, "co_filename", "<unknown>"),
                    getattr(code, "co_firstlineno", 0), named)))


def take() -> Optional[list]:
    """What the call that just ended wrote (None: nothing); the list starts afresh."""
    if not _captured:
        return None
    captured = _captured[:]
    _captured.clear()
    return captured
