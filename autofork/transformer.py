"""Source-to-source rewriting of calls to marked functions into forks and joins.

A call is rewritten when its callee resolves *statically* to a function marked
``@implicit_fork`` / ``@cpu_bound_fork`` / ``@io_bound_fork``::

    value = work(x)            ->  value = _autofork_rt.fork(work, x)
    work(x)   # discarded      ->  _autofork_j1.fork(work, x)   inside
                                   with _autofork_rt.Joiner() as _autofork_j1:
    if value is None:          ->  if _autofork_rt.unwrap(value) is None:
    json.dumps(value)          ->  json.dumps(_autofork_rt.unwrap(value))
    out.append(work(x))        ->  _autofork_j1.into(out).append(_autofork_j1.fork(work, x))
    total += work(x)           ->  total = _autofork_j1.fold(total, '+=', _autofork_j1.fork(work, x))
    xs = [work(i) for i in y]  ->  xs = _autofork_rt.settle([_autofork_rt.fork(work, i) for i in y])

Three passes, none of them libcst's metadata providers (on a 3,000-line module
``ScopeProvider`` alone costs twice the parse):

1. ``needs_rewrite``: stdlib ``ast`` only.  A module that neither marks a function
   nor imports one that is marked is returned untouched, as the very same ``str``.
2. One walk over the libcst tree with a scope stack of our own, in three layers that
   each read on their own: ``_ScopeWalker`` (the bodies, and the bindings of every
   module, class, function, lambda and comprehension scope, kept in ``Scopes``, with
   ``global``/``nonlocal``), ``_LoopWalker`` (the loops of each body) and
   ``_CallRecorder`` (the call sites, the ``is``/``type()``/``id()``/``match`` uses of
   names, the names assigned a call's value) and ``_FlowRecorder`` (what the loop rules
   read: stores and reductions in loops, comprehensions, call arguments, every
   ``name = value``), each with the path of nodes that leads to it.  ``Scopes`` then resolves names, flow-insensitively: a name resolves to a
   marked function only when *every* binding of it in the scope Python would look it
   up in is that marked function.  Anything else (a parameter, an assignment, a loop
   variable, an import of something else, a star import that may shadow it) leaves
   the call plain.  ``_Plan`` decides what to rewrite, ``_Flow`` adds the loop rules
   (issue 9, below); ``autofork.effects`` reads the marked functions through the same
   ``Scopes``.
3. ``_Rewriter``: rebuilds only the nodes on the paths to a change; every other node
   is the parser's own object, so the user's text comes back byte for byte.

Where discarded forks are joined: around the outermost loop that contains them
inside their innermost region, or around the rest of that region when no loop
does.  Regions are function bodies, the module body, ``try`` bodies and ``with``
bodies, so an ``except`` clause or a context manager sees a fork's exception as it
saw the sequential one.  A value-producing call inside a ``try``/``with`` body is
forked through the body's ``Joiner`` too (``Joiner.fork`` returns its proxy), so its
exception surfaces before the body ends, where the same clauses see it; a name bound
from a fork there goes through the joiner's ``bind`` and a ``finally`` around the
joiner's ``with`` gives it back what it held before the failing call (``_Rewinds``).  The reverse
(``_Catchers``): a result forked *before* a ``try`` with handlers or a ``with``, not
finished there and read in its body, is settled just before the statement
(``rt.settle_names("r")`` on a line of its own), so that the block does not catch a
failure that sequentially escaped before it began.

Loops finish what they start (``_Flow``): a value-producing call in a loop is forked
through the loop's ``Joiner`` too, so every fork has finished, and the first failure in
call order is raised, when the loop ends.  The containers the loop fills with results
(``append``/``insert``/``extend``/``setdefault``, ``d[k] = v``, ``xs += [v]``) are
registered with it (``into``) and hold values, in place, after it.  A reduction whose
accumulator the loop mentions nowhere else (``acc += v``, ``acc = acc + v``,
``acc.update(v)``/``extend``/``add``) becomes a ``fold``/``then`` step, applied in call
order without waiting in the loop.  A comprehension of forks is settled where it ends (in
a loop: registered with the loop); a fork's value handed to an unmarked call is
unwrapped there (a list of them, built in the loop: settled); a list or dict display of
forks given to an unmarked call is settled.  Calls in a lambda or a generator expression
stay lazy forks: they run later, if ever.  A module that calls a function marked only
``@io_bound``/``@cpu_bound`` (labels for ``fork``) gets a warning naming it.

What is rewritten: calls of marked functions defined in the module (top level, nested,
recursive), imported by ``from m import f [as g]`` (relative ones too) or called as
``m.f(...)`` / ``pkg.sub.f(...)`` after ``import``, ``self.m(...)`` of a marked method of
the enclosing class, with any arguments (``*args``, ``**kwargs``), in any expression
(lambdas and comprehensions included).  What is left plain, on purpose:

- a name bound in the scope to anything else as well (parameter, assignment, loop or
  comprehension variable, ``except``/``with`` target, import, ``del``, a ``global`` or
  ``nonlocal`` rebinding elsewhere, a star import that may come after the def);
- marked generators and async generators (a warning names them at import);
- ``await f(...)``, a discarded call of a local ``async def`` (it only made a coroutine);
- a call directly under ``is``, ``type()``, ``id()`` or as a ``match`` subject;
- a discarded call in a class body;
- ``obj.m(...)`` on anything but ``self``, ``super().m()``, ``Class.m(obj)``, a function
  re-exported by a module that only imports it, a mark applied as ``f = implicit_fork(g)``.

Line numbers: inserted statements go on existing lines where that is natural (the
runtime import joins the docstring, ``__future__`` or first statement line);
``with`` lines are new (in a class body, a ``del`` of the joiner follows its block, so
that ``vars(C)`` is the sequential one), and ``compile_rewritten`` maps every position
of the code object back to the original file.

Cost (``python tests/transformer_cases/bench.py``: a generated 3,000-line module with
214 marked functions, 214 joiners and 214 lazy values; CPU time, Python 3.11, libcst 1.9):
``ast.parse`` 0.025 s, ``libcst.parse_module`` 0.24 s, ``rewrite`` 0.40 s (1.7x the libcst
parse; our walk 0.02 s, the partial rebuild 0.04 s, libcst's code generation 0.10 s),
``needs_rewrite`` 0.03 s, ``compile_rewritten`` 0.11 s (a plain ``compile`` is 0.025 s).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import re
import types
from typing import (TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence,
                    Union, cast)

if TYPE_CHECKING:
    import libcst as cst

__all__ = ["Resolver", "marked_functions", "forkable_functions", "needs_rewrite", "rewrite",
           "compile_rewritten", "parse_rewritten"]

Resolver = Callable[[str], Optional[Mapping[str, str]]]
"""resolver(absolute module name) -> {function name: "cpu" | "io"} for the functions that
module marks, or None when its source cannot be found."""

_FORK_MARKS = ("implicit_fork", "cpu_bound_fork", "io_bound_fork")
_TRUST_MARK = "trust_effects"
_LABELS = frozenset(("io_bound", "cpu_bound"))   # marks for explicit fork() only
_ALL_MARKS = frozenset((*_FORK_MARKS, *_LABELS, _TRUST_MARK))
_RUNTIME_MODULE = "autofork.runtime"
_RUNTIME_NAME = "implicit"
_PREFIX = "_autofork_"

# Value-producing forks inside a try/with body go through the body's Joiner too
# (``Joiner.fork`` returns the proxy and joins it when the body ends), so the same
# ``except`` clauses and context managers see their exceptions.
_JOIN_VALUE_FORKS = True

_NEWLINE = re.compile(r"\r\n|\r|\n")
# A mark word on a decorator line, or given another name (``implicit_fork as par``).
_MARK_USE = re.compile(r"^[ \t]*@[^\n]*\b(?:implicit_fork|cpu_bound_fork|io_bound_fork)\b"
                       r"|\b(?:implicit_fork|cpu_bound_fork|io_bound_fork)\s+as\b", re.MULTILINE)
_USED_NAME = re.compile(r"\b_autofork_\w+")


# --------------------------------------------------------------------------- ast side


def _contains_mark(source: str) -> bool:
    return any(word in source for word in _FORK_MARKS)


def _is_autofork(module: Optional[str]) -> bool:
    return module is not None and (module == "autofork" or module.startswith("autofork."))


def _kind_of(words: Iterable[str]) -> Optional[str]:
    """The fork kind a set of mark names gives, or None when none of them is a fork mark."""
    words = set(words)
    if "cpu_bound_fork" in words:
        return "cpu"
    if "io_bound_fork" in words:
        return "io"
    if "implicit_fork" in words:
        return "io" if "io_bound" in words else "cpu"
    return None


def _absolute(module: Optional[str], level: int, package: Optional[str]) -> Optional[str]:
    """The absolute name of ``from <level dots><module> import ...``, or None if unknown."""
    if level == 0:
        return module
    if not package:
        return None
    try:
        return importlib.util.resolve_name("." * level + (module or ""), package)
    except (ImportError, ValueError):
        return None


def _package_of(module_name: str, package: Optional[str]) -> Optional[str]:
    if package is not None:
        return package
    return module_name.rpartition(".")[0] or None


def _ast_targets(target: ast.expr, out: list[str]) -> None:
    if isinstance(target, ast.Name):
        out.append(target.id)
    elif isinstance(target, (ast.Tuple, ast.List)):
        for element in target.elts:
            _ast_targets(element, out)
    elif isinstance(target, ast.Starred):
        _ast_targets(target.value, out)


def _ast_module_bindings(body: list[ast.stmt], out: dict[str, list[ast.AST]]) -> None:
    """Every binding the module scope gets from ``body`` (not looking into defs/classes)."""
    for stmt in body:
        names: list[str] = []
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.setdefault(stmt.name, []).append(stmt)
            continue
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            for alias in stmt.names:
                if alias.name != "*":
                    local = alias.asname or alias.name.partition(".")[0]
                    out.setdefault(local, []).append(stmt)
            continue
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                _ast_targets(target, names)
        elif isinstance(stmt, (ast.AugAssign, ast.AnnAssign, ast.For, ast.AsyncFor)):
            _ast_targets(stmt.target, names)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            for item in stmt.items:
                if item.optional_vars is not None:
                    _ast_targets(item.optional_vars, names)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                _ast_targets(target, names)
        for handler in getattr(stmt, "handlers", ()):
            if handler.name:
                names.append(handler.name)
        for name in names:
            out.setdefault(name, []).append(stmt)
        for block in _ast_blocks(stmt):
            _ast_module_bindings(block, out)


# Methods that change their object in place (list, dict, set, deque, bytearray, array).
_IN_PLACE_METHODS = frozenset({
    "append", "extend", "insert", "remove", "pop", "clear", "sort", "reverse", "add",
    "discard", "update", "setdefault", "popitem", "difference_update",
    "intersection_update", "symmetric_difference_update", "appendleft", "extendleft",
    "popleft", "rotate", "__setitem__", "__delitem__", "__iadd__", "fromlist", "frombytes",
})
# Functions that change their first argument in place.
_IN_PLACE_FUNCTIONS = frozenset({
    "heappush", "heappop", "heapify", "heapreplace", "heappushpop", "insort", "insort_left",
    "insort_right", "shuffle",
})
IN_PLACE_NAME = "__autofork_in_place__"


def in_place_globals(tree: ast.Module, first_fork: int = 1, cell: bool = False) -> list[str]:
    """The module's globals that its code may change in place while forks run
    (``seen.append(x)``, ``table[k] = v``, ``config.scale = 3``, ``heapq.heappush(q, x)``,
    ``items += [x]``, ``counter.inc()`` for a method of the module's classes that changes
    its ``self``): the runtime compares them per call, whatever their size
    (``freshness``), since a change keeps their identity.

    A change inside a function counts (it may run at any time), and one at module level
    from line ``first_fork`` on (the first rewritten call), or in a loop that reaches it;
    a table filled at module level before any fork is compared with nothing (it changes
    no call's inputs: the first call sends it as it is then).  A local of the same name
    counts too (harmless: a few needless comparisons); in a ``cell``, so does a name that
    earlier cells bound."""
    bound: dict[str, list[ast.AST]] = {}
    _ast_module_bindings(tree.body, bound)
    methods = _IN_PLACE_METHODS | _changing_methods(tree)
    found: set[str] = set()

    def visit(node: ast.AST, live: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            live = True
        elif isinstance(node, ast.stmt):  # a loop reaching the first fork counts whole
            live = live or (node.end_lineno or node.lineno) >= first_fork
        if live:
            found.update(_changed_in_place(node, methods))
        for child in ast.iter_child_nodes(node):
            visit(child, live)

    visit(tree, False)
    return sorted(name for name in found if cell or name in bound)


def _changing_methods(tree: ast.Module) -> set[str]:
    """The names of the methods of the module's classes that change their ``self``
    (``self.n += 1``, ``self.items.append(x)``): ``counter.inc()`` changes ``counter``."""
    out: set[str] = set()
    for klass in ast.walk(tree):
        if not isinstance(klass, ast.ClassDef):
            continue
        for method in klass.body:
            if isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) and method.args.args:
                me = method.args.args[0].arg
                if any(me in _changed_in_place(node, _IN_PLACE_METHODS, rebinds=False)
                       for node in ast.walk(method)):
                    out.add(method.name)
    return out


def _changed_in_place(node: ast.AST, methods: Iterable[str], rebinds: bool = True) -> list[str]:
    """The names whose objects ``node`` changes in place: an item or attribute stored or
    deleted, a call of one of ``methods`` on it, ``heapq.heappush(it, x)``; ``it += x``
    too with ``rebinds`` (a list keeps its identity)."""
    changed: list[Optional[str]] = []
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            changed += (_base_name(part.value) for part in ast.walk(target)
                        if isinstance(part, (ast.Subscript, ast.Attribute))
                        and isinstance(part.ctx, (ast.Store, ast.Del)))
        if rebinds and isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            changed.append(node.target.id)
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in methods:
            changed.append(_base_name(func.value))
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in _IN_PLACE_FUNCTIONS and node.args:
            changed.append(_base_name(node.args[0]))
    return [name for name in changed if name is not None]


def _base_name(node: ast.AST) -> Optional[str]:
    """``a`` of ``a``, ``a.b[c].d``; None for anything else."""
    while isinstance(node, (ast.Subscript, ast.Attribute)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _may_change_in_place(tree: ast.Module, source: str) -> bool:
    """Whether a global the module binds to data (not an import, def or class) is spelled
    where an in-place change could be (``name.``, ``name[``, ``name +=``, or the first
    argument of ``heappush(`` and the like): a cheap test of the text before the walk
    of ``in_place_globals``."""
    bound: dict[str, list[ast.AST]] = {}
    _ast_module_bindings(tree.body, bound)
    plain = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    names = [name for name, nodes in bound.items()
             if not all(isinstance(node, plain) for node in nodes)]
    if not names:
        return False
    spelled = "|".join(re.escape(name) for name in names)
    functions = "|".join(sorted(_IN_PLACE_FUNCTIONS))
    return re.search(rf"(?<![\w.])(?:{spelled})\s*(?:[.\[]|[-+*/%&|^@<>]+=)"
                     rf"|\b(?:{functions})\(\s*(?:{spelled})\b", source) is not None


def _read_in_functions(tree: ast.Module) -> set[str]:
    """The names that the module's functions read (what a marked function can see of
    the module's globals, itself or through the functions it calls)."""
    read: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            read.update(part.id for part in ast.walk(node)
                        if isinstance(part, ast.Name) and isinstance(part.ctx, ast.Load))
    return read


def _in_place_site(node: ast.AST, base: Callable[[ast.AST], None], found: set[str],
                   methods: frozenset | set = _IN_PLACE_METHODS,
                   receiver_only: bool = False) -> None:
    """Record (``base`` of the object) what ``node`` changes in place, if it is such a
    change: an item or attribute stored or deleted, a call of one of ``methods`` on it,
    ``heapq.heappush(it, x)``, ``it += x`` (not with ``receiver_only``)."""
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
        targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
        for target in targets:
            for part in ast.walk(target):
                if isinstance(part, (ast.Subscript, ast.Attribute)) and isinstance(
                        getattr(part, "ctx", None), (ast.Store, ast.Del)):
                    base(part.value)
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and not receiver_only:
            found.add(node.target.id)  # items += [x]: a list keeps its identity
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in methods:
            base(func.value)
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in _IN_PLACE_FUNCTIONS and node.args:
            base(node.args[0])


def _ast_is_generator(function: Union[ast.FunctionDef, ast.AsyncFunctionDef]) -> bool:
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return False


def _ast_mark(decorator: ast.expr, marks: Mapping[str, str], modules: set[str]) -> Optional[str]:
    if isinstance(decorator, ast.Name):
        return marks.get(decorator.id)
    if isinstance(decorator, ast.Attribute) and decorator.attr in _ALL_MARKS:
        root = decorator.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in modules:
            return decorator.attr
    return None


def _mark_spellings(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    """({local name: mark} imported from autofork, {local names of autofork modules})."""
    marks: dict[str, str] = {}
    modules: set[str] = set()
    for stmt in _ast_statements(tree.body):
        if isinstance(stmt, ast.ImportFrom) and stmt.level == 0 and _is_autofork(stmt.module):
            for alias in stmt.names:
                if alias.name in _ALL_MARKS:
                    marks[alias.asname or alias.name] = alias.name
        elif isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if _is_autofork(alias.name):
                    modules.add(alias.asname or alias.name.partition(".")[0])
    return marks, modules


def _ast_calls_label_only(tree: ast.Module) -> bool:
    """Whether the module calls by name a top-level function marked only ``@io_bound`` or
    ``@cpu_bound`` (labels for ``fork``, which the hook does not rewrite: it warns)."""
    marks, modules = _mark_spellings(tree)
    bindings: dict[str, list[ast.AST]] = {}
    _ast_module_bindings(tree.body, bindings)
    labelled = set()
    for name, nodes in bindings.items():
        words = [{_ast_mark(d, marks, modules) for d in n.decorator_list} - {None}
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) else set()
                 for n in nodes]
        if all(w and w <= _LABELS for w in words):
            labelled.add(name)
    return bool(labelled) and any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                                  and n.func.id in labelled for n in ast.walk(tree))


def _scan_marks(tree: ast.Module) -> tuple[dict[str, str], dict[str, int]]:
    """({name: kind} of the forkable marked top-level functions, {name: line} of marked generators)."""
    marks, modules = _mark_spellings(tree)
    bindings: dict[str, list[ast.AST]] = {}
    _ast_module_bindings(tree.body, bindings)
    marked: dict[str, str] = {}
    generators: dict[str, int] = {}
    for name, nodes in bindings.items():
        kinds: set[Optional[str]] = set()
        for node in nodes:
            kind = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                kind = _kind_of(filter(None, (_ast_mark(d, marks, modules) for d in node.decorator_list)))
                if kind is not None and _ast_is_generator(node):
                    generators[name] = node.lineno
                    kind = None
            kinds.add(kind)
        only = kinds.pop() if len(kinds) == 1 else None
        if only is not None:
            marked[name] = only
    return marked, generators


def _ast_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Module-level statements, including those nested in module-level compound statements."""
    for stmt in body:
        yield stmt
        if not isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for block in _ast_blocks(stmt):
                yield from _ast_statements(block)


def _ast_blocks(stmt: ast.stmt) -> Iterable[list[ast.stmt]]:
    """The statement lists inside ``stmt``, in source order (as libcst walks them)."""
    body = getattr(stmt, "body", None)
    if isinstance(body, list):
        yield body
    for handler in getattr(stmt, "handlers", ()):
        yield handler.body
    for case in getattr(stmt, "cases", ()):
        yield case.body
    for field in ("orelse", "finalbody"):
        inner = getattr(stmt, field, None)
        if isinstance(inner, list):
            yield inner


AstDef = Union[ast.FunctionDef, ast.AsyncFunctionDef]


def ast_defs(body: list[ast.stmt], out: Optional[list[AstDef]] = None) -> list[AstDef]:
    """Every def of ``body`` (stdlib ``ast``), in the order a pre-order walk of the statements
    meets them: the order of ``Scopes.defs``, which gives their lines."""
    out = [] if out is None else out
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out.append(stmt)
        for block in _ast_blocks(stmt):
            ast_defs(block, out)
    return out


def marked_functions(source: str) -> dict[str, str]:
    """Names of the top-level functions ``source`` marks for the import hook.

    ``{name: kind}`` with kind ``"cpu"`` or ``"io"`` (``@implicit_fork`` stacked with
    ``@io_bound``, in either order, and ``@io_bound_fork`` are ``"io"``).  Marks count
    when spelled through an import from autofork: ``implicit_fork``, ``autofork.implicit_fork``,
    ``af.implicit_fork`` after ``import autofork as af``, ``par`` after
    ``from autofork import implicit_fork as par``.  A name bound at module level to
    anything besides marked defs, and a marked generator function, are left out.
    Cheap: a substring test, then stdlib ``ast``; ``{}`` for unparsable text.
    """
    if not _contains_mark(source):
        return {}
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    return _scan_marks(tree)[0]


def forkable_functions(source: str, module_name: str) -> dict[str, str]:
    """``marked_functions`` without the functions whose effects keep their calls plain.

    What the import hook tells other modules: a module that imports a function with
    effects (``autofork.effects``) calls it plainly, as its own module does.  Parses
    with libcst only when ``source`` marks something.
    """
    marks = marked_functions(source)
    if not marks:
        return marks
    c = _libcst()
    try:
        module = c.parse_module(source)
    except c.ParserSyntaxError:
        return marks
    scopes = Scopes(_package_of(module_name, None), _MemoResolver(lambda name: None))
    _ScopeWalker(scopes).visit(module)
    scopes.finish()
    effects = _effects(module, scopes, source)
    plain = {d.node.name.value for d in scopes.defs if id(d) in effects and d.scope is scopes.module}
    return {name: kind for name, kind in marks.items() if name not in plain}


class _MemoResolver:
    """The resolver, asked at most once per module name (``{}`` stands for None)."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._seen: dict[str, Mapping[str, str]] = {}

    def __call__(self, module: str) -> Mapping[str, str]:
        if _is_autofork(module) or module == "__future__":
            return {}
        found = self._seen.get(module)
        if found is None:
            found = self._seen[module] = self._resolver(module) or {}
        return found


def _imports_marked(imports: list[Union[ast.Import, ast.ImportFrom]], tree: ast.Module,
                    module_name: str, resolve: _MemoResolver, package: Optional[str]) -> bool:
    """Whether one of ``imports`` brings in a marked function (asks only about imported modules).

    ``from pkg import sub`` then ``sub.f()`` counts when ``pkg.sub`` marks ``f``; the
    resolver is asked about ``pkg.sub`` only when ``sub.<attr>(...)`` is called somewhere.
    """
    base = _package_of(module_name, package)
    attribute_bases: Optional[set[str]] = None
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if any(resolve(".".join(parts[:i])) for i in range(1, len(parts) + 1)):
                    return True
            continue
        module = _absolute(node.module, node.level, base)
        if module is None:
            continue
        mapping = resolve(module)
        for alias in node.names:
            if alias.name == "*" and mapping:
                return True
            if alias.name in mapping:
                return True
            if alias.name == "*":
                continue
            if attribute_bases is None:
                attribute_bases = _attribute_bases(tree)
            if (alias.asname or alias.name) in attribute_bases and resolve(f"{module}.{alias.name}"):
                return True
    return False


def _all_statements(body: list[ast.stmt]) -> Iterable[ast.stmt]:
    """Every statement, at any depth (defs and classes included); no expression is visited."""
    for stmt in body:
        yield stmt
        for block in _ast_blocks(stmt):
            yield from _all_statements(block)


def _attribute_bases(tree: ast.Module) -> set[str]:
    """Names ``x`` called as ``x.attr(...)`` or ``x.a.b(...)`` anywhere in the module."""
    bases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            root = node.func.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name):
                bases.add(root.id)
    return bases


def _needs_rewrite_tree(tree: ast.Module, has_marks: bool, module_name: str,
                        resolve: _MemoResolver, package: Optional[str]) -> bool:
    """needs_rewrite on a parsed module: statements only; the resolver is asked last."""
    imports: list[Union[ast.Import, ast.ImportFrom]] = []
    decorated: list[Union[ast.FunctionDef, ast.AsyncFunctionDef]] = []
    for stmt in _all_statements(tree.body):
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            imports.append(stmt)
        elif has_marks and isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if stmt.decorator_list:
                decorated.append(stmt)
    if decorated:
        # Loose on purpose (any decorator spelled like a mark, at any depth): the libcst
        # pass resolves it properly.
        spellings = set(_FORK_MARKS)
        for node in imports:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and _is_autofork(node.module):
                spellings.update(a.asname or a.name for a in node.names if a.name in _FORK_MARKS)
        for function in decorated:
            for decorator in function.decorator_list:
                word = (decorator.id if isinstance(decorator, ast.Name) else
                        decorator.attr if isinstance(decorator, ast.Attribute) else None)
                if word in spellings:
                    return True
    return _imports_marked(imports, tree, module_name, resolve, package)


def needs_rewrite(source: str, module_name: str, resolver: Resolver, package: Optional[str] = None) -> bool:
    """The cheap test, before any parse: may ``rewrite`` change this module at all?

    False when the text marks nothing and no import brings in a marked function;
    the resolver is asked only about modules the source imports.  No libcst parse.
    Text that does not parse gives False (compiling it plainly shows Python's error).
    True also for a module that calls its own functions marked only ``@io_bound`` or
    ``@cpu_bound``: its rewrite warns that those marks do nothing under the hook.
    """
    has_marks = _contains_mark(source)
    if not has_marks and "import" not in source:
        return False
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    if _contains_label(source) and _ast_calls_label_only(tree):
        return True
    return _needs_rewrite_tree(tree, has_marks, module_name, _MemoResolver(resolver), package)


def _contains_label(source: str) -> bool:
    return "io_bound" in source or "cpu_bound" in source


# ------------------------------------------------------------------------ libcst side

_cst: Any = None


def _libcst() -> Any:
    """libcst, imported on first use (it costs ~0.2 s; ``needs_rewrite`` never needs it)."""
    global _cst
    if _cst is None:
        import libcst

        _cst = libcst
        _init_tables(libcst)
    return _cst


_SKIP_FIELDS = frozenset({
    "lpar", "rpar", "comma", "semicolon", "leading_lines", "lines_after_decorators", "header",
    "footer", "trailing_whitespace", "newline", "colon", "equal", "dot", "operator",
    "asynchronous", "lbracket", "rbracket", "lbrace", "rbrace", "star", "encoding",
    "default_indent", "default_newline", "has_trailing_newline", "indent", "value_kind",
})
_LEAVES: frozenset[type] = frozenset()


@functools.lru_cache(maxsize=None)
def _child_fields(node_type: type) -> tuple[str, ...]:
    """The fields of a libcst node type that may hold expressions or statements."""
    return tuple(f.name for f in dataclasses.fields(node_type)
                 if f.name not in _SKIP_FIELDS and not f.name.startswith("whitespace"))


def child_nodes(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """The children of ``node`` that may hold expressions or statements, in source order
    (names, operators and whitespace left out): the walk this module makes, for others."""
    base = _cst.CSTNode
    leaves = _LEAVES
    for name in _child_fields(type(node)):
        value = getattr(node, name)
        if isinstance(value, (tuple, list)):
            for child in value:
                if isinstance(child, base) and type(child) not in leaves:
                    yield child
        elif isinstance(value, base) and type(value) not in leaves:
            yield value


def _init_tables(libcst: Any) -> None:
    global _LEAVES
    names = ("Name", "SimpleString", "Integer", "Float", "Imaginary", "Ellipsis", "Pass",
             "Break", "Continue", "Comma", "Dot", "Colon", "Semicolon", "AssignEqual",
             "Newline", "TrailingWhitespace", "EmptyLine", "SimpleWhitespace",
             "ParenthesizedWhitespace", "Comment", "LeftParen", "RightParen",
             "LeftSquareBracket", "RightSquareBracket", "LeftCurlyBrace", "RightCurlyBrace")
    leaves = {getattr(libcst, n) for n in names}
    bases = {libcst.BaseBinaryOp, libcst.BaseBooleanOp, libcst.BaseCompOp, libcst.BaseUnaryOp,
             libcst.BaseAugOp}
    for name in dir(libcst):
        obj = getattr(libcst, name)
        # By the MRO, not issubclass: these bases are ABCs, and issubclass walked every
        # subclass tree of each (some 18,000 checks, 35 ms of the first rewrite).
        if isinstance(obj, type) and not bases.isdisjoint(obj.__mro__):
            leaves.add(obj)
    _LEAVES = frozenset(leaves)


# ------------------------------------------------------------ scopes and what names bind


class Binding:
    """What a name is bound to; the base class (``OTHER``) stands for "something else"."""

    __slots__ = ()


OTHER = Binding()


class Def(Binding):
    """A ``def``; its fork ``kind`` (None: not a forkable marked function) is set by ``Scopes.finish``."""

    __slots__ = ("node", "scope", "body_scope", "kind", "generator_mark", "order", "trusted")

    def __init__(self, node: cst.FunctionDef, scope: Scope, order: Optional[int]) -> None:
        self.node = node
        self.scope = scope            # where its decorators are evaluated
        self.order = order            # index of a module-level def among the module's statements
        self.body_scope: Optional[Scope] = None
        self.kind: Optional[str] = None
        self.generator_mark: Optional[str] = None
        self.trusted = False          # marked @trust_effects


class Param(Binding):
    """A parameter of a function or lambda (not a method's first one); ``packed`` for
    ``*args`` and ``**kwargs``, whose tuple and dict are made anew for each call."""

    __slots__ = ("name", "packed")

    def __init__(self, name: str, packed: bool = False) -> None:
        self.name = name
        self.packed = packed


class Local(Binding):
    """A name assigned in its scope: ``name = <source>``, ``with <source> as name``, or,
    with ``element``, ``for name in <source>`` (the name holds an element of it).
    ``scope`` is where the source is evaluated."""

    __slots__ = ("source", "scope", "element")

    def __init__(self, source: cst.BaseExpression, scope: Scope, element: bool = False) -> None:
        self.source = source
        self.scope = scope
        self.element = element


class FromImport(Binding):
    """``from module import name``."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name


class ModuleImport(Binding):
    """``import module`` (the name is bound to ``module``, maybe a package's root)."""

    __slots__ = ("module",)

    def __init__(self, module: str) -> None:
        self.module = module


class Mark(Binding):
    """One of autofork's marks, imported by name."""

    __slots__ = ("word",)

    def __init__(self, word: str) -> None:
        self.word = word


class Known(Binding):
    """A name the module's namespace holds before the source runs: a marked function."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind = kind


def _outer_bindings(namespace: Optional[Mapping[str, str]]) -> dict[str, Binding]:
    """``rewrite``'s ``namespace`` as bindings (see there); unknown descriptions are "other"."""
    out: dict[str, Binding] = {}
    for name, what in (namespace or {}).items():
        if what in ("cpu", "io"):
            out[name] = Known(what)
        elif what.startswith("module:"):
            out[name] = ModuleImport(what[len("module:"):])
        elif what.startswith("mark:") and what[len("mark:"):] in _ALL_MARKS:
            out[name] = Mark(what[len("mark:"):])
        else:
            out[name] = OTHER
    return out


class SelfParam(Binding):
    """The first parameter of a method: ``self.m(...)`` looks ``m`` up in ``cls``."""

    __slots__ = ("cls",)

    def __init__(self, cls: Scope) -> None:
        self.cls = cls


class Scope:
    """The bindings of one module, class, function, lambda or comprehension scope."""

    __slots__ = ("kind", "parent", "name", "bindings", "globals", "nonlocals", "stars",
                 "fork_names", "is_generator")

    def __init__(self, kind: str, parent: Optional[Scope], name: str = "") -> None:
        self.kind = kind              # module, class, function, lambda, comp
        self.parent = parent
        self.name = name              # of the class or function
        self.bindings: dict[str, list[Binding]] = {}
        self.globals: set[str] = set()
        self.nonlocals: set[str] = set()
        self.stars: list[str] = []
        self.fork_names: set[str] = set()
        self.is_generator = False


class Scopes:
    """The scopes of one module and name lookup in them.

    ``_ScopeWalker`` fills it during its walk (``open``, ``bind``, ``defs``);
    ``finish`` completes it (``nonlocal`` bindings, the marks of every def).  Then
    ``scope_of(node)`` is the scope a def, lambda, class or comprehension node opens,
    ``lookup(scope, name)`` the bindings Python would find for ``name`` there, and
    ``callee(func, scope)`` what a called expression is.  The rewriter and
    ``autofork.effects`` read the module through these, so that both agree on what a
    name means.
    """

    def __init__(self, package: Optional[str], resolve: _MemoResolver,
                 outer: Optional[dict[str, Binding]] = None) -> None:
        self.package = package
        self.resolve = resolve
        self.outer = outer or {}      # names bound before the source runs (IPython cells)
        self.module = Scope("module", None)
        self.defs: list[Def] = []
        self.generator_defs: list[Def] = []
        self.star_order = -1          # index of the last module statement with a star import
        self._by_node: dict[int, Scope] = {}
        self._pending_nonlocal: list[tuple[Scope, str, Binding]] = []

    # ---- filled during the walk

    def open(self, kind: str, parent: Scope, node: cst.CSTNode) -> Scope:
        """A new scope of ``kind`` inside ``parent``, opened by ``node``."""
        name = getattr(node, "name", None)
        scope = Scope(kind, parent, name.value if isinstance(name, _cst.Name) else "")
        self._by_node[id(node)] = scope
        return scope

    def bind(self, name: str, binding: Binding, scope: Scope) -> Scope:
        """Record a binding of ``name`` made in ``scope``; the scope that gets it."""
        if name in scope.globals:
            scope = self.module
        elif name in scope.nonlocals:
            self._pending_nonlocal.append((scope, name, binding))
            return scope
        scope.bindings.setdefault(name, []).append(binding)
        return scope

    def binding_scope(self, name: str, scope: Scope) -> Optional[Scope]:
        """The scope an assignment to ``name`` in ``scope`` binds (None for a nonlocal)."""
        if name in scope.globals:
            return self.module
        if name in scope.nonlocals:
            return None
        return scope

    def finish(self) -> None:
        """After the walk: place the ``nonlocal`` bindings, resolve the marks of every def."""
        for scope, name, binding in self._pending_nonlocal:
            target = scope.parent
            while target is not None and (target.kind == "class" or name not in target.bindings):
                target = target.parent
            (target or self.module).bindings.setdefault(name, []).append(binding)
        self._pending_nonlocal = []
        for definition in self.defs:
            if not definition.node.decorators:
                continue
            words = [self.mark_of(d.decorator, definition.scope) for d in definition.node.decorators]
            kind = _kind_of(w for w in words if w)
            definition.trusted = _TRUST_MARK in words
            body = definition.body_scope
            if kind is not None and body is not None and body.is_generator:
                definition.generator_mark = next(w for w in words if w in _FORK_MARKS)
                self.generator_defs.append(definition)
                kind = None
            definition.kind = kind

    # ---- asked after the walk

    def scope_of(self, node: cst.CSTNode) -> Optional[Scope]:
        """The scope ``node`` (a def, lambda, class or comprehension) opens."""
        return self._by_node.get(id(node))

    def lookup(self, scope: Scope, name: str) -> tuple[Optional[Scope], list[Binding]]:
        """The scope Python finds ``name`` in from ``scope``, and its bindings there."""
        module = self.module
        current: Optional[Scope] = scope
        first = True
        while current is not None:
            if current.kind == "class" and not first:
                current = current.parent
                continue
            if name in current.globals:
                current = module
                break
            if name not in current.nonlocals and name in current.bindings:
                break
            first = False
            current = current.parent
        found = current.bindings.get(name, []) if current is not None else []
        if not found and name in self.outer and (current is None or current is module):
            # Not bound by the source itself: what the namespace already holds.
            current, found = module, [self.outer[name]]
        if (current is None or current is module) and module.stars:
            # Module-level defs that come after every star import are not shadowed by them.
            explicit = bool(found) and not all(
                isinstance(b, Def) and b.order is not None and b.order > self.star_order
                for b in found)
            if explicit or not found:
                found = [*found, *self._star_bindings(name, explicit)]
            if found:
                current = module
        return current, found

    def _star_bindings(self, name: str, explicit: bool) -> list[Binding]:
        out: list[Binding] = []
        for module in self.module.stars:
            if _is_autofork(module):
                if name in _ALL_MARKS:
                    out.append(Mark(name))
            elif not name.startswith("_") and name in self.resolve(module):
                out.append(FromImport(module, name))
            elif explicit:
                out.append(OTHER)   # the star import may rebind it
        return out

    def binding_kind(self, binding: Binding) -> Optional[str]:
        """The fork kind of a marked function ``binding`` is, else None."""
        if isinstance(binding, (Def, Known)):
            return binding.kind
        if isinstance(binding, FromImport):
            return self.resolve(binding.module).get(binding.name)
        return None

    def bindings_kind(self, bindings: Sequence[Binding]) -> Optional[str]:
        """The fork kind when every binding is a marked function of the same kind."""
        kinds = {self.binding_kind(b) for b in bindings}
        if len(kinds) == 1 and None not in kinds:
            return kinds.pop()
        return None

    def mark_of(self, expression: cst.BaseExpression, scope: Scope) -> Optional[str]:
        """The mark word a decorator expression spells, if it is one of autofork's."""
        c = _cst
        if isinstance(expression, c.Name):
            words = {b.word if isinstance(b, Mark) else None
                     for b in self.lookup(scope, expression.value)[1]}
            return words.pop() if len(words) == 1 else None
        if isinstance(expression, c.Attribute) and expression.attr.value in _ALL_MARKS:
            root = expression.value
            while isinstance(root, c.Attribute):
                root = root.value
            if isinstance(root, c.Name):
                bindings = self.lookup(scope, root.value)[1]
                if bindings and all(isinstance(b, ModuleImport) and _is_autofork(b.module)
                                    for b in bindings):
                    return expression.attr.value
        return None

    def callee(self, func: cst.BaseExpression, scope: Scope) -> tuple[Optional[str], list[Binding]]:
        """(fork kind, bindings) of a callee expression; kind None when it is not a marked function."""
        c = _cst
        if isinstance(func, c.Name):
            bindings = self.lookup(scope, func.value)[1]
            return self.bindings_kind(bindings), bindings
        root, parts = _chain(func)
        if root is None:
            return None, []
        bindings = self.lookup(scope, root)[1]
        if len(parts) == 1 and bindings and all(isinstance(b, SelfParam) for b in bindings):
            classes = {id(b.cls): b.cls for b in bindings if isinstance(b, SelfParam)}
            if len(classes) == 1:
                members = next(iter(classes.values())).bindings.get(parts[0], [])
                return self.bindings_kind(members), members
            return None, []
        module, name = self.imported(func, scope)
        return (None if module is None or name is None else self.resolve(module).get(name)), []

    def imported(self, func: cst.BaseExpression, scope: Scope) -> tuple[Optional[str], Optional[str]]:
        """(module, name) when ``func`` is a name of another module: ``m.f`` / ``pkg.m.f``
        after ``import``, ``f`` or ``sub.f`` after ``from ... import``; else (None, None)."""
        root, parts = _chain(func)
        if root is None:
            return None, None
        bindings = self.lookup(scope, root)[1]
        paths = set()
        for binding in bindings:
            if isinstance(binding, ModuleImport) and parts:
                paths.add((binding.module, *parts))
            elif isinstance(binding, FromImport):
                paths.add((binding.module, binding.name, *parts))
            else:
                return None, None
        if len(paths) != 1:
            return None, None
        path = paths.pop()
        return ".".join(path[:-1]), path[-1]


class _Region:
    """A body whose discarded forks must be joined before it ends (module, function,
    class, ``try`` or ``with`` body), and the index of its statement being walked."""

    __slots__ = ("kind", "suite", "loops", "top", "path", "rest_start", "rest_joiner")

    def __init__(self, kind: str, suite: cst.CSTNode) -> None:
        self.kind = kind              # module, function, class, try, with
        self.suite = suite            # Module, IndentedBlock or SimpleStatementSuite
        self.loops: list[cst.CSTNode] = []
        self.top = -1                 # index in suite.body of the statement being walked
        self.path: tuple[cst.CSTNode, ...] = ()
        self.rest_start: Optional[int] = None
        self.rest_joiner: Optional[str] = None


@dataclasses.dataclass
class _CallSite:
    call: cst.Call
    scope: Scope
    path: tuple[cst.CSTNode, ...]
    context: str                      # value, stmt, comp, plain
    region: _Region
    loop: Optional[cst.CSTNode]
    top: int


@dataclasses.dataclass
class _NameUse:
    name: cst.Name
    scope: Scope
    path: tuple[cst.CSTNode, ...]
    needs_builtin: Optional[str] = None   # "type"/"id": only when that name is the builtin


def _chain(node: cst.BaseExpression) -> tuple[Optional[str], list[str]]:
    """(``a``, [``b``, ``c``]) for ``a.b.c``; (None, []) when it does not start with a name."""
    parts: list[str] = []
    while isinstance(node, _cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, _cst.Name):
        return None, []
    parts.reverse()
    return node.value, parts


def _dotted(node: cst.BaseExpression) -> str:
    c = _cst
    if isinstance(node, c.Name):
        return node.value
    if isinstance(node, c.Attribute):
        return f"{_dotted(node.value)}.{node.attr.value}"
    raise TypeError(f"not a dotted name: {node!r}")


def _result_calls(expression: cst.BaseExpression) -> list[cst.Call]:
    """The calls whose value may become the value of ``expression`` itself."""
    c = _cst
    if isinstance(expression, c.Call):
        return [expression]
    if isinstance(expression, c.IfExp):
        return [*_result_calls(expression.body), *_result_calls(expression.orelse)]
    if isinstance(expression, c.BooleanOperation):
        return [*_result_calls(expression.left), *_result_calls(expression.right)]
    if isinstance(expression, c.NamedExpr):
        return _result_calls(expression.value)
    return []


def _params(params: cst.Parameters) -> list[cst.Param]:
    c = _cst
    out = [*params.posonly_params, *params.params]
    if isinstance(params.star_arg, c.Param):
        out.append(params.star_arg)
    out.extend(params.kwonly_params)
    if params.star_kwarg is not None:
        out.append(params.star_kwarg)
    return out


def _packed(params: cst.Parameters) -> tuple[cst.Param, ...]:
    star = params.star_arg
    return tuple(p for p in (star, params.star_kwarg) if isinstance(p, _cst.Param))


# ------------------------------------------------------------------------- the walk


class _ScopeWalker:
    """One walk over a libcst module: the bodies (regions) and the bindings of every scope.

    ``visit`` dispatches on the node type through ``handlers``; subclasses add handlers
    and override the hooks ``_loop_body`` (a loop's body and ``else``) and
    ``_assigned`` (``name = <value>``).  ``path`` is the chain of nodes from the module
    to the node being visited; ``region`` the body being walked; ``scope`` the scope.
    """

    def __init__(self, scopes: Scopes) -> None:
        c = _cst
        self.scopes = scopes
        self.path: list[cst.CSTNode] = []
        self.scope = scopes.module
        self.region = _Region("module", c.Module(body=()))
        self.handlers: dict[type, Callable[[Any], None]] = {
            c.Module: self._v_module, c.IndentedBlock: self._v_block,
            c.SimpleStatementSuite: self._v_suite, c.FunctionDef: self._v_function,
            c.Lambda: self._v_lambda, c.ClassDef: self._v_class,
            c.ListComp: self._v_comp, c.SetComp: self._v_comp, c.GeneratorExp: self._v_comp,
            c.DictComp: self._v_comp, c.Assign: self._v_assign, c.AssignTarget: self._v_assign_target,
            c.AnnAssign: self._v_ann_assign, c.AugAssign: self._v_aug_assign, c.For: self._v_for,
            c.While: self._v_while, c.With: self._v_with, c.WithItem: self._v_with_item,
            c.Try: self._v_try, c.TryStar: self._v_try, c.ExceptHandler: self._v_except,
            c.ExceptStarHandler: self._v_except, c.NamedExpr: self._v_walrus, c.Del: self._v_del,
            c.Global: self._v_global, c.Nonlocal: self._v_nonlocal, c.Import: self._v_import,
            c.ImportFrom: self._v_import_from, c.MatchAs: self._v_match_as,
            c.MatchStar: self._v_match_star, c.MatchMapping: self._v_match_mapping,
            c.Yield: self._v_yield,
        }

    def visit(self, node: cst.CSTNode) -> None:
        self.path.append(node)
        handler = self.handlers.get(type(node))
        if handler is None:
            self.children(node)
        else:
            handler(node)
        self.path.pop()

    def children(self, node: cst.CSTNode) -> None:
        for child in child_nodes(node):
            self.visit(child)

    def visit_optional(self, node: Any) -> None:
        if isinstance(node, _cst.CSTNode):
            self.visit(node)

    # ---- hooks

    def _loop_body(self, node: Union[cst.For, cst.While]) -> None:
        self.visit(node.body)
        self.visit_optional(node.orelse)

    def _assigned(self, target: cst.BaseExpression, value: Optional[cst.BaseExpression],
                  scope: Optional[Scope]) -> None:
        """``target = value`` binds ``target`` in ``scope`` (None: a nonlocal)."""

    # ---- bodies

    def _v_module(self, node: cst.Module) -> None:
        self.region = _Region("module", node)
        self.region.path = tuple(self.path)
        for index, stmt in enumerate(node.body):
            self.region.top = index
            self.visit(stmt)

    def _v_block(self, node: cst.IndentedBlock) -> None:
        region = self.region
        if region.suite is node:
            region.path = tuple(self.path)
            for index, stmt in enumerate(node.body):
                region.top = index
                self.visit(stmt)
        else:
            for stmt in node.body:
                self.visit(stmt)

    def _v_suite(self, node: cst.SimpleStatementSuite) -> None:
        if self.region.suite is node:
            self.region.path = tuple(self.path)
            self.region.top = -1
        for stmt in node.body:
            self.visit(stmt)

    def _in_region(self, kind: str, suite: cst.CSTNode, scope: Optional[Scope] = None) -> None:
        saved = self.region, self.scope
        self.region = _Region(kind, suite)
        if scope is not None:
            self.scope = scope
        self.visit(suite)
        self.region, self.scope = saved

    def _v_with(self, node: cst.With) -> None:
        for item in node.items:
            self.visit(item)
        self._in_region("with", node.body)

    def _v_try(self, node: Union[cst.Try, cst.TryStar]) -> None:
        self._in_region("try", node.body)
        for handler in node.handlers:
            self.visit(handler)
        self.visit_optional(node.orelse)
        self.visit_optional(node.finalbody)

    # ---- scopes

    def _v_function(self, node: cst.FunctionDef) -> None:
        c = _cst
        for decorator in node.decorators:
            self.visit(decorator)
        self._visit_param_parts(node.params)
        if node.returns is not None:
            self.visit(node.returns)
        order = self.region.top if self.region.kind == "module" and self.scope.kind == "module" else None
        definition = Def(node, self.scope, order)
        self.scopes.defs.append(definition)
        self.bind(node.name.value, definition)
        inner = self.scopes.open("function", self.scope, node)
        definition.body_scope = inner
        self_param = None
        if self.scope.kind == "class" and not any(
                isinstance(d.decorator, c.Name) and d.decorator.value == "staticmethod"
                for d in node.decorators):
            positional = [*node.params.posonly_params, *node.params.params]
            if positional:
                self_param = positional[0].name.value
        packed = _packed(node.params)
        for param in _params(node.params):
            name = param.name.value
            binding: Binding = (SelfParam(self.scope) if name == self_param
                                else Param(name, param in packed))
            inner.bindings.setdefault(name, []).append(binding)
        self._in_region("function", node.body, inner)

    def _visit_param_parts(self, params: cst.Parameters) -> None:
        """Defaults and annotations: evaluated in the enclosing scope."""
        self.path.append(params)
        for param in _params(params):
            if param.default is not None or param.annotation is not None:
                self.path.append(param)
                self.visit_optional(param.default)
                self.visit_optional(param.annotation)
                self.path.pop()
        self.path.pop()

    def _v_lambda(self, node: cst.Lambda) -> None:
        self._visit_param_parts(node.params)
        inner = self.scopes.open("lambda", self.scope, node)
        for param in _params(node.params):
            inner.bindings.setdefault(param.name.value, []).append(
                Param(param.name.value, param in _packed(node.params)))
        saved = self.scope
        self.scope = inner
        self.visit(node.body)
        self.scope = saved

    def _v_class(self, node: cst.ClassDef) -> None:
        for decorator in node.decorators:
            self.visit(decorator)
        for arg in (*node.bases, *node.keywords):
            self.visit(arg)
        self.bind(node.name.value, OTHER)
        self._in_region("class", node.body, self.scopes.open("class", self.scope, node))

    def _v_comp(self, node: Any) -> None:
        first = node.for_in
        self.path.append(first)
        self.visit(first.iter)   # the first iterable is evaluated in the enclosing scope
        self.path.pop()
        saved = self.scope
        self.scope = self.scopes.open("comp", saved, node)
        depth = 0
        clause = first
        while clause is not None:
            self.path.append(clause)
            depth += 1
            self.target(clause.target, Local(clause.iter, saved if clause is first else self.scope,
                                             element=True))
            if clause is not first:
                self.visit(clause.iter)
            for condition in clause.ifs:
                self.visit(condition)
            clause = clause.inner_for_in
        del self.path[len(self.path) - depth:]
        for field in ("elt", "key", "value"):
            self.visit_optional(getattr(node, field, None))
        self.scope = saved

    def _v_yield(self, node: cst.Yield) -> None:
        scope: Optional[Scope] = self.scope
        while scope is not None and scope.kind == "comp":
            scope = scope.parent
        if scope is not None:
            scope.is_generator = True
        self.visit_optional(node.value)

    # ---- bindings

    def bind(self, name: str, binding: Binding, scope: Optional[Scope] = None) -> Scope:
        """Record a binding of ``name`` made in ``scope`` (default: the current one)."""
        return self.scopes.bind(name, binding, scope or self.scope)

    def target(self, node: cst.BaseExpression, binding: Binding = OTHER) -> Optional[Scope]:
        """Bind the names of an assignment target; walk the loads inside it."""
        c = _cst
        if isinstance(node, c.Name):
            return self.bind(node.value, binding)
        if isinstance(node, (c.Tuple, c.List)):
            if isinstance(binding, Local):   # unpacked: each name holds an element
                binding = Local(binding.source, binding.scope, element=True)
            self.path.append(node)
            for element in node.elements:
                self.path.append(element)
                self.target(element.value, binding)
                self.path.pop()
            self.path.pop()
        elif isinstance(node, c.StarredElement):
            self.path.append(node)
            self.target(node.value, binding)
            self.path.pop()
        else:
            self.visit(node)
        return None

    def _binding_scope(self, target: cst.BaseExpression) -> Optional[Scope]:
        if not isinstance(target, _cst.Name):
            return None
        return self.scopes.binding_scope(target.value, self.scope)

    def _v_assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            self.visit(target)
            self._assigned(target.target, node.value, self._binding_scope(target.target))
        self.visit(node.value)

    def _v_assign_target(self, node: cst.AssignTarget) -> None:
        assign = self.path[-2]
        self.target(node.target, Local(assign.value, self.scope) if isinstance(assign, _cst.Assign)
                    else OTHER)

    def _v_ann_assign(self, node: cst.AnnAssign) -> None:
        self.target(node.target, OTHER if node.value is None else Local(node.value, self.scope))
        self.visit(node.annotation)
        if node.value is not None:
            self._assigned(node.target, node.value, self._binding_scope(node.target))
            self.visit(node.value)

    def _v_aug_assign(self, node: cst.AugAssign) -> None:
        self.target(node.target)
        self.visit(node.value)

    def _v_for(self, node: cst.For) -> None:
        self.target(node.target, Local(node.iter, self.scope, element=True))
        self.visit(node.iter)
        self._loop_body(node)

    def _v_while(self, node: cst.While) -> None:
        self.visit(node.test)
        self._loop_body(node)

    def _v_with_item(self, node: cst.WithItem) -> None:
        self.visit(node.item)
        if node.asname is not None:
            self.path.append(node.asname)
            self.target(node.asname.name, Local(node.item, self.scope))
            self.path.pop()

    def _v_except(self, node: Union[cst.ExceptHandler, cst.ExceptStarHandler]) -> None:
        self.visit_optional(node.type)
        if node.name is not None:
            self.target(node.name.name)
        self.visit(node.body)

    def _v_walrus(self, node: cst.NamedExpr) -> None:
        scope = self.scope
        while scope.kind == "comp" and scope.parent is not None:
            scope = scope.parent
        if isinstance(node.target, _cst.Name):
            bound = self.bind(node.target.value, Local(node.value, self.scope), scope)
            self._assigned(node.target, node.value,
                           None if node.target.value in scope.nonlocals else bound)
        self.visit(node.value)

    def _v_del(self, node: cst.Del) -> None:
        self.target(node.target)

    def _v_global(self, node: cst.Global) -> None:
        self.scope.globals.update(item.name.value for item in node.names)

    def _v_nonlocal(self, node: cst.Nonlocal) -> None:
        self.scope.nonlocals.update(item.name.value for item in node.names)

    def _v_import(self, node: cst.Import) -> None:
        for alias in node.names:
            full = _dotted(alias.name)
            if alias.asname is not None and isinstance(alias.asname.name, _cst.Name):
                self.bind(alias.asname.name.value, ModuleImport(full))
            else:
                root = full.partition(".")[0]
                self.bind(root, ModuleImport(root))

    def _v_import_from(self, node: cst.ImportFrom) -> None:
        c = _cst
        module = _absolute(_dotted(node.module) if node.module is not None else None,
                           len(node.relative), self.scopes.package)
        if isinstance(node.names, c.ImportStar):
            self.scope.stars.append(module or "")
            self.scopes.star_order = max(self.scopes.star_order, self.region.top)
            return
        for alias in cast("Sequence[cst.ImportAlias]", node.names):  # not ImportStar (above)
            name = _dotted(alias.name)
            local = alias.asname.name.value if (alias.asname is not None and isinstance(
                alias.asname.name, c.Name)) else name
            binding: Binding = OTHER
            if module is None or module == "__future__":
                binding = OTHER
            elif _is_autofork(module):
                binding = Mark(name) if name in _ALL_MARKS else ModuleImport(f"{module}.{name}")
            else:
                binding = FromImport(module, name)
            self.bind(local, binding)

    def _v_match_as(self, node: cst.MatchAs) -> None:
        if node.name is not None:
            self.bind(node.name.value, OTHER)
        self.visit_optional(node.pattern)

    def _v_match_star(self, node: cst.MatchStar) -> None:
        if node.name is not None:
            self.bind(node.name.value, OTHER)

    def _v_match_mapping(self, node: cst.MatchMapping) -> None:
        if node.rest is not None:
            self.bind(node.rest.value, OTHER)
        for element in node.elements:
            self.visit(element)


class _LoopWalker(_ScopeWalker):
    """Adds the loops of each region: ``region.loops`` is the stack of loops around the
    node being walked, ``loop_paths`` the path to each outermost loop of a region."""

    def __init__(self, scopes: Scopes) -> None:
        super().__init__(scopes)
        self.loop_paths: dict[int, tuple[cst.CSTNode, ...]] = {}

    def _loop_body(self, node: Union[cst.For, cst.While]) -> None:
        loops = self.region.loops
        loops.append(node)
        if len(loops) == 1:
            self.loop_paths[id(node)] = tuple(self.path)
        super()._loop_body(node)
        loops.pop()


class _CallRecorder(_LoopWalker):
    """Adds what the decisions need: every call site (with its context, region and loop),
    the names that meet ``is``/``type()``/``id()``/``match``, and the names assigned a
    call's value."""

    def __init__(self, scopes: Scopes) -> None:
        super().__init__(scopes)
        c = _cst
        self.calls: list[_CallSite] = []
        self.name_uses: list[_NameUse] = []
        self.assigned: list[tuple[Scope, str, cst.Call]] = []
        self.contexts: dict[int, str] = {}
        self.handlers.update({
            c.Expr: self._v_expr, c.Await: self._v_await,
            c.Match: self._v_match, c.Comparison: self._v_comparison, c.Call: self._v_call,
        })

    def _assigned(self, target: cst.BaseExpression, value: Optional[cst.BaseExpression],
                  scope: Optional[Scope]) -> None:
        if scope is not None and isinstance(target, _cst.Name) and value is not None:
            for call in _result_calls(value):
                self.assigned.append((scope, target.value, call))

    def _v_expr(self, node: cst.Expr) -> None:
        c = _cst
        value = node.value
        if isinstance(value, c.Call):
            self.contexts[id(value)] = "stmt"
        elif isinstance(value, (c.ListComp, c.SetComp)) and isinstance(value.elt, c.Call):
            self.contexts[id(value.elt)] = "comp"
        self.visit(value)

    def _v_await(self, node: cst.Await) -> None:
        # An awaited call gains nothing from a fork, and its coroutine must keep running
        # on the caller's event loop.
        if isinstance(node.expression, _cst.Call):
            self.contexts[id(node.expression)] = "plain"
        self.visit(node.expression)

    def _v_match(self, node: cst.Match) -> None:
        c = _cst
        subject = node.subject
        # Pattern matching checks exact types (sequence and mapping patterns, `case None`).
        if isinstance(subject, c.Name):
            self.name_uses.append(_NameUse(subject, self.scope, (*self.path, subject)))
        elif isinstance(subject, c.Tuple):
            for element in subject.elements:
                if isinstance(element.value, c.Name):
                    self.name_uses.append(_NameUse(element.value, self.scope,
                                                   (*self.path, subject, element, element.value)))
                else:
                    self._keep_plain(element.value)
        else:
            self._keep_plain(subject)
        self.children(node)

    def _v_comparison(self, node: cst.Comparison) -> None:
        c = _cst
        left: cst.BaseExpression = node.left
        left_path: tuple[cst.CSTNode, ...] = (*self.path, left)
        for target in node.comparisons:
            right_path = (*self.path, target, target.comparator)
            if isinstance(target.operator, (c.Is, c.IsNot)):
                for operand, path in ((left, left_path), (target.comparator, right_path)):
                    if isinstance(operand, c.Name):
                        self.name_uses.append(_NameUse(operand, self.scope, path))
                    else:
                        self._keep_plain(operand)
            left, left_path = target.comparator, right_path
        self.children(node)

    def _v_call(self, node: cst.Call) -> None:
        c = _cst
        func = node.func
        root = func
        while isinstance(root, c.Attribute):
            root = root.value
        if isinstance(root, c.Name):
            region = self.region
            self.calls.append(_CallSite(
                node, self.scope, tuple(self.path), self.contexts.get(id(node), "value"), region,
                region.loops[0] if region.loops else None, region.top))
            if (isinstance(func, c.Name) and func.value in ("type", "id") and len(node.args) == 1
                    and not node.args[0].star and node.args[0].keyword is None):
                arg = node.args[0]
                if isinstance(arg.value, c.Name):
                    self.name_uses.append(_NameUse(arg.value, self.scope, (*self.path, arg, arg.value),
                                                   needs_builtin=func.value))
                else:
                    self._keep_plain(arg.value)
        self.children(node)

    def _keep_plain(self, expression: cst.BaseExpression) -> None:
        """A call whose value meets ``is``, ``type()``, ``id()`` or ``match`` directly stays plain."""
        for call in _result_calls(expression):
            self.contexts[id(call)] = "plain"


# Methods that store their arguments in the receiver (a fill, settled when the loop ends),
# and those that read a single argument at once (a reduction step when nothing else in
# the loop reads the receiver: ``acc.update(f(x))``).
_FILL_METHODS = frozenset({"append", "appendleft", "insert", "setdefault", "extend",
                           "extendleft", "update"})
_THEN_METHODS = frozenset({"update", "extend", "add"})


@dataclasses.dataclass
class _Store:
    """A statement that may keep fork results in a container (a fill) or fold them into an
    accumulator (a reduction): see ``_Flow``."""

    kind: str                         # call, subscript, aug (fills); fold, then (reductions)
    node: cst.CSTNode                 # the Call, Assign or AugAssign the rewriter changes
    receiver: Optional[cst.BaseExpression]  # a fill's container expression
    values: tuple[cst.BaseExpression, ...]  # what is stored, or the folded operand
    acc: Optional[str]                # a reduction's accumulator (a plain name)
    op: str                           # a reduction's operator as written: "+=", "+", ""
    scope: Scope
    region: _Region
    loop: Optional[cst.CSTNode]       # the outermost loop of its region around it
    path: tuple[cst.CSTNode, ...]     # from the module to the node the rewriter changes


@dataclasses.dataclass
class _Collection:
    """A list/set/dict comprehension, or a display given to a call as an argument."""

    node: cst.BaseExpression
    scope: Scope
    region: _Region
    loop: Optional[cst.CSTNode]
    path: tuple[cst.CSTNode, ...]     # from the module to ``node``
    call: Optional[cst.Call]          # the call it is a direct argument of
    statement: bool                   # a whole expression statement (its value is dropped)
    assigned: bool = False            # a display that is the value of an assignment


@dataclasses.dataclass
class _Named:
    """A statement that binds names to a value: ``a = b = value``, ``a op= value``,
    ``a: T = value`` (see ``_Rewinds``)."""

    node: cst.CSTNode                 # the Assign, AugAssign or AnnAssign
    names: tuple[str, ...]
    value: cst.BaseExpression
    scope: Scope
    region: _Region
    loop: Optional[cst.CSTNode]       # the outermost loop of its region around it
    top: int                          # the index of its region's statement that holds it
    path: tuple[cst.CSTNode, ...]     # from the module to ``node``


@dataclasses.dataclass
class _Argument:
    """A (non-starred) argument of a call."""

    value: cst.BaseExpression
    call: cst.Call
    scope: Scope
    loop: Optional[cst.CSTNode]       # the outermost loop of its region around it
    path: tuple[cst.CSTNode, ...]     # from the module to ``value``


class _FlowRecorder(_CallRecorder):
    """Adds what the loop rules need (``_Flow``): the statements that store or fold values
    inside loops, the comprehensions, every call's arguments, and every ``name = value``."""

    def __init__(self, scopes: Scopes) -> None:
        super().__init__(scopes)
        c = _cst
        self.stores: list[_Store] = []
        self.collections: list[_Collection] = []
        self.arguments: list[_Argument] = []
        # (the scope the name is bound in, name, value, the scope the value is computed in)
        # for each ``name = value`` and each ``name op= value``:
        self.bound: list[tuple[Scope, str, cst.BaseExpression, Scope]] = []
        self.augmented: list[tuple[Scope, str, cst.BaseExpression, Scope]] = []
        self.named: list[_Named] = []
        self.comp_depth = 0
        # (statement, scope, path) of each try with handlers and each with statement.
        self.catchers: list[tuple[Union[cst.Try, cst.TryStar, cst.With], Scope,
                                  tuple[cst.CSTNode, ...]]] = []
        self.handlers.update({c.ListComp: self._v_comp, c.SetComp: self._v_comp,
                              c.DictComp: self._v_comp, c.AnnAssign: self._v_ann_assign})

    def _named(self, node: cst.CSTNode, names: tuple[str, ...], value: cst.BaseExpression) -> None:
        region = self.region
        self.named.append(_Named(node, names, value, self.scope, region,
                                 region.loops[0] if region.loops else None, region.top,
                                 tuple(self.path)))

    def _store(self, kind: str, node: cst.CSTNode, receiver: Optional[cst.BaseExpression],
               values: tuple[cst.BaseExpression, ...], below: tuple[cst.CSTNode, ...] = (),
               acc: Optional[str] = None, op: str = "") -> None:
        """Record a store; ``below``: the nodes from the current one down to the one changed."""
        region = self.region
        self.stores.append(_Store(kind, node, receiver, values, acc, op, self.scope, region,
                                  region.loops[0] if region.loops else None,
                                  (*self.path, *below)))

    def _assigned(self, target: cst.BaseExpression, value: Optional[cst.BaseExpression],
                  scope: Optional[Scope]) -> None:
        super()._assigned(target, value, scope)
        if scope is not None and isinstance(target, _cst.Name) and value is not None:
            self.bound.append((scope, target.value, value, self.scope))

    def _v_expr(self, node: cst.Expr) -> None:
        c = _cst
        call = node.value
        if isinstance(call, c.Call) and isinstance(call.func, c.Attribute):
            method = call.func.attr.value
            args = tuple(a.value for a in call.args if not a.star)
            receiver = call.func.value
            if method in _FILL_METHODS and args:
                self._store("call", call, receiver, args, (call, call.func, receiver))
            if (method in _THEN_METHODS and isinstance(receiver, c.Name) and len(call.args) == 1
                    and not call.args[0].star and call.args[0].keyword is None):
                self._store("then", call, receiver, args, (call,), receiver.value)
        super()._v_expr(node)

    def _v_assign(self, node: cst.Assign) -> None:
        c = _cst
        if all(isinstance(target.target, c.Name) for target in node.targets):
            self._named(node, tuple(cast("cst.Name", t.target).value for t in node.targets), node.value)
        for target in node.targets:
            if isinstance(target.target, c.Subscript):
                self._store("subscript", node, target.target.value, (node.value,),
                            (target, target.target, target.target.value))
        value = node.value
        if isinstance(value, (c.List, c.Tuple, c.Set, c.Dict)):
            region = self.region
            self.collections.append(_Collection(
                value, self.scope, region, region.loops[0] if region.loops else None,
                (*self.path, value), None, False, assigned=True))
        if (len(node.targets) == 1 and isinstance(node.targets[0].target, c.Name)
                and isinstance(value, c.BinaryOperation) and isinstance(value.left, c.Name)
                and value.left.value == node.targets[0].target.value and not value.lpar):
            self._store("fold", node, None, (value.right,), (), value.left.value,
                        _operator_text(value.operator))
        super()._v_assign(node)

    def _v_ann_assign(self, node: cst.AnnAssign) -> None:
        if isinstance(node.target, _cst.Name) and node.value is not None:
            self._named(node, (node.target.value,), node.value)
        super()._v_ann_assign(node)

    def _v_aug_assign(self, node: cst.AugAssign) -> None:
        c = _cst
        target = node.target
        if isinstance(target, c.Name):
            self._named(node, (target.value,), node.value)
        if isinstance(target, (c.Name, c.Attribute)):
            self._store("aug", node, target, (node.value,), (node.value,))
        if isinstance(target, c.Name):
            self._store("fold", node, None, (node.value,), (), target.value,
                        _operator_text(node.operator))
            scope = self._binding_scope(target)
            if scope is not None:
                self.augmented.append((scope, target.value, node.value, self.scope))
        super()._v_aug_assign(node)

    def _v_try(self, node: Union[cst.Try, cst.TryStar]) -> None:
        if node.handlers:
            self.catchers.append((node, self.scope, tuple(self.path)))
        super()._v_try(node)

    def _v_with(self, node: cst.With) -> None:
        self.catchers.append((node, self.scope, tuple(self.path)))
        super()._v_with(node)

    def _v_comp(self, node: Any) -> None:
        c = _cst
        if self.comp_depth == 0 and not isinstance(node, c.GeneratorExp):
            path = tuple(self.path)
            parent = path[-2] if len(path) > 1 else None
            call = path[-3] if isinstance(parent, c.Arg) and isinstance(path[-3], c.Call) else None
            region = self.region
            self.collections.append(_Collection(
                node, self.scope, region, region.loops[0] if region.loops else None, path,
                call, isinstance(parent, c.Expr)))
        self.comp_depth += 1
        super()._v_comp(node)
        self.comp_depth -= 1

    def _v_call(self, node: cst.Call) -> None:
        c = _cst
        region = self.region
        for arg in node.args:
            if arg.star:
                continue
            value = arg.value
            self.arguments.append(_Argument(value, node, self.scope,
                                            region.loops[0] if region.loops else None,
                                            (*self.path, arg, value)))
            if isinstance(value, (c.List, c.Tuple, c.Set, c.Dict)):
                self.collections.append(_Collection(
                    value, self.scope, region, region.loops[0] if region.loops else None,
                    (*self.path, arg, value), node, False))
        super()._v_call(node)


def _runs_now(path: Sequence[cst.CSTNode], block: cst.CSTNode) -> bool:
    """Whether the node at the end of ``path`` runs while ``block`` (on the path) runs:
    no lambda or generator expression between them."""
    c = _cst
    below = False
    for node in path:
        if node is block:
            below = True
        elif below and isinstance(node, (c.Lambda, c.GeneratorExp)):
            return False
    return True


def _operator_text(operator: Any) -> str:
    """``"+="`` for an AddAssign, ``"+"`` for an Add."""
    return _cst.Module(body=()).code_for_node(operator).strip()


# ---------------------------------------------------------------------- the decisions


def _runtime_alias(module: cst.Module) -> Optional[str]:
    """The name an earlier rewrite imported the runtime as (the first such import)."""
    c = _cst
    for stmt in module.body:
        if not isinstance(stmt, c.SimpleStatementLine):
            continue
        for small in stmt.body:
            if (isinstance(small, c.ImportFrom) and small.module is not None and not small.relative
                    and _dotted(small.module) == _RUNTIME_MODULE
                    and not isinstance(small.names, c.ImportStar)):
                for alias in small.names:
                    if (isinstance(alias.name, c.Name) and alias.name.value == _RUNTIME_NAME
                            and alias.asname is not None):
                        local = alias.asname.name
                        if isinstance(local, c.Name) and local.value.startswith(_PREFIX):
                            return local.value
    return None


def _inside_itself(scope: Optional[Scope], bindings: list[Binding]) -> bool:
    """Whether ``scope`` lies in the body of a function the callee's bindings define."""
    bodies = {id(b.body_scope) for b in bindings if isinstance(b, Def) and b.body_scope}
    while scope is not None:
        if id(scope) in bodies:
            return True
        scope = scope.parent
    return False


class _Plan:
    """What to rewrite, decided from a finished walk (see the module docstring).

    ``rewrites``: id(call) -> the joiner that forks it, None for a value fork;
    ``recursive_calls``: ids of those calls made inside the function they call;
    ``unwraps``: ids of names to wrap in ``unwrap``; ``loop_joiners``: id(loop) ->
    joiner; ``rest_wraps``: id(suite) -> (first statement, joiner); ``dirty``: ids of
    every node on a path to a change (the rewriter rebuilds only those).  The loop rules
    (``_Flow``) add ``wraps``: id(expression) -> (joiner or None for the runtime, method,
    first argument or None), the expression becoming ``owner.method([first, ]expression)``;
    ``folds``: id(AugAssign or Assign) -> (joiner, operator, accumulator); ``thens``:
    id(call) -> joiner.  ``_Catchers`` adds ``settles``: id(try or with statement) -> the
    names to settle just before it.  ``_Rewinds`` adds ``binds``: id(Assign, AugAssign or
    AnnAssign) -> (joiner, the names it binds); ``rewinds``: joiner -> the names its
    ``finally`` rebinds after a failure; ``inner``: a loop's joiner -> the joiner of the
    rest of the body around it (``j1.inner(names)`` makes it).
    """

    def __init__(self, walk: _CallRecorder, runtime_alias: Optional[str]) -> None:
        self.walk = walk
        self.scopes = walk.scopes
        self.runtime_alias = runtime_alias
        self.rewrites: dict[int, Optional[str]] = {}
        self.recursive_calls: set[int] = set()  # rewritten calls of a function inside itself
        self.unwraps: set[int] = set()
        self.loop_joiners: dict[int, str] = {}
        self.rest_wraps: dict[int, tuple[int, str]] = {}
        self.dirty: set[int] = set()
        self.joiner_count = 0
        self.wraps: dict[int, tuple[Optional[str], str, Optional[cst.BaseExpression]]] = {}
        self.folds: dict[int, tuple[str, str, str]] = {}
        self.thens: dict[int, str] = {}
        self.settles: dict[int, tuple[str, ...]] = {}
        self.binds: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.rewinds: dict[str, list[str]] = {}
        self.inner: dict[str, str] = {}

    def decide(self, plain: Callable[[list[Binding]], bool] = lambda bindings: False) -> bool:
        """Choose the rewrites; True when there is anything to change.

        ``plain(bindings)`` True keeps a call of those bindings plain.
        """
        walk, scopes = self.walk, self.scopes
        for site in walk.calls:
            if site.context != "plain":
                self._decide_call(site, plain)
        for scope, name, call in walk.assigned:
            if id(call) in self.rewrites:  # a plain or a joined fork: a proxy either way
                scope.fork_names.add(name)
        self.unwrap_names()
        return bool(self.rewrites or self.unwraps or scopes.generator_defs)

    def unwrap_names(self) -> None:
        """Unwrap the fork names that meet ``is``, ``type()``, ``id()`` or ``match``."""
        scopes = self.scopes
        for use in self.walk.name_uses:
            if use.needs_builtin is not None and scopes.lookup(use.scope, use.needs_builtin)[0] is not None:
                continue
            scope, _ = scopes.lookup(use.scope, use.name.value)
            if scope is not None and use.name.value in scope.fork_names:
                self.unwraps.add(id(use.name))
                self.dirty.update(map(id, use.path))

    def _decide_call(self, site: _CallSite, plain: Callable[[list[Binding]], bool]) -> None:
        kind, bindings = self.scopes.callee(site.call.func, site.scope)
        if kind is None or plain(bindings):
            return
        if site.context in ("stmt", "comp"):
            if site.region.kind == "class":
                return    # a joiner name would become a class attribute
            if any(isinstance(b, Def) and b.node.asynchronous is not None for b in bindings):
                return    # sequentially it only creates a coroutine and drops it
            self.rewrites[id(site.call)] = self._joiner(site)
        else:
            region = site.region
            joined = ((region.kind in ("try", "with") and _JOIN_VALUE_FORKS)
                      or (site.loop is not None and region.kind != "class"))
            # A loop finishes every fork it started, value forks too (issue 9); a try or
            # with body finishes them before its handlers and context managers run.  Not
            # a call in a lambda or a generator expression: it runs later, if ever.
            inside = site.loop if site.loop is not None else region.suite
            if joined and _runs_now(site.path, inside):
                self.rewrites[id(site.call)] = self._joiner(site)
            else:
                self.rewrites[id(site.call)] = None
        if _inside_itself(site.scope, bindings):
            self.recursive_calls.add(id(site.call))
        self.dirty.update(map(id, site.path))

    def _joiner(self, site: _CallSite) -> str:
        if site.loop is not None:
            key = id(site.loop)
            if key not in self.loop_joiners:
                self.loop_joiners[key] = self.new_joiner()
                self.dirty.update(map(id, self.walk.loop_paths[key]))
            return self.loop_joiners[key]
        region = site.region
        if region.rest_joiner is None:
            region.rest_joiner = self.new_joiner()
            region.rest_start = site.top
            self.dirty.update(map(id, region.path))
        elif region.rest_start is not None:
            region.rest_start = min(region.rest_start, site.top)
        self.rest_wraps[id(region.suite)] = (region.rest_start if region.rest_start is not None
                                             else site.top, region.rest_joiner)
        return region.rest_joiner

    def new_joiner(self) -> str:
        self.joiner_count += 1
        return f"{_PREFIX}j{self.joiner_count}"


class _Flow:
    """The loop rules (issue 9), decided after the calls (``_Plan.decide``).

    * Fork names: a name bound to a fork's value, to arithmetic on one, or augmented by
      one (``acc += f(x)``) holds a proxy; *carriers* are names bound to anything that
      contains a fork's value (``pair = (x, f(x))``).
    * Reductions: in a loop with a joiner, ``acc op= v``, ``acc = acc op v`` and
      ``acc.update(v)``/``extend``/``add`` whose ``v`` is a fork's value, when the loop
      mentions ``acc`` nowhere else, become ``acc = j.fold(acc, "op=", v)`` and
      ``j.then(acc.update, v)``: applied in call order without waiting in the loop.
    * Fills: the container of ``c.append(v)``, ``c.insert(i, v)``, ``c[k] = v``,
      ``c += [v]``... in such a loop, when ``v`` carries a fork's value, is registered with
      the joiner (``j.into(c)``), which puts values in place of proxies at the loop's end.
    * Collections: a comprehension of forks is settled where it ends (``rt.settle``),
      or, inside a loop with a joiner, registered with it; a display (``[a, b]``) of fork
      values given to a call that is not a fork is settled there.
    * Arguments: a fork's value given to a call that is not itself a fork, a fill or a
      reduction step is unwrapped there (``json.dumps(rt.unwrap(x))``).
    """

    def __init__(self, plan: _Plan, walk: _FlowRecorder) -> None:
        self.plan = plan
        self.walk = walk
        self.scopes = plan.scopes
        self.carriers: set[tuple[int, str]] = set()
        self.fills: set[int] = set()       # ids of fill calls: their arguments stay proxies
        self.filled: dict[int, set[str]] = {}  # id(loop) -> the names of containers it fills
        self.kept: set[int] = set()        # ids of collections already registered
        self._counts: dict[int, dict[str, int]] = {}
        # Forks of a marked ``async def``: their proxies are awaited, never waited for.
        self.awaited = {id(site.call) for site in walk.calls if id(site.call) in plan.rewrites
                        and any(isinstance(b, Def) and b.node.asynchronous is not None
                                for b in self.scopes.callee(site.call.func, site.scope)[1])}

    def decide(self) -> bool:
        self._names()
        self._reductions()
        self._fills()
        self._collections()
        self._arguments()
        self.plan.unwrap_names()   # is/type/id of the fork names found here too
        plan = self.plan
        return bool(plan.wraps or plan.folds or plan.thens or plan.unwraps)

    # ---- what holds a fork's value

    def _defining(self, scope: Scope, name: str) -> Optional[Scope]:
        return self.scopes.lookup(scope, name)[0]

    def fork_valued(self, expression: cst.BaseExpression, scope: Scope) -> bool:
        """Whether ``expression``'s value may be a proxy."""
        c = _cst
        if isinstance(expression, c.Call):
            return id(expression) in self.plan.rewrites and id(expression) not in self.awaited
        if isinstance(expression, c.Name):
            found = self._defining(scope, expression.value)
            return found is not None and expression.value in found.fork_names
        if isinstance(expression, c.BinaryOperation):
            return self.fork_valued(expression.left, scope) or self.fork_valued(expression.right, scope)
        if isinstance(expression, c.UnaryOperation):
            return self.fork_valued(expression.expression, scope)
        if isinstance(expression, (c.IfExp, c.BooleanOperation, c.NamedExpr)):
            return any(self.fork_valued(e, scope) for e in _result_parts(expression))
        return False

    def carries(self, expression: cst.BaseExpression, scope: Scope) -> bool:
        """Whether a fork's value may be found in ``expression``'s value (at any depth)."""
        c = _cst
        rewrites = self.plan.rewrites
        for node in _subtree(expression, later=False):
            if isinstance(node, c.Call) and id(node) in rewrites and id(node) not in self.awaited:
                return True
            if isinstance(node, c.Name):
                found = self._defining(scope, node.value)
                if found is not None and (node.value in found.fork_names
                                          or (id(found), node.value) in self.carriers):
                    return True
        return False

    def _names(self) -> None:
        walk = self.walk
        changed = True
        while changed:   # a fixpoint: b = a * 2 may come before a = f(x) in the text
            changed = False
            for binding, name, value, scope in (*walk.bound, *walk.augmented):
                if name not in binding.fork_names and self.fork_valued(value, scope):
                    binding.fork_names.add(name)
                    changed = True
                key = (id(binding), name)
                if key not in self.carriers and self.carries(value, scope):
                    self.carriers.add(key)
                    changed = True

    # ---- loops

    def _joiner(self, store: Union[_Store, _Collection, _Argument]) -> Optional[str]:
        """The joiner of the loop around ``store``, if it has one and the store runs in it."""
        loop = store.loop
        if loop is None or not _runs_now(store.path, loop):
            return None
        return self.plan.loop_joiners.get(id(loop))

    def _mentions(self, loop: cst.CSTNode, name: str) -> int:
        counts = self._counts.get(id(loop))
        if counts is None:
            counts = self._counts[id(loop)] = _name_counts(loop)
        return counts.get(name, 0)

    def _reductions(self) -> None:
        groups: dict[tuple[int, str], list[_Store]] = {}
        for store in self.walk.stores:
            if store.kind in ("fold", "then") and self._joiner(store) is not None:
                groups.setdefault((id(store.loop), store.acc or ""), []).append(store)
        c = _cst
        for (_, acc), stores in groups.items():
            mentions = 0
            for store in stores:
                value = store.values[0]
                if any(isinstance(n, c.Name) and n.value == acc for n in _subtree(value)):
                    break   # the step reads the accumulator itself
                if store.kind == "fold" and not (store.op in _IN_PLACE_OPS or store.op in _BINARY_OPS):
                    break
                mentions += 2 if isinstance(store.node, c.Assign) else 1
            else:
                loop = stores[0].loop
                if (any(self.fork_valued(s.values[0], s.scope) for s in stores)
                        and loop is not None and self._mentions(loop, acc) == mentions):
                    for store in stores:
                        self._reduce(store)

    def _reduce(self, store: _Store) -> None:
        plan = self.plan
        joiner = self._joiner(store)
        assert joiner is not None and store.acc is not None
        if store.kind == "then":
            plan.thens[id(store.node)] = joiner
            self.fills.add(id(store.node))
        else:
            plan.folds[id(store.node)] = (joiner, store.op, store.acc)
        plan.dirty.update(map(id, store.path))

    def _fills(self) -> None:
        c = _cst
        plan = self.plan
        for store in self.walk.stores:
            if store.kind not in ("call", "subscript", "aug") or id(store.node) in plan.folds:
                continue
            joiner = self._joiner(store)
            if joiner is None or store.receiver is None or id(store.node) in plan.thens:
                continue
            values = store.values
            if not any(self.carries(v, store.scope) for v in values):
                continue
            if isinstance(store.receiver, c.Name) and store.loop is not None:
                self.filled.setdefault(id(store.loop), set()).add(store.receiver.value)
            if store.kind == "call":
                method = store.node.func.attr.value  # type: ignore[attr-defined]
                if method in _THEN_METHODS and len(values) == 1 and self.fork_valued(values[0], store.scope):
                    continue   # extend(f(x)) reads its argument at once: the plain rule
                plan.wraps[id(store.receiver)] = (joiner, "into", None)
                self.fills.add(id(store.node))
            elif store.kind == "subscript":
                plan.wraps[id(store.receiver)] = (joiner, "into", None)
            else:
                value = values[0]
                if not isinstance(value, (c.List, c.Tuple, c.ListComp, c.Dict, c.DictComp,
                                          c.Set, c.SetComp)):
                    continue   # acc += f(x) that is no reduction: iadd reads it, plain rule
                plan.wraps[id(value)] = (joiner, "into", store.receiver)
                self.kept.add(id(value))
            plan.dirty.update(map(id, store.path))

    def _collections(self) -> None:
        plan = self.plan
        for item in self.walk.collections:
            node = item.node
            if item.statement or id(node) in self.kept or not self.carries(node, item.scope):
                continue
            call = item.call
            if call is not None and (id(call) in plan.rewrites or id(call) in self.fills):
                continue   # dataflow into a fork; or kept by a fill
            joiner = self._joiner(item) if call is None else None
            display = isinstance(node, (_cst.List, _cst.Tuple, _cst.Set, _cst.Dict))
            if joiner is not None and not isinstance(node, _cst.Tuple):
                plan.wraps[id(node)] = (joiner, "into", None)
            elif joiner is None and (call is not None or not display or item.assigned):
                # pair = (x, f(x)) outside a loop: values now (all its forks started).
                plan.wraps[id(node)] = (None, "settle", None)
            else:
                continue   # a tuple in a loop, kept as it is: waiting would serialize it
            plan.dirty.update(map(id, item.path))

    def _arguments(self) -> None:
        c = _cst
        plan = self.plan
        for argument in self.walk.arguments:
            call, value = argument.call, argument.value
            if id(call) in plan.rewrites or id(call) in self.fills or id(value) in plan.wraps:
                continue
            if self.fork_valued(value, argument.scope):
                if isinstance(value, c.Name):
                    plan.unwraps.add(id(value))
                else:
                    plan.wraps[id(value)] = (None, "unwrap", None)
            elif (isinstance(value, c.Name) and argument.loop is not None
                  and self._joiner(argument) is not None
                  and (self._carrier(value, argument.scope)
                       or value.value in self.filled.get(id(argument.loop), ()))):
                # rows = [f(x) for x in batch]; use(rows) in the same loop, or a list the
                # loop fills read by a call in it: values now.
                plan.wraps[id(value)] = (None, "settle", None)
            else:
                continue
            plan.dirty.update(map(id, argument.path))

    def _carrier(self, name: cst.Name, scope: Scope) -> bool:
        found = self._defining(scope, name.value)
        return found is not None and (id(found), name.value) in self.carriers


class _Catchers:
    """Fork results settled before the blocks that could catch their failure (SPEC 4b).

    Sequentially a failing call raises where it is made.  Its fork raises where its value
    is first used, so a ``try`` (with ``except`` clauses) or a ``with`` (whose context
    manager may see or suppress the exception) that reads the result in its body would
    catch a failure that, sequentially, escaped long before.  So, just before such a
    statement, the names its body reads that may hold a fork still unsettled there are
    settled (``rt.settle_names("r", "s")``: waited for, a failure raised there, outside
    the block).  A name may hold one when a binding of it (in the scope it resolves to)
    is a fork not joined by a ``Joiner``, arithmetic on fork names, or a fork joined by a
    loop or body that is still running at the statement.  A fork joined by a block that
    has ended is settled already (and its failure raised there), and so is one bound in
    the statement's own body (its joiner raises it inside, as sequentially).  A fork of a
    marked ``async def`` raises when awaited, as sequentially: never settled here.

    Not covered: a proxy held elsewhere than in a name (an attribute, a container the
    rewriter does not settle) or passed to a function whose own ``try`` reads it, or
    returned by an unmarked function.
    """

    def __init__(self, plan: _Plan, walk: _FlowRecorder, flow: _Flow) -> None:
        self.plan = plan
        self.walk = walk
        self.scopes = plan.scopes
        self.awaited = flow.awaited
        self.sites = {id(site.call): site for site in walk.calls}
        # (id(scope), name) -> (value, the scope it is computed in) of each binding
        self.bindings: dict[tuple[int, str], list[tuple[cst.BaseExpression, Scope]]] = {}
        self.order: dict[tuple[int, str], int] = {}
        for index, (scope, name, value, where) in enumerate((*walk.bound, *walk.augmented)):
            key = (id(scope), name)
            self.bindings.setdefault(key, []).append((value, where))
            self.order.setdefault(key, index)

    def decide(self) -> bool:
        plan = self.plan
        for node, scope, path in self.walk.catchers:
            names = self._names(node, scope, {id(n) for n in path})
            if names:
                plan.settles[id(node)] = names
                plan.dirty.update(map(id, path))
        return bool(plan.settles)

    def _names(self, node: Union[cst.Try, cst.TryStar, cst.With], scope: Scope,
               around: set[int]) -> tuple[str, ...]:
        """The names ``node``'s body reads that may hold an unsettled fork there, in the
        order of their first binding; ``around``: ids of the nodes that contain it."""
        c = _cst
        found: dict[str, int] = {}
        inside: Optional[set[int]] = None
        for below in _subtree(node.body):
            if not isinstance(below, c.Name) or below.value in found:
                continue
            name = below.value
            defining = self.scopes.lookup(scope, name)[0]
            if defining is None or name not in defining.fork_names:
                continue
            if inside is None:
                inside = {id(n) for n in _subtree(node.body)}
            if self._unsettled(defining, name, around, inside, set()):
                found[name] = self.order.get((id(defining), name), -1)
        return tuple(sorted(found, key=found.__getitem__))

    def _unsettled(self, scope: Scope, name: str, around: set[int], inside: set[int],
                   seen: set[tuple[int, str]]) -> bool:
        key = (id(scope), name)
        if key in seen:
            return False
        seen.add(key)
        values = self.bindings.get(key)
        if not values:
            return True   # a proxy the namespace held before the source ran (IPython)
        c = _cst
        rewrites = self.plan.rewrites
        for value, where in values:
            if id(value) in inside:
                continue   # joined by the statement's own body
            for below in _subtree(value, later=False):
                if isinstance(below, c.Call) and id(below) in rewrites:
                    if id(below) in self.awaited:
                        continue
                    site = self.sites[id(below)]
                    block = site.loop if site.loop is not None else site.region.suite
                    if rewrites[id(below)] is None or id(block) in around:
                        return True
                elif isinstance(below, c.Name):
                    defining = self.scopes.lookup(where, below.value)[0]
                    if (defining is not None and below.value in defining.fork_names
                            and self._unsettled(defining, below.value, around, inside, seen)):
                        return True
        return False


class _Rewinds:
    """Names bound from forks in a ``try`` or ``with`` body, as the sequential program left
    them when a call failed (SPEC 4b).

    Sequentially a failing call raises before its value is bound, and nothing after it
    runs.  Its fork fails later, at the end of the body's (or its loop's) ``Joiner``,
    when ``r = f(3)`` has long bound ``r`` to the failed proxy and later calls have
    bound their names too; the ``except`` clauses, the ``finally`` and the code after a
    context manager that suppressed it would see those names.  So in such a block each
    ``name = value`` whose value may carry a fork becomes ``name = j.bind("name",
    value)`` (the Joiner keeps what the name held), and the joiner's ``with`` is wrapped
    in a ``try`` whose ``finally`` gives each name back the value it held before the
    first binding made after the failing call (or unbinds it): before any clause or
    manager sees the exception, also one further out in the same function.

    Only in try and with bodies, and at the top level of an IPython cell (``cell``):
    elsewhere the exception leaves the function or the program.  A cell's names outlive
    its exception: the next cell sees them as the sequential cell left them.
    """

    def __init__(self, plan: _Plan, walk: _FlowRecorder, flow: _Flow, cell: bool = False) -> None:
        self.plan = plan
        self.walk = walk
        self.flow = flow
        self.cell = cell

    def decide(self) -> bool:
        plan = self.plan
        for named in self.walk.named:
            if id(named.node) in plan.folds:
                continue   # a reduction keeps its own value (Folds)
            joiner = self._joiner(named)
            if joiner is None or not self.flow.carries(named.value, named.scope):
                continue
            plan.binds[id(named.node)] = (joiner, named.names)
            names = plan.rewinds.setdefault(joiner, [])
            names.extend(name for name in named.names if name not in names)
            outer = self._around(named, joiner)
            if outer is not None:   # a failure of a call before the loop undoes it all
                plan.inner[joiner] = outer
                names = plan.rewinds.setdefault(outer, [])
                names.extend(name for name in named.names if name not in names)
            plan.dirty.update(map(id, named.path))
        return bool(plan.binds)

    def _around(self, named: _Named, joiner: str) -> Optional[str]:
        """The joiner of the rest of the body around the loop whose joiner is ``joiner``."""
        region = named.region
        start = region.rest_start
        if (joiner == region.rest_joiner or region.rest_joiner is None or start is None
                or named.top < start):
            return None
        return region.rest_joiner

    def _joiner(self, named: _Named) -> Optional[str]:
        """The joiner whose block holds ``named``, if it is a try or with body's."""
        region, loop, plan = named.region, named.loop, self.plan
        if region.kind not in ("try", "with") and not (self.cell and region.kind == "module"):
            return None
        if loop is not None and id(loop) in plan.loop_joiners:
            return plan.loop_joiners[id(loop)]
        start = region.rest_start
        if region.rest_joiner is not None and start is not None and named.top >= start:
            return region.rest_joiner
        return None


def _result_parts(expression: cst.BaseExpression) -> list[cst.BaseExpression]:
    c = _cst
    if isinstance(expression, c.IfExp):
        return [expression.body, expression.orelse]
    if isinstance(expression, c.BooleanOperation):
        return [expression.left, expression.right]
    if isinstance(expression, c.NamedExpr):
        return [expression.value]
    return []


def _subtree(node: cst.CSTNode, later: bool = True) -> Iterable[cst.CSTNode]:
    """``node`` and every node below it, except attribute and keyword names (and, unless
    ``later``, what lambdas and generator expressions below it compute later)."""
    c = _cst
    base = c.CSTNode
    stack = [node]
    while stack:
        node = stack.pop()
        yield node
        if not later and isinstance(node, (c.Lambda, c.GeneratorExp)):
            continue
        if isinstance(node, c.Attribute):
            stack.append(node.value)
            continue
        for name in _child_fields(type(node)):
            if name == "keyword" and isinstance(node, c.Arg):
                continue
            value = getattr(node, name)
            if isinstance(value, (tuple, list)):
                stack.extend(v for v in value if isinstance(v, base))
            elif isinstance(value, base):
                stack.append(value)


def _name_counts(node: cst.CSTNode) -> dict[str, int]:
    """How many times each name is mentioned below ``node`` (loads and stores alike)."""
    counts: dict[str, int] = {}
    c = _cst
    for below in _subtree(node):
        if isinstance(below, c.Name):
            counts[below.value] = counts.get(below.value, 0) + 1
    return counts


_IN_PLACE_OPS = frozenset({"+=", "-=", "*=", "/=", "//=", "%=", "**=", "@=", "<<=", ">>=",
                           "&=", "|=", "^="})
_BINARY_OPS = frozenset({"+", "-", "*", "/", "//", "%", "**", "@", "<<", ">>", "&", "|", "^"})


class _Rewriter:
    """Rebuilds the nodes on the paths to a change; everything else is kept as parsed."""

    def __init__(self, plan: _Plan, names: _Names, warnings: list[tuple[str, int, str]],
                 module_name: str, notices: Sequence[tuple[str, int, str]] = ()) -> None:
        c = _cst
        self.a = plan
        self.names = names
        self.warnings = warnings
        self.notices = notices
        self.module_name = module_name
        self.after: dict[type, Callable[[Any, Any], Any]] = {
            c.Call: self._call, c.Name: self._name, c.IndentedBlock: self._block,
            c.Module: self._module, c.SimpleStatementSuite: self._suite,
            c.AugAssign: self._aug_assign, c.Assign: self._assign,
            c.AnnAssign: self._ann_assign,
        }
        # The scopes being rebuilt, innermost last: True for a class body.
        self._scopes: list[bool] = []
        self._scoping = {c.ClassDef: True, c.FunctionDef: False, c.Lambda: False}

    def rebuild(self, node: Any) -> Any:
        if id(node) not in self.a.dirty:
            return node
        scope = self._scoping.get(type(node))
        if scope is None:
            return self._rebuild(node)
        self._scopes.append(scope)
        try:
            return self._rebuild(node)
        finally:
            self._scopes.pop()

    def _rebuild(self, node: Any) -> Any:
        base = _cst.CSTNode
        changes: dict[str, Any] = {}
        kind: type = type(node)
        for name in _child_fields(kind):
            value = getattr(node, name)
            if isinstance(value, base):
                new = self.rebuild(value)
                if new is not value:
                    changes[name] = new
            elif isinstance(value, (tuple, list)):
                items = [self.rebuild(v) if isinstance(v, base) else v for v in value]
                if any(a is not b for a, b in zip(items, value)):
                    changes[name] = items
        new_node = node.with_changes(**changes) if changes else node
        after = self.after.get(type(node))
        if after is not None:
            new_node = after(node, new_node)
        wrap = self.a.wraps.get(id(node))
        return new_node if wrap is None else self._wrap(new_node, *wrap)

    def _owner(self, joiner: Optional[str]) -> str:
        return self.names.runtime if joiner is None else self.names.rename(joiner)

    def _invoke(self, owner: Optional[str], method: str, *args: Any) -> cst.Call:
        """``owner.method(*args)``: a joiner's method, or the runtime's (owner None)."""
        c = _cst
        comma = c.Comma(whitespace_after=c.SimpleWhitespace(" "))
        arguments = [c.Arg(value=a, comma=comma) for a in args[:-1]]
        arguments.append(c.Arg(value=args[-1]))
        return c.Call(func=self._attr(self._owner(owner), method), args=arguments)

    def _wrap(self, node: Any, owner: Optional[str], method: str,
              first: Optional[cst.BaseExpression]) -> cst.Call:
        c = _cst
        if isinstance(node, c.Tuple) and not node.lpar:   # a, b -> settle((a, b))
            node = node.with_changes(lpar=(c.LeftParen(),), rpar=(c.RightParen(),))
        if first is None:
            return self._invoke(owner, method, node)
        return self._invoke(owner, method, first.deep_clone(), node)

    def _aug_assign(self, original: cst.AugAssign, new: cst.AugAssign) -> Any:
        """``acc op= v`` -> ``acc = j.fold(acc, "op=", v)`` (a reduction step)."""
        fold = self.a.folds.get(id(original))
        if fold is None:
            return self._bind(original, new)
        c = _cst
        joiner, op, acc = fold
        value = self._invoke(joiner, "fold", c.Name(acc), c.SimpleString(repr(op)), new.value)
        return c.Assign(targets=(c.AssignTarget(target=new.target),), value=value,
                        semicolon=new.semicolon)

    def _assign(self, original: cst.Assign, new: cst.Assign) -> cst.Assign:
        """``acc = acc op v`` -> ``acc = j.fold(acc, "op", v)`` (a reduction step)."""
        fold = self.a.folds.get(id(original))
        if fold is None:
            return self._bind(original, new)
        joiner, op, acc = fold
        return new.with_changes(value=self._invoke(joiner, "fold", _cst.Name(acc),
                                                   _cst.SimpleString(repr(op)),
                                                   cast("cst.BinaryOperation", new.value).right))

    def _ann_assign(self, original: cst.AnnAssign, new: cst.AnnAssign) -> cst.AnnAssign:
        return self._bind(original, new)

    def _bind(self, original: Any, new: Any) -> Any:
        """``r = v`` -> ``r = j.bind('r', v)`` (``_Rewinds``); ``a = b = v`` binds both."""
        bind = self.a.binds.get(id(original))
        if bind is None:
            return new
        joiner, names = bind
        value = new.value
        for name in reversed(names):
            value = self._invoke(joiner, "bind", _cst.SimpleString(repr(name)), value)
        return new.with_changes(value=value)

    def _attr(self, owner: str, attr: str) -> cst.Attribute:
        c = _cst
        return c.Attribute(value=c.Name(owner), attr=c.Name(attr))

    def _call(self, original: cst.Call, new: cst.Call) -> cst.Call:
        c = _cst
        key = id(original)
        then = self.a.thens.get(key)
        if then is not None:   # acc.update(v) -> j.then(acc.update, v): a reduction step
            return self._invoke(then, "then", new.func, new.args[0].value)
        if key not in self.a.rewrites:
            return new
        owner = self.a.rewrites[key]
        owner = self.names.rename(owner) if owner is not None else self.names.runtime
        comma: Any = c.Comma(whitespace_after=c.SimpleWhitespace(" ")) if new.args else c.MaybeSentinel.DEFAULT
        first = c.Arg(value=new.func, comma=comma)
        args = list(new.args)
        if len(args) == 1 and isinstance(args[0].value, c.GeneratorExp) and not args[0].value.lpar:
            # f(x for x in y): the generator borrowed the call's parentheses; it needs its own now.
            genexp = args[0].value.with_changes(lpar=(c.LeftParen(),), rpar=(c.RightParen(),))
            args[0] = args[0].with_changes(value=genexp)
        # A call inside the function it calls is the runtime's sign of a recursion.
        attr = "fork_recursive" if key in self.a.recursive_calls else "fork"
        return new.with_changes(func=self._attr(owner, attr), args=(first, *args))

    def _name(self, original: cst.Name, new: cst.Name) -> cst.BaseExpression:
        if id(original) not in self.a.unwraps:
            return new
        return _cst.Call(func=self._attr(self.names.runtime, "unwrap"), args=(_cst.Arg(value=new),))

    def _with(self, joiner: str, stmts: list[Any]) -> cst.With:
        c = _cst
        leading = stmts[0].leading_lines
        stmts = [stmts[0].with_changes(leading_lines=()), *stmts[1:]]
        names = self.a.rewinds.get(joiner)
        outer = self.a.inner.get(joiner)
        if outer is not None and names:   # j1.inner('r'): r kept as it is before the loop
            make = self._invoke(outer, "inner", *(c.SimpleString(repr(n)) for n in names))
        else:
            make = c.Call(func=self._attr(self.names.runtime, "Joiner"))
        item = c.WithItem(item=make, asname=c.AsName(name=c.Name(self.names.rename(joiner))))
        if names:
            return self._rewinding(joiner, names, c.With(items=(item,), body=c.IndentedBlock(body=stmts)),
                                   leading)
        return c.With(items=(item,), body=c.IndentedBlock(body=stmts), leading_lines=leading)

    def _rewinding(self, joiner: str, names: list[str], with_: cst.With, leading: Any) -> cst.Try:
        """``try: <with_> finally: <each name as before a failed call>`` (``_Rewinds``)."""
        c = _cst
        j = self.names.rename(joiner)
        lines = []
        for name in names:
            lines.append(c.parse_statement(f"if {j}.rebinds({name!r}): {name} = {j}.was({name!r})\n"))
            lines.append(c.parse_statement(f"if {j}.unbinds({name!r}): del {name}\n"))
        header = c.TrailingWhitespace(whitespace=c.SimpleWhitespace("  "), comment=c.Comment(_REWIND_NOTE))
        return c.Try(body=c.IndentedBlock(body=(with_,), header=header), handlers=(),
                     finalbody=c.Finally(body=c.IndentedBlock(body=lines, header=header)),
                     leading_lines=leading)

    def _wrap_body(self, original: Any, body: list[Any]) -> list[Any]:
        groups: list[list[Any]] = []   # what each statement of ``original`` became
        for index, stmt in enumerate(original.body):
            new = body[index]
            joiner = self.a.loop_joiners.get(id(stmt))
            if joiner is not None:
                new = self._with(joiner, [new])
            names = self.a.settles.get(id(stmt))
            groups.append([new] if names is None else self._settle(names, new))
            if joiner is not None:
                groups[-1].extend(self._forget(joiner))
        rest = self.a.rest_wraps.get(id(original))
        start = len(groups) if rest is None else rest[0]
        out = [stmt for group in groups[:start] for stmt in group]
        if rest is not None:
            out.append(self._with(rest[1], [stmt for group in groups[start:] for stmt in group]))
            out.extend(self._forget(rest[1]))
        return out

    def _forget(self, joiner: str) -> list[Any]:
        """In a class body: ``del`` the joiner after its block, so that it does not become
        a class attribute (``vars(C)`` as sequentially)."""
        if not self._scopes or not self._scopes[-1]:
            return []
        return [_cst.parse_statement(f"del {self.names.rename(joiner)}\n")]

    def _settle(self, names: tuple[str, ...], stmt: Any) -> list[Any]:
        """``rt.settle_names("r", ...)`` on a line of its own, then ``stmt`` (a try or with)."""
        c = _cst
        line = c.SimpleStatementLine(
            body=(c.Expr(self._invoke(None, "settle_names", *map(c.SimpleString, map(repr, names)))),),
            leading_lines=stmt.leading_lines)
        return [line, stmt.with_changes(leading_lines=())]

    def _block(self, original: cst.IndentedBlock, new: cst.IndentedBlock) -> cst.IndentedBlock:
        return new.with_changes(body=self._wrap_body(original, list(new.body)))

    def _suite(self, original: cst.SimpleStatementSuite, new: Any) -> Any:
        rest = self.a.rest_wraps.get(id(original))
        if rest is None:
            return new
        c = _cst
        line = c.SimpleStatementLine(body=new.body)
        return c.IndentedBlock(header=new.trailing_whitespace,
                               body=(self._with(rest[1], [line]), *self._forget(rest[1])))

    def _module(self, original: cst.Module, new: cst.Module) -> cst.Module:
        body = self._wrap_body(original, list(new.body))
        return new.with_changes(body=self._insert_prelude(body))

    def _prelude(self) -> list[Any]:
        c = _cst
        names = self.names
        out: list[Any] = []
        if (self.a.rewrites or self.a.unwraps or self.a.wraps or self.a.settles) and self.a.runtime_alias is None:
            out.append(c.parse_statement(
                f"from {_RUNTIME_MODULE} import {_RUNTIME_NAME} as {names.runtime}\n").body[0])
        if self.warnings:
            w, category = names.fresh("_autofork_warnings"), names.fresh("_autofork_Warning")
            out.append(c.parse_statement(f"import warnings as {w}\n").body[0])
            out.append(c.parse_statement(
                f"from autofork.runtime.errors import AutoforkWarning as {category}\n").body[0])
            for function, line, mark in self.warnings:
                message = (f"{function}() at line {line} of {self.module_name} is a generator "
                           f"function marked @{mark}: a generator cannot be forked, "
                           f"so its calls run plainly")
                if mark in _LABELS:
                    message = (f"{function}() at line {line} of {self.module_name} is marked "
                               f"only @{mark}, a label for explicit fork(): under the import "
                               f"hook its calls run plainly, one after another. Mark it "
                               f"@{'io_bound_fork' if mark == 'io_bound' else 'implicit_fork'} "
                               f"to have its calls forked")
                code = (f"{w}.warn_explicit({message!r}, {category}, "
                        f"globals().get('__file__') or {self.module_name!r}, {line}, __name__)\n")
                out.append(c.parse_statement(code).body[0])
        if self.notices:
            notices = names.fresh(f"{_PREFIX}notices")
            out.append(c.parse_statement(
                f"from {_RUNTIME_MODULE} import notices as {notices}\n").body[0])
            for function, line, message in self.notices:
                code = (f"{notices}.kept_plain({function!r}, {message!r}, "
                        f"globals().get('__file__') or {self.module_name!r}, {line}, __name__)\n")
                out.append(c.parse_statement(code).body[0])
        return out

    def _insert_prelude(self, body: list[Any]) -> list[Any]:
        c = _cst
        prelude = self._prelude()
        if not prelude:
            return body
        index = 0
        if body and _is_docstring(body[0]):
            index = 1
        while index < len(body) and _is_future_import(body[index]):
            index += 1
        if index > 0 and isinstance(body[index - 1], c.SimpleStatementLine):
            line = body[index - 1]
            body[index - 1] = line.with_changes(body=(*line.body, *prelude))
        elif index < len(body) and isinstance(body[index], c.SimpleStatementLine):
            line = body[index]
            body[index] = line.with_changes(body=(*prelude, *line.body))
        else:
            leading = body[index].leading_lines if index < len(body) else ()
            if index < len(body):
                body[index] = body[index].with_changes(leading_lines=())
            body.insert(index, c.SimpleStatementLine(body=prelude, leading_lines=leading))
        return body


def _is_docstring(stmt: Any) -> bool:
    c = _cst
    return (isinstance(stmt, c.SimpleStatementLine) and isinstance(stmt.body[0], c.Expr)
            and isinstance(stmt.body[0].value, (c.SimpleString, c.ConcatenatedString)))


def _is_future_import(stmt: Any) -> bool:
    c = _cst
    return (isinstance(stmt, c.SimpleStatementLine) and len(stmt.body) > 0
            and all(isinstance(s, c.ImportFrom) and s.module is not None and not s.relative
                    and _dotted(s.module) == "__future__" for s in stmt.body))


class _Names:
    """Inserted names: ``_autofork_*``, never one the module already uses for something else."""

    def __init__(self, source: str, runtime_alias: Optional[str]) -> None:
        self.used = set(_USED_NAME.findall(source))
        self.renames: dict[str, str] = {}
        self.runtime = runtime_alias or self.fresh(f"{_PREFIX}rt")

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name

    def rename(self, joiner: str) -> str:
        if joiner not in self.renames:
            self.renames[joiner] = self.fresh(joiner)
        return self.renames[joiner]


def _label_defs(scopes: Scopes, walk: _CallRecorder) -> list[tuple[Def, str]]:
    """(def, label) of each function marked only ``@io_bound``/``@cpu_bound`` that the
    module calls: such a mark labels it for ``fork``; the hook leaves its calls plain."""
    found: dict[int, tuple[Def, str]] = {}
    for site in walk.calls:
        kind, bindings = scopes.callee(site.call.func, site.scope)
        if kind is not None or not bindings:
            continue
        labels = [_labels_of(scopes, b) for b in bindings]
        if all(labels):
            for binding, label in zip(bindings, labels):
                found.setdefault(id(binding), (binding, label))  # type: ignore[arg-type]
    return list(found.values())


def _labels_of(scopes: Scopes, binding: Binding) -> str:
    """The label of a def marked with labels only ("" for anything else)."""
    if not isinstance(binding, Def):
        return ""
    words = {word for d in binding.node.decorators
             if (word := scopes.mark_of(d.decorator, binding.scope)) is not None}
    return min(words) if words and words <= _LABELS else ""


def _generator_warnings(scopes: Scopes, source: str,
                        labelled: Sequence[tuple[Def, str]] = ()) -> list[tuple[str, int, str]]:
    """(function, line, mark) of each marked generator and each labelled def, the line
    taken from an ast walk."""
    if not (scopes.generator_defs or labelled):
        return []
    found = [(d.name, d.lineno) for d in ast_defs(ast.parse(source).body)]
    positions = {id(d): i for i, d in enumerate(scopes.defs)}
    same_order = len(found) == len(scopes.defs) and all(
        a[0] == d.node.name.value for a, d in zip(found, scopes.defs))
    out = []
    marked = [(d, d.generator_mark or "implicit_fork") for d in scopes.generator_defs]
    for definition, mark in (*marked, *labelled):
        name = definition.node.name.value
        if same_order:
            line = found[positions[id(definition)]][1]
        else:
            line = next((ln for n, ln in found if n == name), 0)
        out.append((name, line, mark))
    return out


def rewrite(source: str, module_name: str, resolver: Resolver, package: Optional[str] = None,
            *, filename: Optional[str] = None, namespace: Optional[Mapping[str, str]] = None) -> str:
    """The rewritten source of a module: its calls of marked functions made forks.

    ``source`` itself (the same ``str`` object) when ``needs_rewrite`` is False or when
    nothing resolves to a marked function.  ``package`` resolves relative imports (the
    module's ``__package__``; by default the parent of ``module_name``).  A syntax error
    raises the ``SyntaxError`` that ``compile(source, filename, "exec")`` raises.
    Idempotent: rewriting rewritten code changes nothing.

    ``namespace`` describes what the module's namespace already holds before ``source``
    runs (an IPython cell runs in the namespace that earlier cells filled): ``"cpu"`` or
    ``"io"`` for a marked function of that kind, ``"module:pkg.mod"`` for a module (its
    marks are asked of the resolver), ``"mark:implicit_fork"`` (or another mark's name)
    for one of autofork's marks, ``"proxy"`` for a fork's result (``is``, ``type()`` and
    ``id()`` unwrap it).  A name the source binds at module level is resolved from the
    source alone, as in a module.
    """
    filename = filename or f"<{module_name}>"
    resolve = _MemoResolver(resolver)
    outer = _outer_bindings(namespace)
    if not (outer or _contains_mark(source) and _MARK_USE.search(source)):
        # Only an import can bring a marked function in: the ast test saves the libcst
        # parse of most such modules.  (With marks, the libcst pass decides alone.)
        if "import" not in source:
            return source
        tree = cast(ast.Module, compile(source, filename, "exec", ast.PyCF_ONLY_AST,
                                        dont_inherit=True))
        if not (_needs_rewrite_tree(tree, False, module_name, resolve, package)
                or _contains_label(source) and _ast_calls_label_only(tree)):
            return source
    c = _libcst()
    try:
        module = c.parse_module(source)
    except c.ParserSyntaxError:
        compile(source, filename, "exec", dont_inherit=True)  # raises Python's own SyntaxError
        raise
    scopes = Scopes(_package_of(module_name, package), resolve, outer)
    scopes.module.fork_names.update(n for n, what in (namespace or {}).items() if what == "proxy")
    walk = _FlowRecorder(scopes)
    walk.visit(module)
    scopes.finish()
    effects = _effects(module, scopes, source)
    plan = _Plan(walk, _runtime_alias(module))
    labelled = _label_defs(scopes, walk)
    decided = plan.decide(plain=lambda bindings: any(id(b) in effects for b in bindings))
    flow = _Flow(plan, walk)
    decided = flow.decide() or decided
    decided = _Catchers(plan, walk, flow).decide() or decided
    decided = _Rewinds(plan, walk, flow, cell=namespace is not None).decide() or decided
    if not decided and not effects and not labelled:
        return source
    warnings = _generator_warnings(scopes, source, labelled)
    if warnings and _has_import(module, "warnings"):
        warnings = []
    notices = [(e.function, e.line, e.message()) for e in effects.values()]
    if notices and _has_import(module, f"{_RUNTIME_MODULE}.notices"):
        notices = []
    if not (plan.rewrites or plan.unwraps or plan.wraps or plan.settles or warnings or notices):
        return source
    plan.dirty.add(id(module))
    names = _Names(source, plan.runtime_alias)
    code = _Rewriter(plan, names, warnings, module_name, notices).rebuild(module).code
    if (plan.rewrites or plan.wraps) and plan.runtime_alias is None and IN_PLACE_NAME not in source:
        code = _declare_in_place(code, source, filename, names.runtime, cell=bool(outer))
    return source if code == source else code


def _declare_in_place(code: str, source: str, filename: str, runtime: str, cell: bool) -> str:
    """``code`` with the globals changed in place while forks run (``in_place_globals``)
    named in ``__autofork_in_place__``, on the line of the runtime's import (the lines stay
    the source's): those that the module's functions read, or all of them in a ``cell``
    (functions of earlier cells may read them); cells add to what earlier cells named."""
    lines = code.splitlines()
    first = next((number for number, line in enumerate(lines, 1) if f"{runtime}." in line), 0)
    if not first:
        return code
    tree = cast(ast.Module, compile(source, filename, "exec", ast.PyCF_ONLY_AST, dont_inherit=True))
    if not cell and not _may_change_in_place(tree, source):
        return code  # the usual module: no walk of its whole tree (a third of a rewrite)
    in_place = in_place_globals(tree, first, cell)
    if not cell:
        read = _read_in_functions(tree)
        in_place = [name for name in in_place if name in read]
    if not in_place:
        return code
    imported = f"from {_RUNTIME_MODULE} import {_RUNTIME_NAME} as {runtime}"
    declared = (f"{imported}; {IN_PLACE_NAME} = globals().get({IN_PLACE_NAME!r}, frozenset())"
                f" | frozenset({in_place!r})")
    return code.replace(imported, declared, 1)


def _effects(module: Any, scopes: Scopes, source: str) -> dict[int, Any]:
    """id(Def) -> its first effect, for the marked defs whose calls must stay plain."""
    if not any(d.kind is not None for d in scopes.defs):
        return {}
    from autofork import effects

    return effects.find_effects(module, scopes, source)


def _has_import(module: Any, dotted: str) -> bool:
    """Whether an earlier rewrite's prelude already imports ``dotted`` (idempotence)."""
    c = _cst
    for stmt in module.body[:3]:
        if isinstance(stmt, c.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, c.Import):
                    aliases = small.names
                    name = _dotted(aliases[0].name) if len(aliases) == 1 else None
                elif isinstance(small, c.ImportFrom) and small.module is not None and not isinstance(
                        small.names, c.ImportStar) and len(small.names) == 1:
                    aliases = small.names
                    name = f"{_dotted(small.module)}.{_dotted(aliases[0].name)}"
                else:
                    continue
                asname = aliases[0].asname
                if (name == dotted and asname is not None and isinstance(asname.name, c.Name)
                        and asname.name.value.startswith(_PREFIX)):
                    return True
    return False


# ------------------------------------------------------------------------ line numbers


def _indent_bytes(line: str) -> int:
    stripped = line.lstrip(" \t\f")
    return len(line) - len(stripped)


def _resync(old: Sequence[str], new: Sequence[str], i: int, j: int,
            limit: int = 64) -> Optional[tuple[int, int]]:
    """The nearest (di, dj) where the two line lists agree again after a difference."""
    n, m = len(old), len(new)
    for distance in range(1, limit):
        for di in range(distance + 1):
            a, b = i + di, j + distance - di
            if a >= n or b >= m or old[a] != new[b]:
                continue
            # A short line ("", ")", "else:") agrees by chance too often to count alone.
            if len(old[a]) > 3 or (a + 1 == n and b + 1 == m) or (
                    a + 1 < n and b + 1 < m and old[a + 1] == new[b + 1]):
                return di, distance - di
    return None


def _align(old: Sequence[str], new: Sequence[str]) -> list[tuple[str, int, int, int, int]]:
    """difflib-style opcodes for two texts that differ in scattered, local places.

    Linear: it walks both lists and, at each difference, looks for the nearest line
    where they agree again (the rewriter only changes lines and inserts a few).
    ``difflib`` alone took 1.6 s on a 3,000-line module full of repeated lines.
    """
    ops: list[tuple[str, int, int, int, int]] = []
    i = j = 0
    n, m = len(old), len(new)
    while i < n and j < m:
        if old[i] == new[j]:
            i0, j0 = i, j
            while i < n and j < m and old[i] == new[j]:
                i += 1
                j += 1
            ops.append(("equal", i0, i, j0, j))
            continue
        found = _resync(old, new, i, j)
        if found is None:
            break
        di, dj = found
        ops.append(("insert" if di == 0 else "delete" if dj == 0 else "replace", i, i + di, j, j + dj))
        i, j = i + di, j + dj
    if i < n or j < m:
        import difflib  # rarely needed: not imported with the rewriter

        matcher = difflib.SequenceMatcher(None, old[i:], new[j:], autojunk=False)
        ops.extend((tag, a1 + i, a2 + i, b1 + j, b2 + j) for tag, a1, a2, b1, b2 in matcher.get_opcodes())
    return ops


class _LineColumns:
    """Maps the columns of a changed or inserted line to its original line (UTF-8 bytes).

    A changed line is aligned character by character, so that text the rewriter kept
    keeps its columns (and a traceback's carets); an inserted line spans the whole
    original line.  (A line that only moved sideways is a plain int shift instead.)
    """

    __slots__ = ("old", "new", "blocks")

    def __init__(self, old: str, new: Optional[str]) -> None:
        self.old = old
        self.new = new
        self.blocks: Optional[list[tuple[int, int, int]]] = None

    def map(self, col: int, end: bool) -> int:
        if self.new is None:
            return len(self.old.encode("utf-8")) if end else _indent_bytes(self.old)
        if self.blocks is None:
            self.blocks = _char_blocks(self.old, self.new)
        x = len(self.new.encode("utf-8")[:col].decode("utf-8", "ignore"))
        return len(self.old[:self._char(x, end)].encode("utf-8"))

    def _char(self, x: int, end: bool) -> int:
        blocks = self.blocks or []
        if end:
            for a, b, size in reversed(blocks):
                if b < x:
                    return a + min(x - b, size)
            return 0
        for a, b, size in blocks:
            if b + size > x:
                return a + max(x - b, 0)
        return len(self.old)


def _char_blocks(old: str, new: str) -> list[tuple[int, int, int]]:
    """Matching blocks (old start, new start, size) of a line and its rewrite, greedily.

    The rewriter's edits on a line are short insertions (``_autofork_rt.fork(``,
    ``_autofork_rt.unwrap(``) and ``(`` becoming ``, ``: after each difference, resume
    at the nearest place where four characters agree again.  (difflib took half the
    time of compile_rewritten.)
    """
    blocks: list[tuple[int, int, int]] = []
    i = j = 0
    n, m = len(old), len(new)
    while i < n and j < m:
        k = 0
        while i + k < n and j + k < m and old[i + k] == new[j + k]:
            k += 1
        if k:
            blocks.append((i, j, k))
            i, j = i + k, j + k
            continue
        inserted = new.find(old[i:i + 4], j)        # text inserted into the line
        deleted = old.find(new[j:j + 4], i)         # text removed from it
        if inserted >= 0 and (deleted < 0 or inserted - j <= deleted - i):
            j = inserted
        elif deleted >= 0:
            i = deleted
        else:
            callee = _callee_moved(old, i, new, j)
            if callee >= 0:
                j = callee
            else:
                i, j = i + 1, j + 1
    return blocks


_CALLEE = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*(?=\()")


def _callee_moved(old: str, i: int, new: str, j: int) -> int:
    """Where the callee of a call at ``old[i]`` became the first argument of ``fork``
    (``f(x)`` -> ``fork(f, x)``, ``m.f()`` -> ``fork(m.f)``), in ``new`` from ``j``; -1
    if it did not.  (A short call has no four characters left in common.)"""
    found = _CALLEE.match(old, i)
    if found is None:
        return -1
    for after in (", ", ")"):
        at = new.find(f"({found.group()}{after}", j)
        if at >= 0:
            return at + 1
    return -1


def _line_map(original: str, rewritten: str) -> tuple[list[int], list[Union[int, _LineColumns]]]:
    """For each rewritten line (1-based): the original line, and how to map its columns
    (an int: the shift of a line that only moved sideways).

    Inserted lines belong to the statement that follows them.
    """
    old = _NEWLINE.split(original)
    new = _NEWLINE.split(rewritten)
    lines = [1] * (len(new) + 2)
    columns: list[Union[int, _LineColumns]] = [0] * (len(new) + 2)
    last = max(len(old) - 1, 0)
    for tag, i1, i2, j1, j2 in _align([s.strip() for s in old], [s.strip() for s in new]):
        if tag == "replace":
            pairs = _replaced(new, i1, i2, j1, j2)
        for k in range(j2 - j1):
            row = j1 + k + 1
            if tag == "equal":
                lines[row] = i1 + k + 1
                columns[row] = _indent_bytes(old[i1 + k]) - _indent_bytes(new[j1 + k])
            elif tag == "replace" and pairs[k] >= 0:   # a changed line: char by char
                index = pairs[k]
                lines[row] = index + 1
                columns[row] = _LineColumns(old[index], new[j1 + k])
            else:           # insert
                index = min(i1 if tag != "replace" else -pairs[k] - 1, last)
                lines[row] = index + 1
                columns[row] = _LineColumns(old[index] if old else "", None)
    return lines, columns


_REWIND_NOTE = "# autofork: names as before a call that failed"
_JOINER_LINE = re.compile(r"\s*(?:with _autofork_\w+\.(?:Joiner\(\)|inner\([^()]*\)) as _autofork_\w+:"
                          r"|_autofork_\w+\.settle_names\([^()]*\)"
                          r"|(?:try|finally):  # autofork: names as before a call that failed"
                          r"|if _autofork_\w+\.(?:rebinds|unbinds)\(.*"
                          r"|del _autofork_\w+)\s*")


def _replaced(new: Sequence[str], i1: int, i2: int, j1: int, j2: int) -> list[int]:
    """For each new line of a replaced block: its old line, or -1 - the old line of the
    statement it was inserted before (a ``with ...Joiner()`` or ``settle_names`` line).

    Without the inserted lines, the two blocks pair up line by line; when they do not
    (a line the rewriter split or joined), the k-th new line pairs with the k-th old one.
    """
    inserted = [bool(_JOINER_LINE.fullmatch(new[j])) for j in range(j1, j2)]
    if j2 - j1 - sum(inserted) != i2 - i1:
        return [i1 + min(k, i2 - i1 - 1) for k in range(j2 - j1)]
    pairs, index = [], i1
    for joiner in inserted:
        pairs.append(-1 - index if joiner else index)
        index += not joiner
    return pairs


def compile_rewritten(original: str, rewritten: str, filename: str) -> types.CodeType:
    """Compile ``rewritten`` with every position pointing into ``original``.

    Line numbers of the code object (tracebacks, coverage, ``co_firstlineno``,
    ``co_lines``/``co_positions``) are those of the original file: the rewritten text is
    parsed with ``ast``, and each node's lines are mapped through a line alignment of
    the two texts (a line only re-indented keeps its columns, shifted; a changed line
    is aligned character by character; an inserted line maps to the original line of
    the statement it belongs to).
    """
    return compile(parse_rewritten(original, rewritten, filename), filename, "exec",
                   dont_inherit=True)


def parse_rewritten(original: str, rewritten: str, filename: str) -> ast.Module:
    """The ``ast`` of ``rewritten`` with every position pointing into ``original``.

    What ``compile_rewritten`` compiles; for callers that compile the tree themselves
    (IPython runs a cell's statements one by one).
    """
    tree = cast(ast.Module, compile(rewritten, filename, "exec", ast.PyCF_ONLY_AST,
                                    dont_inherit=True))
    if original != rewritten:
        _remap_positions(tree, original, rewritten)
    return tree


# The fields of each ast node type that may hold positioned nodes: ``ctx``, ``op`` and
# ``ops`` hold operator and context singletons, half of all nodes of a module.
_POSITIONED_FIELDS: dict[type, tuple[str, ...]] = {}


def _remap_positions(tree: ast.AST, original: str, rewritten: str) -> None:
    lines, columns = _line_map(original, rewritten)
    top = len(lines) - 1
    node_type = ast.AST
    fields = _POSITIONED_FIELDS
    stack: list[ast.AST] = [tree]
    while stack:   # ast.walk, inlined: this loop runs once per node of the module
        node: Any = stack.pop()  # positions are read with getattr: not every node has them
        kind = type(node)
        names = fields.get(kind)
        if names is None:
            names = fields[kind] = tuple(f for f in kind._fields if f not in ("ctx", "op", "ops"))
        for field in names:
            value = getattr(node, field)
            if isinstance(value, list):
                stack.extend(v for v in value if isinstance(v, node_type))
            elif isinstance(value, node_type):
                stack.append(value)
        lineno = getattr(node, "lineno", None)
        if lineno is None:
            continue
        lineno = min(lineno, top)
        node.lineno = lines[lineno]
        col = getattr(node, "col_offset", -1)
        if col is not None and col >= 0:
            rule = columns[lineno]
            node.col_offset = max(col + rule, 0) if type(rule) is int else rule.map(col, False)
        end_lineno = getattr(node, "end_lineno", None)
        if end_lineno is None:
            continue
        end_lineno = min(end_lineno, top)
        node.end_lineno = lines[end_lineno]
        end_col = getattr(node, "end_col_offset", -1)
        if end_col is not None and end_col >= 0:
            rule = columns[end_lineno]
            end_col = max(end_col + rule, 0) if type(rule) is int else rule.map(end_col, True)
            if node.end_lineno == node.lineno and end_col < node.col_offset:
                end_col = node.col_offset
            node.end_col_offset = end_col
