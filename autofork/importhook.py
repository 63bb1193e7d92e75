"""The import hook: rewrite the call sites of marked functions as modules load.

``ImportHook`` is one PEP 451 meta-path finder; the loader it hands out is a
``SourceFileLoader`` whose ``get_code`` returns the rewritten code.  For each import it
is asked about, the finder bails out as early as it can:

1. by name: autofork's own modules, the standard library (``sys.stdlib_module_names``),
   anything while this thread is already inside the hook (the re-entrancy guard: the
   rewriter imports libcst, the resolver asks other finders), and everything when
   ``AUTOFORK=0``;
2. by place (the rules below): the standard library and site-packages are left alone;
   a submodule whose package's ``__path__`` lies there is skipped before any finder
   searches for it (``Rules.skips_place``), unless an ``include`` pattern could want it;
3. by content: a valid cached rewrite is used as is; otherwise the transformer's cheap
   ``needs_rewrite`` test (no libcst) decides, and a module that needs no rewrite is
   left to the normal import machinery, byte for byte, with its normal pyc.

Which modules are rewritten
---------------------------
Every module whose source file lies outside the standard library and site-packages
(any ``site-packages`` or ``dist-packages`` directory, ``site.getsitepackages()``,
the directory of ``os.py``), except autofork itself.  Two lists of patterns
change that: ``include`` (``--include``, ``AUTOFORK_INCLUDE``) adds modules that would
be skipped, ``exclude`` (``--exclude``, ``AUTOFORK_EXCLUDE``) removes modules; exclude
wins.  A list is one string of patterns separated by commas or ``os.pathsep``:

* a pattern with a path separator in it is a *path*: made absolute (relative to the
  current directory), it matches the module's source file and everything below it when
  it has no glob characters, and is matched with ``fnmatch`` (``*`` crosses ``/``)
  when it has (``*/generated/*``);
* any other pattern is a *module name*: ``pkg`` matches ``pkg`` and ``pkg.sub.mod``
  but not ``pkgx``; with glob characters it is matched with ``fnmatch`` (``pkg.*_gen``).

The bytecode cache
------------------
A rewritten module's code is cached next to the normal pyc, under its own name:
``__pycache__/<name>.cpython-311.autofork-<version>.pyc`` (``importlib.util
.cache_from_source`` decides the directory, so ``PYTHONPYCACHEPREFIX`` and ``-O`` are
honoured).  Under ``sys.dont_write_bytecode`` (``PYTHONDONTWRITEBYTECODE``, ``-B``) no
file is written beside the sources; the cache moves to a directory of the user's
(``cache_dir()``: ``AUTOFORK_CACHE_DIR``, else ``$XDG_CACHE_HOME/autofork``, else
``~/.cache/autofork``), laid out as ``PYTHONPYCACHEPREFIX`` lays out pycs: the source's
absolute directory below it, ``<dir>/<name>.cpython-311.autofork-<version>.pyc``.  The
reason: libcst costs some 300 ms to import, and a machine that sets
``PYTHONDONTWRITEBYTECODE`` everywhere would otherwise pay it on every run of every
script.  ``AUTOFORK_CACHE=0`` turns the cache off altogether (nothing read, nothing
written).  Its layout::

    16 bytes   a PEP 552 checked-hash header: magic, flags 0b11, source hash
     4 bytes   length n of the next part, little-endian
     n bytes   marshal of (fingerprint, dependencies)
     the rest  marshal of the code object, or of None: "this source needs no rewrite"

A module outside the library that needs no rewrite gets such a None file too (it is
then imported by the normal machinery, with its normal pyc): later runs neither parse it
again nor import the rewriter.

The source hash is checked on every load, so an edit within the same second is seen.
The fingerprint is the autofork version plus a digest of the rewriter's own source;
the dependencies are the modules the rewrite resolved against, each with its source
hash and the marks it defined.  The program run as ``__main__`` (which Python itself
never caches) has its own file, ``<name>.cpython-311.autofork-<version>.main.pyc``
(``main_code``): a run whose script and marks did not change imports no libcst.  The
cache is stale when the source, the fingerprint, or the marks of any dependency differ
(a dependency whose source changed but whose marks did not leaves the cache valid).

Invariant: the cached pyc is always a complete, valid file.  It is written to a
temporary file in the same directory and renamed over the old one with ``os.replace``,
so a reader sees the old file or the new one, never a part.  A failed write is logged
and costs speed, never correctness.
"""

from __future__ import annotations

import _imp
import importlib.machinery
import importlib.util
import marshal
import os
import site
import sys
import threading
import time
import types
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

from autofork import _phases

__all__ = [
    "ImportHook",
    "Rules",
    "install",
    "installed_hooks",
    "plain_spec",
    "make_resolver",
    "parse_patterns",
    "disabled",
    "cache_dir",
    "cache_path",
    "caching",
    "main_code",
]



def _debug(message: str, *args: object) -> None:
    # logging is not imported for this: a program that has not imported it cannot have
    # configured it to show DEBUG records (see _phases).
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger("autofork.importhook").debug(message, *args)

Marks = Mapping[str, str]
Resolver = Callable[[str], Optional[Marks]]
# One resolved module, as stored in the cache: (name, source hash or None, marks or None).
Dependency = tuple[str, Optional[bytes], Optional[tuple[tuple[str, str], ...]]]

_FLAGS_CHECKED_HASH = (0b11).to_bytes(4, "little")
_HEADER_SIZE = 16
_GLOB_CHARS = frozenset("*?[")
_OFF_VALUES = ("0", "false", "no", "off")

# The re-entrancy guard, one per thread and shared by every hook instance: while a
# thread is inside the hook (resolving, rewriting, importing libcst), the imports it
# triggers go to the normal machinery.
_guard = threading.local()


def disabled() -> bool:
    """True when ``AUTOFORK=0`` (or false/no/off): the hook then rewrites nothing."""
    return os.environ.get("AUTOFORK", "1").strip().lower() in _OFF_VALUES


# ----------------------------------------------------------------------------- rules


def parse_patterns(text: str | Iterable[str] | None) -> tuple[str, ...]:
    """Split ``"a,b:c"`` (or several such strings) into patterns; paths become absolute."""
    if text is None:
        return ()
    chunks = [text] if isinstance(text, str) else list(text)
    patterns: list[str] = []
    for chunk in chunks:
        for part in chunk.replace(os.pathsep, ",").split(","):
            part = part.strip()
            if part:
                patterns.append(os.path.abspath(part) if _is_path(part) else part)
    return tuple(patterns)


def _is_path(pattern: str) -> bool:
    return os.sep in pattern or bool(os.altsep and os.altsep in pattern)


def _matches(pattern: str, name: str, origin: str) -> bool:
    has_glob = not _GLOB_CHARS.isdisjoint(pattern)
    if has_glob:
        import fnmatch
    if _is_path(pattern):
        if has_glob:
            return fnmatch.fnmatch(origin, pattern)
        return origin == pattern or origin.startswith(pattern.rstrip(os.sep) + os.sep)
    if has_glob:
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def _skipped_dirs() -> tuple[str, ...]:
    # The standard library's directory (lib-dynload is inside it) and the site
    # directories; sysconfig.get_paths() would say the same at ten times the cost.
    dirs = {os.path.dirname(os.__file__)}
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # site may be replaced (virtualenv < 20)
        pass
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


_SKIPPED_DIRS: tuple[str, ...] | None = None


def _in_library(origin: str) -> bool:
    global _SKIPPED_DIRS
    if _SKIPPED_DIRS is None:
        _SKIPPED_DIRS = _skipped_dirs()
    real = os.path.realpath(origin)
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return real.startswith(_SKIPPED_DIRS)


_LIBRARY_DIRS: dict[str, bool] = {}


def _dir_in_library(directory: str) -> bool:
    known = _LIBRARY_DIRS.get(directory)
    if known is None:
        known = _LIBRARY_DIRS[directory] = _in_library(os.path.join(directory, "_"))
    return known


class Rules:
    """Which modules the hook rewrites.  ``only``, when set, limits it to those patterns."""

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                 only: Optional[tuple[str, ...]] = None) -> None:
        self.include = include
        self.exclude = exclude
        self.only = only

    def __repr__(self) -> str:
        return f"Rules(include={self.include!r}, exclude={self.exclude!r}, only={self.only!r})"

    @classmethod
    def from_environment(cls, include: Sequence[str] = (), exclude: Sequence[str] = (),
                         only: Optional[Sequence[str]] = None) -> Rules:
        """The rules given, plus ``AUTOFORK_INCLUDE`` and ``AUTOFORK_EXCLUDE``."""
        return cls(
            include=parse_patterns([os.environ.get("AUTOFORK_INCLUDE", ""), *include]),
            exclude=parse_patterns([os.environ.get("AUTOFORK_EXCLUDE", ""), *exclude]),
            only=None if only is None else parse_patterns(only),
        )

    def skips_name(self, name: str) -> bool:
        """The early bail-out by name alone, before any file is looked at."""
        top = name.partition(".")[0]
        if top == "autofork":
            return True
        if self.only is not None and not any(_is_path(p) or _matches(p, name, "")
                                             for p in self.only):
            return True
        if top in sys.stdlib_module_names:
            return not any(_matches(p, name, "") for p in self.include if not _is_path(p))
        return False

    def skips_place(self, path: Optional[Iterable[str]]) -> bool:
        """The bail-out for a submodule by where it can be, before any finder searches:
        every directory of its package's ``__path__`` is in the library (site-packages,
        the standard library), and no ``include`` or ``only`` pattern could take it back.

        Without it, each of the ~500 modules that ``import pandas`` loads was searched for
        twice (by the hook, then by the import) and its path resolved: 0.3 s under load.
        """
        if path is None or self.include or self.only is not None:
            return False
        entries = list(path)
        return bool(entries) and all(_dir_in_library(entry) for entry in entries)

    def wants(self, name: str, origin: str) -> bool:
        """Whether the module ``name`` loaded from ``origin`` is to be rewritten."""
        if name.partition(".")[0] == "autofork":
            return False
        origin = os.path.abspath(origin)
        if any(_matches(p, name, origin) for p in self.exclude):
            return False
        if self.only is not None:
            return any(_matches(p, name, origin) for p in self.only)
        if any(_matches(p, name, origin) for p in self.include):
            return True
        return not _in_library(origin)


# -------------------------------------------------------------- finding source files


def _transformer() -> Any:
    from autofork import transformer  # libcst is imported only when a module is rewritten

    return transformer


def _source_of(spec: importlib.machinery.ModuleSpec) -> tuple[Optional[str], Optional[bytes]]:
    """(source path, source bytes) of a found module, or (None, None) when it has none."""
    loader = spec.loader
    origin = spec.origin
    if isinstance(loader, importlib.machinery.SourceFileLoader) and origin:
        try:
            return origin, loader.get_data(origin)
        except OSError:
            return None, None
    get_source = getattr(loader, "get_source", None)
    if get_source is None:
        return None, None
    try:
        text = get_source(spec.name)
    except Exception:  # noqa: BLE001 - any loader trouble means "no source"
        return None, None
    return (origin, text.encode("utf-8")) if isinstance(text, str) else (None, None)


def _find_spec(name: str, search_path: Sequence[str] = ()) -> Optional[importlib.machinery.ModuleSpec]:
    """Find ``name`` without importing it (nor, unlike ``importlib.util.find_spec``, its parents).

    A parent already imported gives its ``__path__``; one not imported is found the same
    way, recursively.  Top-level names are looked up in ``search_path`` first, then by
    every meta-path finder but ours, which is what an import would do.
    """
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None) if module is not None else None
    if isinstance(spec, importlib.machinery.ModuleSpec):
        return spec
    parent, _, _ = name.rpartition(".")
    path: Optional[list[str]] = None
    if parent:
        parent_spec = _find_spec(parent, search_path)
        if parent_spec is None or parent_spec.submodule_search_locations is None:
            return None
        path = list(parent_spec.submodule_search_locations)
    elif search_path:
        spec = importlib.machinery.PathFinder.find_spec(name, list(search_path))
        if spec is not None:
            return spec
    return _ask_finders(name, path)


def plain_spec(name: str) -> Optional[importlib.machinery.ModuleSpec]:
    """The spec the import system finds for ``name`` with no autofork hook asked about it;
    its parent packages are imported first, as an import would (through the hooks).

    For the module run as ``__main__`` (``python -m autofork -m pkg``): its rewrite is the
    CLI's (``main_code``, cached as such), so the hook's own analysis of it as a module
    would only cost a parse, and libcst's import on every run.
    """
    if not name or name.startswith("."):
        raise ImportError(f"relative module names are not supported: {name!r}", name=name)
    parent, _, _ = name.rpartition(".")
    path: Optional[Iterable[str]] = None
    if parent:
        path = getattr(importlib.import_module(parent), "__path__", None)
        if path is None:
            raise ModuleNotFoundError(f"__path__ attribute not found on {parent!r} while "
                                      f"trying to find {name!r}", name=name)
    return _ask_finders(name, path)


def _ask_finders(name: str, path: Optional[Iterable[str]]) -> Optional[importlib.machinery.ModuleSpec]:
    """The spec the import system would find for ``name``, from every finder but ours."""
    for finder in list(sys.meta_path):
        if isinstance(finder, ImportHook):
            continue
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(name, path)
        except Exception:  # noqa: BLE001 - a third-party finder's trouble: not found
            continue
        if spec is not None:
            return spec
    return None


class _Marks:
    """The forkable marks each source defines, remembered by source hash (the ast pass is not
    free, and a module that marks something is also read with libcst for its effects)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_hash: dict[bytes, dict[str, str]] = {}

    def of(self, digest: bytes, data: bytes) -> dict[str, str]:
        with self._lock:
            known = self._by_hash.get(digest)
        if known is None:
            try:
                # Without the functions whose effects keep them plain (autofork.effects).
                known = dict(_transformer().forkable_functions(importlib.util.decode_source(data), ""))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                known = {}
            with self._lock:
                self._by_hash[digest] = known
        return known


_marks = _Marks()


class _Found:
    """A module's source, found without importing it.  (Not a NamedTuple: making one
    costs half a millisecond of every start-up.)"""

    __slots__ = ("digest", "data")

    def __init__(self, digest: Optional[bytes], data: bytes = b"") -> None:
        self.digest = digest  # None: the standard library, taken to mark nothing unread
        self.data = data

    def marks(self) -> dict[str, str]:
        return {} if self.digest is None else _marks.of(self.digest, self.data)


_STDLIB = _Found(None)


def _lookup(name: str, search_path: Sequence[str] = ()) -> Optional[_Found]:
    """The source of the module ``name``, or None when it has none."""
    if name.partition(".")[0] in sys.stdlib_module_names:
        return _STDLIB
    try:
        spec = _find_spec(name, search_path)
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None:
        return None
    _, data = _source_of(spec)
    if data is None:
        return None
    return _Found(importlib.util.source_hash(data), data)


def _frozen(marks: Optional[Marks]) -> Optional[tuple[tuple[str, str], ...]]:
    return None if marks is None else tuple(sorted(marks.items()))


def make_resolver(search_path: Sequence[str] = (),
                  record: Optional[dict[str, Dependency]] = None) -> Resolver:
    """The transformer's resolver: module name -> its marks, None when it has no source.

    Finds sources without importing anything.  Each answer is added to ``record``.
    """

    answers: dict[str, Optional[Marks]] = {}  # one rewrite may ask about a module often

    def resolve(name: str) -> Optional[Marks]:
        if name in answers:
            return answers[name]
        _guard.busy = getattr(_guard, "busy", 0) + 1
        try:
            found = _lookup(name, search_path)
            marks = None if found is None else found.marks()
        finally:
            _guard.busy -= 1
        if record is not None:
            record[name] = (name, None if found is None else found.digest, _frozen(marks))
        answers[name] = marks
        return marks

    return resolve


# ------------------------------------------------------------------------- the cache


def _version() -> str:
    version = getattr(sys.modules.get("autofork"), "__version__", None)
    if isinstance(version, str):
        return version
    try:
        from importlib.metadata import version as dist_version

        return dist_version("autofork")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0+unknown"


_FINGERPRINT: Optional[str] = None


def _fingerprint() -> str:
    """Everything besides the source and the dependencies that shapes the generated code."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        # The rewriter's sources (every module beside this one: the transformer and its
        # helpers), read without importing them (libcst is slow to import), and hashed as
        # pycs are (hashlib costs more to import than all of this takes).
        parts = [_version().encode()]
        here = os.path.dirname(os.path.abspath(__file__))
        try:
            names = sorted(name for name in os.listdir(here) if name.endswith(".py"))
        except OSError:
            names = []
        for name in names:
            try:
                with open(os.path.join(here, name), "rb") as file:
                    parts.append(file.read())
            except OSError:
                pass
        _FINGERPRINT = importlib.util.source_hash(b"\0".join(parts)).hex()
    return _FINGERPRINT


def cache_dir() -> Optional[str]:
    """The directory rewrites are cached under when Python writes no bytecode, else None.

    ``AUTOFORK_CACHE_DIR``, else ``$XDG_CACHE_HOME/autofork``, else ``~/.cache/autofork``;
    None (the cache lives beside the sources, in ``__pycache__``) unless
    ``sys.dont_write_bytecode``.
    """
    if not sys.dont_write_bytecode:
        return None
    chosen = os.environ.get("AUTOFORK_CACHE_DIR")
    if chosen:
        return os.path.abspath(chosen)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is to be ignored
        return os.path.join(xdg, "autofork")
    return os.path.join(os.path.expanduser("~"), ".cache", "autofork")


def caching() -> bool:
    """False when ``AUTOFORK_CACHE=0`` (or false/no/off): nothing is read from or written to
    the cache, so every run rewrites again."""
    return os.environ.get("AUTOFORK_CACHE", "1").strip().lower() not in _OFF_VALUES


def cache_path(source_path: str, main: bool = False) -> Optional[str]:
    """Where the rewritten code of ``source_path`` is cached; None when there is no cache
    (``AUTOFORK_CACHE=0``, or Python has no cache tag).

    ``main``: the file run as ``__main__`` (its rewrite differs from the module's own).
    Beside the source (``importlib.util.cache_from_source``), or, under
    ``sys.dont_write_bytecode``, under ``cache_dir()`` as ``PYTHONPYCACHEPREFIX`` lays
    pycs out: the source's absolute directory below the prefix.
    """
    if not caching():
        return None
    try:
        normal = importlib.util.cache_from_source(source_path)
    except (NotImplementedError, ValueError):
        return None
    stem = normal[: -len(".pyc")]
    root = cache_dir()
    if root is not None:
        drive, directory = os.path.splitdrive(os.path.dirname(os.path.abspath(source_path)))
        stem = os.path.join(root, drive.strip(":\\/"), directory.lstrip("\\/"),
                            os.path.basename(stem))
    return f"{stem}.autofork-{_version()}{'.main' if main else ''}.pyc"


def _read_cache(pyc: str, data: bytes, source_path: str, search_path: Sequence[str] = ()
                ) -> Optional[tuple[Optional[types.CodeType], tuple[Dependency, ...]]]:
    """(code, dependencies) when the cache is valid for ``data``, else None.

    The code is None when the cache says the source needs no rewrite.
    """
    try:
        with open(pyc, "rb") as file:
            blob = file.read()
    except OSError:
        return None
    header = importlib.util.MAGIC_NUMBER + _FLAGS_CHECKED_HASH + importlib.util.source_hash(data)
    if blob[:_HEADER_SIZE] != header:
        return None
    try:
        size = int.from_bytes(blob[_HEADER_SIZE:_HEADER_SIZE + 4], "little")
        start = _HEADER_SIZE + 4
        fingerprint, dependencies = marshal.loads(blob[start:start + size])
        if fingerprint != _fingerprint() or not _still_valid(dependencies, search_path):
            return None
        code = marshal.loads(blob[start + size:])
    except (ValueError, EOFError, TypeError):
        return None  # a damaged file is a miss; the next write replaces it
    if code is None:
        return None, dependencies
    if not isinstance(code, types.CodeType):
        return None
    # The cache may have been written when the file had another name (a moved tree), as
    # for a normal pyc: the code reports the file it is loaded from.
    _imp._fix_co_filename(code, source_path)  # type: ignore[attr-defined]  # as importlib does
    return code, dependencies


def _still_valid(dependencies: Sequence[Dependency], search_path: Sequence[str]) -> bool:
    for name, old_digest, old_marks in dependencies:
        found = _lookup(name, search_path)
        if found is None:
            if old_marks is not None:
                return False
        elif found.digest is None or found.digest != old_digest:
            if _frozen(found.marks()) != old_marks:
                return False
        # else: the same source, so the same marks, without parsing it again
    return True


def _write_cache(pyc: str, data: bytes, dependencies: Iterable[Dependency],
                 code: Optional[types.CodeType]) -> None:
    """Cache ``code`` (None: "needs no rewrite") for the source ``data``; see the invariant."""
    meta = marshal.dumps((_fingerprint(), tuple(sorted(dependencies))))
    blob = b"".join((
        importlib.util.MAGIC_NUMBER, _FLAGS_CHECKED_HASH, importlib.util.source_hash(data),
        len(meta).to_bytes(4, "little"), meta, marshal.dumps(code),
    ))
    temporary = f"{pyc}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(pyc), exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(blob)
        os.replace(temporary, pyc)
    except OSError as why:  # read-only tree, full disk, a race on Windows: only speed is lost
        _debug("could not write %s: %s", pyc, why)
        try:
            os.unlink(temporary)
        except OSError:
            pass
    else:
        _debug("wrote %s", pyc)


# ------------------------------------------------------------------------ the loader


def _warn(path: str, why: BaseException) -> None:
    import warnings

    from autofork.runtime.errors import AutoforkWarning

    warnings.warn_explicit(
        f"autofork could not rewrite {path} ({type(why).__name__}: {why}); "
        f"it runs untransformed, so its calls of marked functions stay sequential",
        AutoforkWarning, filename=path, lineno=1, module="autofork.importhook",
    )


def _load_libcst() -> None:
    """Import libcst before the first rewrite, then hide it from the cyclic GC.

    libcst's modules make some 10^5 objects that live as long as the process; every full
    collection of the program would walk them again, and so does the interpreter's
    teardown (about 80 ms of CPU here).  ``gc.freeze()`` moves every object alive now to
    the permanent generation: libcst's, and whatever else exists at this moment (when the
    main script is rewritten, the program has not started yet), which the cyclic GC then
    never frees; objects made later are collected as ever.
    """
    if "libcst" in sys.modules:
        return
    import gc

    began = time.perf_counter()
    import libcst  # noqa: F401 - for the transformer, which imports it by name

    gc.freeze()
    _phases.note("libcst imported", began)


def rewrite_code(data: bytes, path: str, name: str, package: Optional[str],
                 resolver: Resolver, checked: bool = False) -> tuple[Optional[types.CodeType], bool]:
    """(code, rewritten) for a module's source; (None, False) when it needs no rewrite.

    ``checked``: ``needs_rewrite`` already said yes for these very bytes (the finder asks
    it before it hands out the loader), so its parse is not made twice.  A syntax error of the user's raises the ``SyntaxError`` plain Python would; an
    internal rewriter failure warns, naming the file, and gives the untransformed code.
    """
    transformer = _transformer()
    try:
        source = importlib.util.decode_source(data)
        if not checked and not transformer.needs_rewrite(source, name, resolver, package):
            return None, False
        _load_libcst()
        rewritten = transformer.rewrite(source, name, resolver, package)
        return transformer.compile_rewritten(source, rewritten, path), True
    except Exception as why:  # noqa: BLE001 - never hide the user's code behind our bug
        failure = why
    # Outside the except block, so that nothing of ours is chained to the user's error:
    # the user's own SyntaxError (or encoding error) comes from compiling the original,
    # exactly as plain Python reports it; a source that compiles means the bug was ours.
    code = compile(data, path, "exec", dont_inherit=True)
    _warn(path, failure)
    return code, False


def main_code(data: bytes, path: str, package: Optional[str],
              search_path: Sequence[str] = ()) -> types.CodeType:
    """The code of the program run as ``__main__``: rewritten, or plain when it needs no rewrite.

    Python never caches the main script's bytecode; autofork caches it (under
    ``cache_path(path, main=True)``, with the same checks as a module's rewrite), so that
    a run whose script has not changed imports neither libcst nor the rewriter.  A script
    that needs no rewrite is cached too, as its plain code: the modules it imports are
    recorded, so that one of them gaining a mark makes it stale.  ``search_path`` is where
    the script's own imports are found (its directory, for a script).
    """
    began = time.perf_counter()
    pyc = cache_path(path, main=True)
    cached = _read_cache(pyc, data, path, search_path) if pyc is not None else None
    if cached is not None:
        _phases.note("__main__ from the cache %s", began, pyc)
        code = cached[0]
        return compile(data, path, "exec", dont_inherit=True) if code is None else code
    record: dict[str, Dependency] = {}
    code, rewritten = rewrite_code(data, path, "__main__", package,
                                   make_resolver(search_path, record))
    if pyc is not None and (rewritten or code is None):  # not after an internal failure
        _write_cache(pyc, data, record.values(), code)
    _phases.note("__main__ %s", began, "rewritten" if rewritten else "needs no rewrite")
    return compile(data, path, "exec", dont_inherit=True) if code is None else code


class AutoforkLoader(importlib.machinery.SourceFileLoader):
    """A source loader whose code is the rewritten code, from the cache when valid."""

    def __init__(self, fullname: str, path: str, code: Optional[types.CodeType] = None,
                 data: Optional[bytes] = None) -> None:
        super().__init__(fullname, path)
        self._code = code
        self._data = data
        self.dependencies: dict[str, Dependency] = {}

    def get_code(self, fullname: str) -> types.CodeType:
        code, self._code = self._code, None
        if code is not None:
            return code
        data, self._data = self._data, None
        checked = data is not None  # the bytes the finder's needs_rewrite said yes to
        if data is None:
            data = self.get_data(self.path)
        _guard.busy = getattr(_guard, "busy", 0) + 1
        try:
            package = fullname if self.is_package(fullname) else fullname.rpartition(".")[0]
            self.dependencies.clear()
            code, rewritten = rewrite_code(data, self.path, fullname, package,
                                           make_resolver(record=self.dependencies), checked)
        finally:
            _guard.busy -= 1
        if code is None:  # the source changed since find_spec and needs no rewrite now
            return super().source_to_code(data, self.path)
        pyc = cache_path(self.path)
        if pyc is not None and rewritten:
            _write_cache(pyc, data, self.dependencies.values(), code)
        _debug("rewrote %s (%s)", fullname, self.path)
        return code


# ------------------------------------------------------------------------ the finder


class ImportHook:
    """The meta-path finder.  A context manager: ``with ImportHook().install(): ...``.

    It does not derive from ``importlib.abc.MetaPathFinder``, which would only add
    ``invalidate_caches`` and costs the import of ``importlib.resources`` (tempfile,
    shutil...) at start-up: a meta-path finder is any object with ``find_spec``.
    """

    def __init__(self, rules: Optional[Rules] = None) -> None:
        self.rules = Rules.from_environment() if rules is None else rules
        #: module name -> the modules its rewrite resolved against (name, source hash, marks).
        self.resolved: dict[str, dict[str, Dependency]] = {}

    def __repr__(self) -> str:
        return f"ImportHook({self.rules!r})"

    def find_spec(self, fullname: str, path: Optional[Iterable[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if (getattr(_guard, "busy", 0) or disabled() or self.rules.skips_name(fullname)
                or self.rules.skips_place(path)):
            return None
        _guard.busy = getattr(_guard, "busy", 0) + 1
        try:
            return self._find_spec(fullname, path)
        except Exception as why:  # noqa: BLE001 - a bug of ours must not break an import
            import logging

            logging.getLogger("autofork.importhook").warning(
                "import hook failed on %s; importing it plainly", fullname, exc_info=why)
            return None
        finally:
            _guard.busy -= 1

    def _find_spec(self, fullname: str,
                   path: Optional[Iterable[str]]) -> Optional[importlib.machinery.ModuleSpec]:
        # What the finders after this one would find (editable installs have their own).
        # A module left alone gets that very spec back, so the import does not search
        # for it a second time; unless another autofork hook, with its own rules, comes
        # after this one and must still be asked.
        spec = _ask_finders(fullname, path)
        hooks = installed_hooks()
        plain = spec if hooks and hooks[-1] is self else None
        if (spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader)
                or not spec.origin or not self.rules.wants(fullname, spec.origin)):
            return plain
        origin = spec.origin
        data = spec.loader.get_data(origin)
        pyc = cache_path(origin)
        cached = _read_cache(pyc, data, origin) if pyc is not None else None
        if cached is not None:
            code, dependencies = cached
            if code is None:
                _debug("not rewritten %s (cached answer)", fullname)
                return plain
            _debug("cache hit %s (%s)", fullname, pyc)
            self.resolved[fullname] = {dependency[0]: dependency for dependency in dependencies}
            return self._spec(spec, AutoforkLoader(fullname, origin, code=code), pyc)
        source = importlib.util.decode_source(data)
        package = fullname if spec.submodule_search_locations is not None else spec.parent
        record: dict[str, Dependency] = {}
        try:
            needed = _transformer().needs_rewrite(source, fullname, make_resolver(record=record),
                                                  package)
        except Exception:  # noqa: BLE001 - a SyntaxError is best reported by the normal loader
            return plain
        if not needed:
            # Remembered (with the modules asked about: one gaining a mark makes the answer
            # stale), so that later runs need not parse it again, nor import the rewriter.
            _debug("not rewritten %s", fullname)
            if pyc is not None:
                _write_cache(pyc, data, record.values(), None)
            return plain
        loader = AutoforkLoader(fullname, origin, data=data)
        self.resolved[fullname] = loader.dependencies
        return self._spec(spec, loader, pyc)

    def invalidate_caches(self) -> None:
        """``importlib.invalidate_caches()`` calls it; the caches here check themselves."""

    @staticmethod
    def _spec(spec: importlib.machinery.ModuleSpec, loader: AutoforkLoader,
              pyc: Optional[str]) -> importlib.machinery.ModuleSpec:
        spec.loader = loader
        spec.cached = pyc
        return spec

    def include(self, *patterns: str) -> None:
        """Rewrite these modules too (``import autofork.enable`` in a package uses it)."""
        added = parse_patterns(patterns)
        self.rules.include += added
        if self.rules.only is not None:
            self.rules.only += added

    # -- installation

    def install(self) -> ImportHook:
        """Put the hook first on ``sys.meta_path`` (once); returns it."""
        if self not in sys.meta_path:
            sys.meta_path.insert(0, self)
        return self

    def uninstall(self) -> None:
        """Take the hook off ``sys.meta_path``; modules it loaded stay loaded."""
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass

    def __enter__(self) -> ImportHook:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()


def installed_hooks() -> list[ImportHook]:
    """The autofork hooks on ``sys.meta_path``, first first."""
    return [finder for finder in sys.meta_path if isinstance(finder, ImportHook)]


def install(include: Sequence[str] = (), exclude: Sequence[str] = (),
            only: Optional[Sequence[str]] = None) -> ImportHook:
    """Install an import hook with these rules (plus ``AUTOFORK_INCLUDE``/``_EXCLUDE``)."""
    return ImportHook(Rules.from_environment(include, exclude, only)).install()
