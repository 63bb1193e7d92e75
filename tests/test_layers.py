"""The runtime's layers, read from the source with ``ast``: each module imports only from
the layers below it (and from its own layer without a cycle), and no module uses another
module's private names.

The layers, bottom up (docs/architecture.md tells what each one does)::

    0  errors serialize marks config stats plain   no autofork imports but each other
       output notices freshness context changes
    1  task executor                               the future, and what runs it
    2  proxy dataflow lazy settle                  values that are not there yet
    3  processes worker threads aio dask_backend   the pools and engines (and folds, the
       folds                                       executor of a loop's reductions)
    4  engine                                      which of them are running; their end
    5  api granularity implicit                    what user code and rewritten code call

Imports under ``if TYPE_CHECKING:`` are for annotations only (never run) and are not
counted.  Function-level imports are counted: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autofork"

LAYERS = [
    {"errors", "serialize", "marks", "config", "stats", "plain", "output", "notices",
     "freshness", "context", "changes"},
    {"task", "executor"},
    {"proxy", "dataflow", "lazy", "settle"},
    {"processes", "worker", "template", "threads", "aio", "dask_backend", "folds"},
    {"engine"},
    {"api", "granularity", "implicit"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Modules of the package outside the runtime that the runtime may use: leaves that import
# nothing of autofork (the rest, transformer, importhook, the CLI, build on the runtime).
BELOW_RUNTIME = {"_phases"}


def _modules() -> dict[str, Path]:
    """Every module of the package, by dotted name relative to it (``runtime.api``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST):
    """``ast.walk`` that leaves out ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking(child):
            yield from (n for other in child.orelse for n in [other, *_walk(other)])
            continue
        yield child
        yield from _walk(child)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The dotted name (relative to the package) that a ``from ... import`` reads from."""
    if node.level == 0:
        name = node.module or ""
        return name[len("autofork."):] if name.startswith("autofork.") else (
            "" if name == "autofork" else "!" + name)
    package = module.split(".")
    if not MODULES[module].name == "__init__.py":
        package = package[:-1]
    base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(source: str, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names taken from it) for each import of the package."""
    found = []
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.startswith("!"):
                continue
            names = [alias.name for alias in node.names]
            submodules = [n for n in names if f"{target}.{n}".strip(".") in MODULES]
            if submodules:
                found += [(node.lineno, f"{target}.{n}".strip("."), []) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest:
                found.append((node.lineno, target, rest))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("autofork."):
                    found.append((node.lineno, alias.name[len("autofork."):], []))
    return found


def private_uses(source: str, module: str) -> list[str]:
    """Private names of other modules of the package that ``source`` uses."""
    tree = ast.parse(source)
    problems = []
    aliases: dict[str, str] = {}  # local name -> module of the package it stands for
    for line, target, names in imports(source, module):
        for name in names:
            if name.startswith("_") and not name.startswith("__") and target != module:
                problems.append(f"line {line}: from {target} import {name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            for alias in node.names:
                full = f"{target}.{alias.name}".strip(".")
                if full in MODULES:
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases and node.attr.startswith("_")
                and not node.attr.startswith("__") and aliases[node.value.id] != module):
            problems.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return problems


def _runtime_name(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) == 2 and parts[0] == "runtime" else None


def layer_problems(source: str, module: str) -> list[str]:
    """Imports of ``module`` that go up a layer, or into a module not given a layer."""
    name = _runtime_name(module)
    if name is None:
        return []
    if name not in RANK:
        return [f"runtime.{name} has no layer in tests/test_layers.py: give it one"]
    problems = []
    for line, target, _ in imports(source, module):
        other = _runtime_name(target)
        if other is None:
            if (target.split(".")[0] != "runtime" and target in MODULES
                    and target not in BELOW_RUNTIME):
                problems.append(f"line {line}: runtime imports autofork.{target}")
            continue
        if other not in RANK:
            problems.append(f"line {line}: imports runtime.{other}, which has no layer")
        elif RANK[other] > RANK[name]:
            problems.append(f"line {line}: imports runtime.{other} (layer {RANK[other]}) "
                            f"from layer {RANK[name]}")
    return problems


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        name = _runtime_name(module)
        if name is None:
            continue
        graph[name] = {other for _, target, _ in imports(path.read_text(), module)
                       if (other := _runtime_name(target)) and other != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph``, or [] if there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == 1:
                return stack[stack.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_it(module):
    assert layer_problems(MODULES[module].read_text(), module) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module):
    assert private_uses(MODULES[module].read_text(), module) == []


def test_the_runtime_imports_have_no_cycle():
    assert find_cycle(_graph()) == []


def test_what_the_runtime_uses_from_outside_it_imports_nothing_of_autofork():
    for name in BELOW_RUNTIME:
        assert imports(MODULES[name].read_text(), name) == []


def test_every_runtime_module_has_a_layer():
    runtime = {_runtime_name(m) for m in MODULES} - {None}
    assert runtime <= set(RANK) | {""}, runtime - set(RANK)
    assert set(RANK) <= runtime, set(RANK) - runtime  # no layer names a module that is gone


# -- the checks themselves can fail ------------------------------------------------------

def test_an_upward_import_is_found():
    assert layer_problems("from .api import fork\n", "runtime.task") == [
        "line 1: imports runtime.api (layer 5) from layer 1"]
    assert layer_problems("def f():\n    from . import engine\n", "runtime.processes") == [
        "line 2: imports runtime.engine (layer 4) from layer 3"]
    assert layer_problems("import autofork.runtime.granularity\n", "runtime.engine") != []
    assert layer_problems("from .. import importhook\n", "runtime.api") == [
        "line 1: runtime imports autofork.importhook"]
    typing_only = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .api import x\n"
    assert layer_problems(typing_only, "runtime.task") == []


def test_a_private_name_of_another_module_is_found():
    assert private_uses("from .granularity import _inline\n", "runtime.implicit") == [
        "line 1: from runtime.granularity import _inline"]
    assert private_uses("from . import task\ntask._live.add(1)\n", "runtime.api") == [
        "line 2: task._live"]
    assert private_uses("from .processes import _unpicklable as u\n",
                        "runtime.dask_backend") != []
    assert private_uses("from . import _clirun\n_clirun.run()\n", "__main__") == []


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
