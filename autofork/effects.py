"""Effects a caller could see: which marked functions must stay plain calls when rewritten.

A call that runs in another process cannot change the caller's objects, and calls in
threads change them in another order.  So the rewriter reads each marked function, and
the functions of its own module that it calls (transitively), for effects, and keeps
the calls of a function that has one plain, with one warning.  The rules:

=================================  ===========================================  =========
effect                             found as                                     rule
=================================  ===========================================  =========
writes to an argument              ``p[k] = v``, ``p.a = v``, ``p[k] += v``,    plain
                                   ``del p[k]``, ``p.append(x)`` (the mutating
                                   methods of list/dict/set/deque/bytearray),
                                   ``heapq.heappush(p, x)``, ``setattr(p, ...)``
writes to ``self``                 the same on a method's first parameter       plain
writes to module state             ``global G`` then ``G = ...``; the same      plain
                                   writes on a module-level or imported name
                                   (``COUNTS[k] += 1``, ``CACHE.append(x)``,
                                   ``settings.FACTOR = 7``)
writes to enclosing state          ``nonlocal n`` then ``n = ...``; writes      plain
                                   on a name of an enclosing function
the global random generator        ``random.random()``, ``random.shuffle(p)``,  plain
                                   ``numpy.random.rand()`` (not
                                   ``random.Random(seed)``, ``default_rng``)
calls a same-module function       its effects, with each argument it changes   plain
                                   mapped to what the caller passed
the state of the process           ``os.chdir(d)``, ``os.putenv``, ``os._exit``, plain
                                   ``sys.setrecursionlimit``, ``signal.signal``;
                                   ``atexit.register``; reading ``sys.stdin``,
                                   ``input()``
returns a generator expression     ``return (f(x) for x in xs)``: a generator   plain
                                   cannot be sent back from another process
                                   (a generator function is kept plain by the
                                   rewriter itself)
=================================  ===========================================  =========

A name is resolved by the rewriter's own ``Scopes`` (never by spelling): ``p`` above is a
parameter of the function itself, or a local bound to one (``q = p``, ``for row in p``,
``with p as q``); a local built by a call (``q = list(p)``, ``q = []``) is the function's
own, and changing it is no effect.  Not effects: ``print``, ``logging`` and
``warnings`` (their output is carried back by the runtime), ``open(path, "w")`` on a file
of the call's own, reading globals, calls into other modules.

Limits, on purpose (the run-time argument check catches what the source cannot show):
the analysis is flow-insensitive, with one exception: a parameter whose first use, at
the top level of the body, rebinds it to a copy (``df = df.copy()``, ``p = list(p)``,
``p = sorted(p)``, ``p = copy.deepcopy(p)``, a comprehension) is the function's own
from then on; a copy made later or in a branch still counts as the parameter; ``p += x`` on a bare parameter is taken as a rebinding, methods
of unknown objects (``p.add_item(x)``) count only when their name is one of the
built-in containers' mutating methods, and a function imported from another module is
analysed there, not at its callers.

``@trust_effects`` on a function (``from autofork import trust_effects``) says its
effects need not be seen by the caller: it is forked anyway, without a warning, and its
effects do not make its callers plain.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import libcst as cst

from autofork.transformer import (Def, child_nodes, FromImport, Local, ModuleImport, Param, Scope,
                                  Scopes, SelfParam, ast_defs)

__all__ = ["Effect", "find_effects", "MUTATING_METHODS"]

#: Methods of the built-in containers (list, dict, set, deque, bytearray, OrderedDict)
#: that change the object they are called on.
MUTATING_METHODS = frozenset({
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse", "update",
    "setdefault", "popitem", "add", "discard", "difference_update", "intersection_update",
    "symmetric_difference_update", "appendleft", "extendleft", "popleft", "rotate",
    "move_to_end", "__setitem__", "__delitem__", "__iadd__",
})
# Functions of other modules that change their first argument in place.
_MUTATING_FUNCTIONS = {
    "heapq": frozenset({"heappush", "heappop", "heapify", "heapreplace", "heappushpop"}),
    "bisect": frozenset({"insort", "insort_left", "insort_right"}),
}
_RANDOM_GLOBAL = frozenset({
    "random", "uniform", "randint", "randrange", "choice", "choices", "shuffle", "sample",
    "seed", "gauss", "normalvariate", "lognormvariate", "expovariate", "vonmisesvariate",
    "gammavariate", "betavariate", "paretovariate", "weibullvariate", "triangular",
    "getrandbits", "randbytes", "setstate", "binomialvariate",
})
# Functions that change the state of the process itself (what a worker process changes
# of its own, never the caller's): name -> what the call changes, and the fix.
_PROCESS_STATE = {
    "os": {"chdir": "the working directory", "fchdir": "the working directory",
           "putenv": "the environment", "unsetenv": "the environment", "umask": "the umask",
           "_exit": "ends the process", "abort": "ends the process",
           "setsid": "the process's session", "nice": "the process's priority"},
    "sys": {"setrecursionlimit": "the recursion limit", "setswitchinterval":
            "the switch interval", "settrace": "the trace function", "setprofile":
            "the profile function", "set_int_max_str_digits": "the int conversion limit"},
    "signal": {"signal": "a signal handler", "alarm": "the alarm", "setitimer": "a timer"},
    "fileinput": {"input": "reads the standard input or the files of the command line"},
    "atexit": {"register": "the exit handlers", "unregister": "the exit handlers"},
}
# numpy.random names that make a generator of one's own: every other function of
# numpy.random draws from (or reseeds) the global one.
_NUMPY_OWN = frozenset({
    "default_rng", "Generator", "RandomState", "SeedSequence", "BitGenerator", "PCG64",
    "PCG64DXSM", "MT19937", "Philox", "SFC64",
})
# Calls that make a generator: one made at module level is shared by every call.
_GENERATORS = frozenset({("random", "Random"), ("numpy.random", "default_rng"),
                         ("numpy.random", "RandomState"), ("numpy.random", "Generator")})
_DEF_LINE = re.compile(r"^[ \t]*(?:async[ \t]+)?def[ \t]+(\w+)", re.MULTILINE)
_NEWLINE = re.compile(r"\r\n|\r|\n")
_SCOPE_NODES = frozenset({cst.FunctionDef, cst.Lambda, cst.ClassDef, cst.ListComp, cst.SetComp,
                          cst.GeneratorExp, cst.DictComp})
_VERBS = {"append": "appending to", "extend": "extending", "insert": "inserting into",
          "add": "adding to", "update": "updating", "setdefault": "updating",
          "appendleft": "appending to", "extendleft": "extending"}


@dataclass(frozen=True)
class Effect:
    """One effect of a function that its caller could see."""

    function: str    # the function's name
    line: int        # line of the effect in the module's file
    kind: str        # argument, self, module, enclosing, random, process, result
    what: str        # "`out.append(...)` changes the argument `out`"
    fix: str         # "return the new list instead of appending to `out`"
    param: Optional[str] = None   # the parameter changed (kinds argument and self)

    def message(self) -> str:
        """The warning text (the file and line come with the warning itself)."""
        return (f"{self.function}() is not forked, its calls run in the caller: line "
                f"{self.line}: {self.what}. Fix: {self.fix}; or mark it @trust_effects "
                f"if the caller need not see this")


def find_effects(module: cst.Module, scopes: Scopes, source: str) -> dict[int, Effect]:
    """id(Def) -> the first effect, for each marked (forkable) def of a finished ``scopes``.

    Defs marked ``@trust_effects`` are left out.  ``source`` gives the lines.
    """
    marked = [d for d in scopes.defs if d.kind is not None and not d.trusted]
    if not marked:
        return {}
    finder = _Finder(module, scopes, source)
    found = {}
    for definition in marked:
        effects = finder.effects_of(definition)
        if effects:
            found[id(definition)] = min(effects, key=lambda e: e.line)
    return found


# --------------------------------------------------------------------------- owners


@dataclass(frozen=True)
class _Owner:
    """Whose object a written expression is: kind argument/self/module/enclosing, and name."""

    kind: str
    name: str


def _root(expression: cst.BaseExpression) -> Optional[cst.Name]:
    """``a`` of ``a``, ``a.b[c].d``; None when the chain starts elsewhere (a call, a literal)."""
    while True:
        expression = _registered(expression)
        if not isinstance(expression, (cst.Attribute, cst.Subscript)):
            break
        expression = expression.value
    return expression if isinstance(expression, cst.Name) else None


def _rewritten(node: cst.BaseExpression, method: str) -> bool:
    """Whether ``node`` is ``_autofork_<joiner>.<method>(...)``, put in by an earlier rewrite."""
    return (isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute)
            and node.func.attr.value == method and isinstance(node.func.value, cst.Name)
            and node.func.value.value.startswith("_autofork_") and len(node.args) >= 1)


def _registered(expression: cst.BaseExpression) -> cst.BaseExpression:
    """``c`` of ``_autofork_j1.into(c)`` (a loop's container, in rewritten code), so that
    rewriting rewritten code sees the same writes; any other expression as it is."""
    while _rewritten(expression, "into") or _rewritten(expression, "settle") or _rewritten(
            expression, "unwrap"):
        expression = expression.args[0].value  # type: ignore[attr-defined]
    return expression


def _qualname(definition: Def) -> str:
    """``Account.deposit``, ``total.<locals>.step``: the def's ``__qualname__``."""
    parts = [definition.node.name.value]
    scope: Optional[Scope] = definition.scope
    while scope is not None and scope.kind in ("class", "function"):
        parts.append(scope.name if scope.kind == "class" else f"{scope.name}.<locals>")
        scope = scope.parent
    return ".".join(reversed(parts))


def _inside(scope: Optional[Scope], outer: Scope) -> bool:
    while scope is not None:
        if scope is outer:
            return True
        scope = scope.parent
    return False


#: Calls that return a new object made from their argument (``p = list(p)``), and
#: methods that return a copy of their object (``p = p.copy()``).
_COPYING_CALLS = frozenset({"list", "dict", "set", "tuple", "frozenset", "bytearray", "sorted",
                            "deepcopy", "copy"})
_COPYING_METHODS = frozenset({"copy", "deepcopy"})


def _copy_kind(value: cst.BaseExpression) -> str:
    """"deep" for ``copy.deepcopy(p)``, "shallow" for ``list(p)``, ``sorted(p)``,
    ``p.copy()``, ``[... for ...]``; "" for anything else."""
    if isinstance(value, (cst.ListComp, cst.SetComp, cst.DictComp)):
        return "shallow"
    if not isinstance(value, cst.Call):
        return ""
    func = value.func
    name = ""
    if isinstance(func, cst.Name) and func.value in _COPYING_CALLS:
        name = func.value
    elif isinstance(func, cst.Attribute):
        if isinstance(func.value, cst.Name) and func.value.value == "copy":
            name = func.attr.value if func.attr.value in _COPYING_CALLS else ""
        elif func.attr.value in _COPYING_METHODS and not value.args:
            name = func.attr.value   # p.copy(): pandas' default is a deep copy, a list's shallow
    return "" if not name else "deep" if name == "deepcopy" else "shallow"


class _Finder:
    """The effects of the defs of one module, each def read once (memoised)."""

    def __init__(self, module: cst.Module, scopes: Scopes, source: str) -> None:
        self.module = module
        self.scopes = scopes
        self.source = source
        self.memo: dict[int, list[Effect]] = {}
        self._lines: Optional[_Lines] = None
        self._defs = {id(d.body_scope): d.node for d in scopes.defs if d.body_scope is not None}
        self._copied: dict[tuple[int, str], str] = {}

    def copied_first(self, function: Scope, name: str) -> str:
        """"deep" or "shallow" when the body of ``function`` starts using the parameter
        ``name`` by rebinding it to a copy (``df = df.copy()``, ``xs = list(xs)``,
        ``xs = copy.deepcopy(xs)``): at the top level of the body, before any statement
        that mentions ``name`` otherwise; else "".  A shallow copy shares its elements:
        ``xs[0].append(1)`` still changes the caller's."""
        key = (id(function), name)
        found = self._copied.get(key)
        if found is None:
            found = self._copied[key] = self._rebinds_to_copy(function, name)
        return found

    def _rebinds_to_copy(self, function: Scope, name: str) -> str:
        node = self._defs.get(id(function))
        if node is None or not isinstance(node.body, cst.IndentedBlock):
            return ""
        mention = re.compile(rf"\b{re.escape(name)}\b")
        for statement in node.body.body:
            if isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1:
                small = statement.body[0]
                if (isinstance(small, cst.Assign) and len(small.targets) == 1
                        and isinstance(small.targets[0].target, cst.Name)
                        and small.targets[0].target.value == name):
                    return _copy_kind(small.value)
            if mention.search(self.module.code_for_node(statement)):
                return ""
        return ""

    def lines(self) -> _Lines:
        if self._lines is None:
            self._lines = _Lines(self.module, self.scopes, self.source)
        return self._lines

    def effects_of(self, definition: Def) -> list[Effect]:
        key = id(definition)
        if key not in self.memo:
            self.memo[key] = []   # a recursive call sees no effects of its own yet
            self.memo[key] = _Body(self, definition).effects()
        return self.memo[key]

    def owner(self, expression: cst.BaseExpression, scope: Scope, function: Scope,
              seen: frozenset[int] = frozenset(), inside: bool = False) -> Optional[_Owner]:
        """Whose object ``expression`` (a chain of attributes and items) is, seen from
        ``scope`` inside the body of ``function``; None for the function's own.
        ``inside``: the object changed is an element of ``expression``."""
        expression = _registered(expression)
        if isinstance(expression, (cst.Tuple, cst.List)):
            if not inside:
                return None   # a new tuple or list: changing it changes no one else's
            for element in expression.elements:
                found = self.owner(element.value, scope, function, seen, inside)
                if found is not None:
                    return found
            return None
        root = _root(expression)
        if root is None:
            return None
        name = root.value
        found_in, bindings = self.scopes.lookup(scope, name)
        if found_in is None:
            return None                       # a builtin, or unbound
        if found_in is self.scopes.module:
            return _Owner("module", name)    # a module-level name, or another module's
        if not _inside(found_in, function):
            return _Owner("enclosing", name)
        for binding in bindings:
            if isinstance(binding, SelfParam) and found_in is function:
                return _Owner("self", name)
            if isinstance(binding, Param) and found_in is function:
                if binding.packed and expression is root and not inside:
                    continue    # args.pop(), kwargs["k"] = v: this call's own tuple/dict
                copied = self.copied_first(function, name)
                if copied == "deep" or copied and expression is root and not inside:
                    continue    # df = df.copy() first: the writes change the copy
                return _Owner("argument", name)
            if isinstance(binding, Local) and id(binding) not in seen:
                aliased = self._alias(binding, function, seen | {id(binding)},
                                      inside or expression is not root)
                if aliased is not None:
                    return aliased
        return None

    def _alias(self, binding: Local, function: Scope, seen: frozenset[int],
               inside: bool) -> Optional[_Owner]:
        """The owner a local is bound to: ``q = p``, ``for row in p``, ``for i, r in enumerate(p)``."""
        source = binding.source
        sources: Sequence[cst.BaseExpression] = (source,)
        if binding.element and isinstance(source, cst.Call):
            # Iterating enumerate(p), zip(p, q), p.items(), sorted(p): the elements are p's.
            if isinstance(source.func, cst.Attribute):
                sources = (source.func.value,)
            else:
                sources = tuple(arg.value for arg in source.args)
        elif isinstance(source, cst.IfExp):
            sources = (source.body, source.orelse)
        elif isinstance(source, cst.BooleanOperation):
            sources = (source.left, source.right)
        for expression in sources:
            found = self.owner(expression, binding.scope, function, seen,
                               inside or binding.element)
            if found is not None:
                return found
        return None


# ---------------------------------------------------------------------- one function


class _Body:
    """Reads one def's body (nested lambdas, comprehensions and defs included)."""

    def __init__(self, finder: _Finder, definition: Def) -> None:
        self.finder = finder
        self.scopes = finder.scopes
        self.definition = definition
        self.name = _qualname(definition)
        self.function = definition.body_scope or self.scopes.module
        self.stack: list[Scope] = [self.function]
        self.found: list[tuple[cst.CSTNode, str, str, str, Optional[str]]] = []
        self.inherited: list[Effect] = []
        self.handlers: dict[type, Callable[[Any], None]] = {
            cst.Assign: self.visit_Assign, cst.AugAssign: self.visit_AugAssign,
            cst.AnnAssign: self.visit_AnnAssign, cst.Del: self.visit_Del, cst.For: self.visit_For,
            cst.NamedExpr: self.visit_NamedExpr, cst.Call: self.visit_Call,
            cst.Return: self.visit_Return, cst.Attribute: self._stdin,
        }

    def effects(self) -> list[Effect]:
        self.walk(self.definition.node.body)
        lines = self.finder.lines()
        out = [Effect(self.name, lines.of(self.definition, node), kind, what, fix, param)
               for node, kind, what, fix, param in self.found]
        return out + self.inherited

    # ---- scopes

    def walk(self, node: cst.CSTNode) -> None:
        scope = self.scopes.scope_of(node) if type(node) in _SCOPE_NODES else None
        if scope is not None:
            self.stack.append(scope)
        handler = self.handlers.get(type(node))
        if handler is not None:
            handler(node)
        for child in child_nodes(node):
            self.walk(child)
        if scope is not None:
            self.stack.pop()

    @property
    def scope(self) -> Scope:
        return self.stack[-1]

    def text(self, node: cst.CSTNode) -> str:
        code = self.finder.module.code_for_node(node).strip()
        first = code.splitlines()[0] if code else ""
        return first if len(first) <= 60 else first[:57] + "..."

    # ---- writes

    def _write(self, node: cst.CSTNode, container: cst.BaseExpression) -> None:
        owner = self.finder.owner(container, self.scope, self.function)
        if owner is not None:
            self._report(node, owner, f"`{self.text(node)}`", None)

    def _report(self, node: cst.CSTNode, owner: _Owner, what: str, method: Optional[str]) -> None:
        name = owner.name
        if owner.kind == "argument":
            verb = _VERBS.get(method or "")
            if verb and method in ("append", "extend", "insert", "appendleft", "extendleft"):
                fix = f"return the new list instead of {verb} `{name}`"
            elif method == "sort":
                fix = f"return `sorted({name})` instead of sorting `{name}` in place"
            elif verb:
                fix = f"return the new value instead of {verb} `{name}`"
            else:
                fix = f"return the new value instead of changing `{name}` in place"
            what = f"{what} changes the argument `{name}`"
        elif owner.kind == "self":
            fix = f"return the new value and set it on `{name}` in the caller"
            what = f"{what} changes `{name}`"
        elif owner.kind == "module":
            fix = f"return the change and apply it to `{name}` in the caller"
            what = f"{what} changes the module-level `{name}`"
        else:
            fix = f"return the new value and assign `{name}` in the caller"
            what = f"{what} changes `{name}` of an enclosing function"
        self.found.append((node, owner.kind, what, fix, name))

    def _targets(self, node: cst.CSTNode, target: cst.BaseExpression) -> None:
        if isinstance(target, (cst.Tuple, cst.List)):
            for element in target.elements:
                self._targets(node, element.value)
        elif isinstance(target, cst.StarredElement):
            self._targets(node, target.value)
        elif isinstance(target, (cst.Attribute, cst.Subscript)):
            self._write(node, target.value)
        elif isinstance(target, cst.Name):
            self._rebinding(node, target.value)

    def _rebinding(self, node: cst.CSTNode, name: str) -> None:
        scope = self.scope
        if name in scope.globals:
            self._report(node, _Owner("module", name),
                         f"`global {name}` then `{self.text(node)}`", None)
        elif name in scope.nonlocals:
            found_in, _ = self.scopes.lookup(scope, name)
            if not _inside(found_in, self.function) or found_in is None:
                self._report(node, _Owner("enclosing", name),
                             f"`nonlocal {name}` then `{self.text(node)}`", None)

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            self._targets(node, target.target)

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._targets(node, node.target)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if node.value is not None:
            self._targets(node, node.target)

    def visit_Del(self, node: cst.Del) -> None:
        self._targets(node, node.target)

    def visit_For(self, node: cst.For) -> None:
        self._targets(node, node.target)

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        if isinstance(node.target, cst.Name):
            self._rebinding(node, node.target.value)

    def visit_Return(self, node: cst.Return) -> None:
        if isinstance(node.value, cst.GeneratorExp) and self.scope is self.function:
            self.found.append((node, "result", f"`{self.text(node)}` gives a generator, which "
                               "cannot be sent back from another process",
                               "return a list (`return [...]`) or a tuple", None))

    # ---- the caller's standard input

    def _stdin(self, node: cst.Attribute) -> None:
        """``sys.stdin`` (and ``stdin.read`` after ``from sys import stdin``: names are not
        walked): a worker process has no input."""
        read: cst.BaseExpression = node
        if isinstance(node.value, cst.Name) and node.value.value in ("stdin", "__stdin__"):
            read = node.value
        elif node.attr.value not in ("stdin", "__stdin__"):
            return
        if self.scopes.imported(read, self.scope) in (("sys", "stdin"), ("sys", "__stdin__")):
            self.found.append((node, "process", f"`{self.text(read)}` reads the standard input "
                               "of the process, which a worker process does not share",
                               "read the input in the caller and pass it as an argument", None))

    # ---- calls

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if isinstance(func, cst.Name) and func.value == "input" and (
                self.scopes.lookup(self.scope, "input")[0] is None):
            self.found.append((node, "process", "`input()` reads the standard input of the "
                               "process, which a worker process does not share",
                               "read the input in the caller and pass it as an argument", None))
            return
        if _rewritten(node, "then") or _rewritten(node, "fold") and len(node.args) == 3 and (
                isinstance(node.args[1].value, cst.SimpleString)
                and str(node.args[1].value.evaluated_value).endswith("=")):
            # A reduction step of an earlier rewrite: j.then(acc.update, v), j.fold(acc, "+=", v).
            target = node.args[0].value
            if isinstance(target, cst.Attribute) and _rewritten(node, "then"):
                func = target
            elif isinstance(target, cst.Name):
                self._rebinding(node, target.value)   # acc += v on a name: a rebinding
                return
            else:
                self._write(node, target)
                return
        if isinstance(func, cst.Attribute) and func.attr.value in MUTATING_METHODS:
            owner = self.finder.owner(func.value, self.scope, self.function)
            if owner is not None and not self._is_module_function(func):
                self._report(node, owner, f"`{self.text(func)}(...)`", func.attr.value)
                return
        if isinstance(func, cst.Name) and func.value in ("setattr", "delattr") and node.args:
            if self.scopes.lookup(self.scope, func.value)[0] is None:
                owner = self.finder.owner(node.args[0].value, self.scope, self.function)
                if owner is not None:
                    self._report(node, owner, f"`{self.text(node)}`", None)
                    return
        module, attr = self.scopes.imported(func, self.scope)
        if module is not None and attr is not None:
            self._module_call(node, module, attr)
            return
        shared = self._shared_generator(func)
        if shared is not None:
            self.found.append((node, "random", f"`{self.text(func)}()` draws from `{shared}`, a "
                               f"generator made at module level and shared by every call, "
                               f"whose draws depend on the order of calls",
                               "pass a seed per call and make the generator inside the call "
                               "(`random.Random(seed)`)", None))
            return
        for callee in self._callees(func):
            self._inherit(node, callee)

    def _is_module_function(self, func: cst.Attribute) -> bool:
        """``np.append(...)``: a function of an imported module, not a method."""
        if not isinstance(func.value, cst.Name):
            return False
        bindings = self.scopes.lookup(self.scope, func.value.value)[1]
        return bool(bindings) and all(isinstance(b, ModuleImport) for b in bindings)

    def _shared_generator(self, func: cst.BaseExpression) -> Optional[str]:
        """``RNG`` when ``func`` is ``RNG.method`` and ``RNG = random.Random(...)`` (or a
        numpy generator) at module level."""
        if not (isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name)):
            return None
        found_in, bindings = self.scopes.lookup(self.scope, func.value.value)
        if found_in is not self.scopes.module:
            return None
        for binding in bindings:
            if isinstance(binding, Local) and isinstance(binding.source, cst.Call):
                if self.scopes.imported(binding.source.func, binding.scope) in _GENERATORS:
                    return func.value.value
        return None

    def _module_call(self, node: cst.Call, module: str, attr: str) -> None:
        if (module == "random" and attr in _RANDOM_GLOBAL) or (
                module == "numpy.random" and attr not in _NUMPY_OWN):
            own = ("`random.Random(seed)`" if module == "random"
                   else "`numpy.random.default_rng(seed)`")
            self.found.append((node, "random", f"`{self.text(node.func)}()` uses the global "
                               f"`{module}` generator, whose draws depend on the order of calls",
                               f"pass a seed per call and draw from a generator of the call's "
                               f"own, {own}", None))
        elif attr in _PROCESS_STATE.get(module, {}):
            changed = _PROCESS_STATE[module][attr]
            what = (f"`{self.text(node.func)}()` {changed}" if changed.startswith(("ends", "reads"))
                    else f"`{self.text(node.func)}()` changes {changed} of the process")
            self.found.append((node, "process", f"{what}, which a worker process does for "
                               "itself, never for the caller",
                               "make this call in the caller (before or after the loop)", None))
        elif attr in _MUTATING_FUNCTIONS.get(module, ()) and node.args:
            owner = self.finder.owner(node.args[0].value, self.scope, self.function)
            if owner is not None:
                self._report(node, owner, f"`{self.text(node.func)}(...)`", "update")

    def _callees(self, func: cst.BaseExpression) -> list[Def]:
        """The same-module defs a call may call (all bindings defs, or ``self.m``)."""
        if isinstance(func, cst.Name):
            bindings = self.scopes.lookup(self.scope, func.value)[1]
        elif isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name):
            owners = self.scopes.lookup(self.scope, func.value.value)[1]
            if not owners or not all(isinstance(b, SelfParam) for b in owners):
                return []
            classes = {id(b.cls): b.cls for b in owners if isinstance(b, SelfParam)}
            if len(classes) != 1:
                return []
            bindings = next(iter(classes.values())).bindings.get(func.attr.value, [])
        else:
            return []
        if not bindings or not all(isinstance(b, Def) for b in bindings):
            return []
        return [b for b in bindings if isinstance(b, Def) and not b.trusted]

    def _inherit(self, node: cst.Call, callee: Def) -> None:
        """The callee's effects, as this function's: an argument it changes is mapped to
        what this call passes for it."""
        name = callee.node.name.value
        for effect in self.finder.effects_of(callee):
            if effect.kind == "result":
                continue    # what the callee returns is this function's own value
            owner: Optional[_Owner] = _Owner(effect.kind, effect.param or "")
            if effect.kind in ("argument", "self"):
                owner = self._passed(node, callee, effect)
            elif effect.kind == "enclosing" and callee.body_scope is not None:
                found_in = self.scopes.lookup(callee.body_scope, effect.param or "")[0]
                if _inside(found_in, self.function):
                    continue    # a nested def changing this function's own local
            if owner is None:
                continue
            what = f"`{self.text(node)}` calls {name}(), where line {effect.line}: {effect.what}"
            if effect.kind in ("random", "process"):
                self.found.append((node, effect.kind, what, effect.fix, None))
            else:
                self.found.append((node, owner.kind, what, effect.fix, owner.name))

    def _passed(self, node: cst.Call, callee: Def, effect: Effect) -> Optional[_Owner]:
        """Whose object the caller passes for the parameter ``effect`` changes."""
        params = callee.node.params
        if effect.kind == "self":
            func = node.func
            if isinstance(func, cst.Attribute):
                return self.finder.owner(func.value, self.scope, self.function)
            return None
        positional = [p.name.value for p in (*params.posonly_params, *params.params)]
        if callee.body_scope is not None and positional and any(
                isinstance(b, SelfParam) for b in callee.body_scope.bindings.get(positional[0], ())):
            positional = positional[1:]   # called as self.m(...): self is not in the args
        args = [a.value for a in node.args if a.keyword is None and not a.star]
        passed: Optional[cst.BaseExpression] = None
        for arg in node.args:
            if arg.keyword is not None and arg.keyword.value == effect.param:
                passed = arg.value
        if passed is None and effect.param in positional:
            index = positional.index(effect.param)
            if index < len(args):
                passed = args[index]
            elif any(a.star for a in node.args):
                stars = [a.value for a in node.args if a.star]
                return next((o for o in (self.finder.owner(s, self.scope, self.function)
                                         for s in stars) if o is not None), None)
        if passed is None:
            if effect.param in positional or any(
                    p.name.value == effect.param for p in params.kwonly_params):
                # The parameter's default, made once when the def ran: module state.
                return _Owner("module", f"{callee.node.name.value}.{effect.param}")
            return None
        return self.finder.owner(passed, self.scope, self.function)


# ---------------------------------------------------------------------------- lines


class _Lines:
    """The line of a node inside a def: the def's first line is the ``def`` keyword's line
    (the defs of ``Scopes.defs`` come in the order of the text: a regular expression finds
    them, or ``ast`` when a string holds such a line), the node's the first line after it
    that holds the node's first text line."""

    def __init__(self, module: cst.Module, scopes: Scopes, source: str) -> None:
        self.module = module
        self.lines = _NEWLINE.split(source)
        names = [d.node.name.value for d in scopes.defs]
        found = [(m.group(1), source.count("\n", 0, m.start()) + 1)
                 for m in _DEF_LINE.finditer(source)]
        if [name for name, _ in found] != names or "\r" in source:
            found = [(d.name, d.lineno) for d in ast_defs(ast.parse(source).body)]
        self.starts: dict[int, int] = {}
        if [name for name, _ in found] == names:
            self.starts = {id(d): line for d, (_, line) in zip(scopes.defs, found)}

    def of(self, definition: Def, node: cst.CSTNode) -> int:
        start = self.starts.get(id(definition), 1)
        code = self.module.code_for_node(node).strip()
        first = code.splitlines()[0].strip() if code else ""
        for number in range(start, len(self.lines) + 1):
            if first and first in self.lines[number - 1]:
                return number
        return start

