"""IPython and Jupyter: ``%load_ext autofork`` rewrites the cells that follow.

One cell, from the text the user typed to the code the kernel runs::

    raw cell --IPython's own input transformers (%magics, !shell)--> cell text
        -> _Extension.remember (the last input transformer): keeps the cell text
    ast.parse(cell text) -> _Extension.visit (an IPython AST transformer):
        names the cell uses, looked up in the live namespace   -> rewrite(..., namespace=)
        transformer.rewrite(cell text) -> parse_rewritten: positions point into the cell
        the value of a last expression statement is shown after the cell's joins
    IPython runs the statements one by one in the kernel's main thread
        -> post_run_cell: the marks of the cell's top-level defs are remembered;
           a KeyboardInterrupt (the kernel's interrupt) kills the running forks

Rules:

- The rewriting is the import hook's (``transformer.rewrite`` on the cell's text, as
  module ``__main__``).  A name the cell does not bind itself is resolved by asking the
  namespace what it holds *now*: a function marked in an earlier cell (its marks as the
  transformer read them from that cell's source), a marked function of an importable
  module (asked of the hook's resolver), a module, or a fork's result.  A name rebound
  by a later cell is therefore seen as it is.
- The import hook is installed too: modules imported after ``%load_ext`` are rewritten
  as under ``python -m autofork``.
- Nothing of ours may break a cell: an internal failure warns (``AutoforkWarning``) and
  the cell runs as typed.  IPython drops an AST transformer that raises, so ``visit``
  never raises.
- The workers are the runtime's own: started on the first fork, reused by every cell,
  killed when the kernel is interrupted (they restart on the next fork) and gone with
  the kernel process (they die with their parent, also on SIGKILL).
"""

from __future__ import annotations

import ast
import sys
import types
import warnings
import weakref
from typing import Any, Optional

__all__ = ["load_ipython_extension", "unload_ipython_extension"]

_MODULE = "__main__"
_SHOWN = "_autofork_shown"
# The call that gives a displayed value its real value, spelled so that it needs no
# name in the user's namespace (``%reset`` may empty it).
_UNWRAP = "__import__('autofork.runtime.proxy', fromlist=['unwrap']).unwrap"


class _Extension:
    """The state of the extension in one IPython shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.text: Optional[str] = None        # the last cell text IPython will parse
        self.rewritten: Optional[str] = None   # what the last cell became, when it changed
        self.defs: dict[str, Optional[str]] = {}  # marks of the last cell's top-level defs
        # Each function defined at the top of a cell -> its kind, or None when the
        # transformer does not fork it (read from the source of the cell that made it).
        self.kinds: weakref.WeakKeyDictionary[types.FunctionType, Optional[str]] = (
            weakref.WeakKeyDictionary())
        self.hook: Any = None

    # -- switching on and off

    def load(self) -> None:
        from . import importhook

        self.shell.input_transformers_post.append(self.remember)
        self.shell.ast_transformers.append(self)
        self.shell.events.register("post_run_cell", self.after_cell)
        if not importhook.installed_hooks():
            self.hook = importhook.install()

    def unload(self) -> None:
        post = self.shell.input_transformers_post
        if self.remember in post:
            post.remove(self.remember)
        if self in self.shell.ast_transformers:
            self.shell.ast_transformers.remove(self)
        try:
            self.shell.events.unregister("post_run_cell", self.after_cell)
        except ValueError:
            pass
        if self.hook is not None:
            self.hook.uninstall()
            self.hook = None

    # -- IPython's hooks

    def remember(self, lines: list[str]) -> list[str]:
        """The last input transformer: keeps the text IPython is about to parse."""
        self.text = "".join(lines)
        return lines

    def visit(self, node: ast.AST) -> ast.AST:
        """The AST transformer: the rewritten tree of a cell (never raises)."""
        self.rewritten = None
        if not isinstance(node, ast.Module):
            return node
        try:
            return self._rewrite(node)
        except SyntaxError:
            return node  # IPython reports the user's syntax errors from the cell itself
        except Exception as why:  # noqa: BLE001 - never hide the user's code behind our bug
            from .runtime.errors import AutoforkWarning

            warnings.warn(AutoforkWarning(
                f"autofork could not rewrite this cell ({type(why).__name__}: {why}); "
                "it runs unchanged"), stacklevel=2)
            return node

    def after_cell(self, result: Any) -> None:
        """post_run_cell: remember the marks of the cell's defs; stop forks on an interrupt."""
        if isinstance(getattr(result, "error_in_exec", None), KeyboardInterrupt):
            stop_forks()
        namespace = self.shell.user_ns
        for name, kind in self.defs.items():
            value = namespace.get(name)
            if isinstance(value, types.FunctionType):
                self.kinds[value] = kind
        self.defs = {}

    # -- the rewrite

    def _rewrite(self, node: ast.Module) -> ast.Module:
        from . import importhook
        from . import transformer

        if importhook.disabled():
            return node
        source = self._source_of(node)
        names = self._names(node)
        self.defs = self._defs(node, _mark_imports(names) + source, transformer)
        rewritten = transformer.rewrite(source, _MODULE, self._resolver(), filename="<cell>",
                                        namespace=names)
        if rewritten is source or rewritten == source:
            if "proxy" in names.values():
                _show_last_value(node, node)
            return node
        self.rewritten = rewritten
        tree = transformer.parse_rewritten(source, rewritten, "<cell>")
        _show_last_value(node, tree)
        return tree

    def _source_of(self, node: ast.Module) -> str:
        """The text ``node`` was parsed from (IPython's magics parse their own snippets)."""
        text = self.text
        if text is not None:
            try:
                if ast.dump(ast.parse(text), include_attributes=True) == ast.dump(
                        node, include_attributes=True):
                    return text
            except (SyntaxError, ValueError):
                pass
        return ast.unparse(node) + "\n"

    def _resolver(self) -> Any:
        from . import importhook

        return importhook.make_resolver()

    @staticmethod
    def _defs(node: ast.Module, source: str, transformer: Any) -> dict[str, Optional[str]]:
        defined = [s.name for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
        if not defined:
            return {}
        marks = transformer.forkable_functions(source, _MODULE)
        return {name: marks.get(name) for name in defined}

    def _names(self, node: ast.Module) -> dict[str, str]:
        """What the namespace holds for each name the cell uses, where that matters."""
        from .runtime.proxy import ResultProxy

        namespace = self.shell.user_ns
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        names: dict[str, str] = {}
        resolve = None
        for name in used:
            if name not in namespace:
                continue
            value = namespace[name]
            if type(value) is ResultProxy:
                names[name] = "proxy"
            elif isinstance(value, types.ModuleType):
                names[name] = f"module:{value.__name__}"
            elif _mark_word(value) is not None:
                names[name] = f"mark:{_mark_word(value)}"
            elif isinstance(value, types.FunctionType) and getattr(value, "__autofork_implicit__", False):
                if resolve is None:
                    resolve = self._resolver()
                kind = self._kind_of(value, resolve)
                if kind is not None:
                    names[name] = kind
        return names

    def _kind_of(self, fn: types.FunctionType, resolve: Any) -> Optional[str]:
        """How the transformer forks ``fn``: as the source that defined it says."""
        if fn in self.kinds:
            return self.kinds[fn]
        module = getattr(fn, "__module__", None)
        home = sys.modules.get(module) if isinstance(module, str) else None
        if module != _MODULE and home is not None and getattr(home, fn.__name__, None) is fn:
            marks = resolve(module)
            if marks is not None:
                return marks.get(fn.__name__)
        # Defined before the extension was loaded, or made at run time: its live mark.
        from .runtime.marks import kind_of

        if fn.__code__.co_flags & (0x20 | 0x200):  # generators cannot be forked
            return None
        return "io" if kind_of(fn) == "io" else "cpu"


def _mark_word(value: Any) -> Optional[str]:
    """The name of the autofork mark ``value`` is, if it is one the transformer reads."""
    if not callable(value) or getattr(value, "__module__", None) != "autofork.runtime.marks":
        return None
    from .runtime import marks

    for word in ("implicit_fork", "cpu_bound_fork", "io_bound_fork", "io_bound"):
        if getattr(marks, word) is value:
            return word
    return None


def _mark_imports(names: dict[str, str]) -> str:
    """Import lines that bind the marks and autofork modules a cell takes from earlier cells.

    ``marked_functions`` reads marks from the source alone; put in front of a cell, these
    lines let it read ``@implicit_fork`` imported by an earlier cell (line numbers of the
    result do not matter: only names and kinds come out).
    """
    lines = []
    for name, what in names.items():
        if what.startswith("mark:"):
            lines.append(f"from autofork import {what[5:]} as {name}\n")
        elif what == "module:autofork":
            lines.append(f"import autofork as {name}\n")
    return "".join(lines)


def _is_joiner_with(node: ast.stmt) -> bool:
    """A ``with <runtime>.Joiner() as _autofork_jN:`` the rewriter put in."""
    if not isinstance(node, ast.With) or len(node.items) != 1:
        return False
    target = node.items[0].optional_vars
    return isinstance(target, ast.Name) and target.id.startswith("_autofork_j")


def _is_rewinding_try(node: ast.stmt) -> bool:
    """A ``try: <joiner with> finally: <names rebound>`` the rewriter put in."""
    return (isinstance(node, ast.Try) and not node.handlers and len(node.body) == 1
            and _is_joiner_with(node.body[0]))


def _show_last_value(original: ast.Module, tree: ast.Module) -> None:
    """Make IPython show the real value of the cell's last expression, after its joins.

    IPython shows the value of a cell's last statement when it is an expression.  The
    rewriter may have put that statement inside a ``with`` that joins the cell's forks
    (so IPython would show nothing) and made its value a proxy: the value is kept in
    ``_autofork_shown`` inside the block, and shown, unwrapped, after it.
    """
    if not original.body or not isinstance(original.body[-1], ast.Expr):
        return
    last = original.body[-1]
    holder, node = tree.body, tree.body[-1]
    while (_is_joiner_with(node) or _is_rewinding_try(node)) and node.body:
        holder, node = node.body, node.body[-1]  # type: ignore[attr-defined]
    if not isinstance(node, ast.Expr) or node.lineno != last.lineno:
        return
    unwrap = ast.parse(_UNWRAP, mode="eval").body
    for part in ast.walk(unwrap):
        ast.copy_location(part, node)
    if holder is tree.body:
        node.value = ast.copy_location(ast.Call(unwrap, [node.value], []), node.value)
        ast.fix_missing_locations(node)
        return
    keep = ast.Assign(targets=[ast.Name(_SHOWN, ast.Store())], value=node.value)
    holder[-1] = ast.copy_location(keep, node)
    show = ast.Expr(ast.Call(unwrap, [ast.Name(_SHOWN, ast.Load())], []))
    tree.body.append(ast.copy_location(show, node))
    ast.fix_missing_locations(tree)


def stop_forks() -> None:
    """The kernel was interrupted: kill the running forks; the next fork starts new workers.

    The calls killed this way fail, and nobody will look at them: they are marked seen,
    so that they are not reported as lost failures at the kernel's exit.
    """
    from .runtime import engine, output
    from .runtime.task import unobserved_failures

    engine.shutdown(kill=True)
    for task in unobserved_failures():
        task.mark_observed()
    # The killed calls never end: what the cell wrote behind them goes out now, and
    # their failures hold back nothing (see output: a failure never raised).
    output.flush(force=True)


_loaded: dict[int, _Extension] = {}


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext autofork``: rewrite the cells that follow, as the import hook would."""
    if id(ipython) in _loaded:
        return
    extension = _loaded[id(ipython)] = _Extension(ipython)
    extension.load()


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext autofork``: cells run as typed again (the workers stay for ``fork``)."""
    extension = _loaded.pop(id(ipython), None)
    if extension is not None:
        extension.unload()
