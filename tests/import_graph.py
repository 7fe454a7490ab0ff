"""The import graph of a source tree, read with `ast` (no code runs): every `import` of a package
module, at module level or inside a function, resolved to the module it names.

>>> graph = import_graph(Path("src/slimkit"))
>>> graph.edges["slimkit.io.artifact"]          # {"slimkit.core.errors", ...}
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Graph:
    modules: set[str] = field(default_factory=set)
    edges: dict[str, set[str]] = field(default_factory=dict)
    # (module, line, imported module) of imports made inside a function body
    function_level: list[tuple[str, int, str]] = field(default_factory=list)

    def cycles(self) -> list[list[str]]:
        """Strongly connected components with more than one module (or a self-import)."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []
        counter = 0
        for root in sorted(self.modules):
            if root in index:
                continue
            work = [(root, iter(sorted(self.edges.get(root, ()))))]
            index[root] = low[root] = counter
            counter += 1
            stack.append(root)
            on_stack.add(root)
            while work:
                node, children = work[-1]
                child = next(children, None)
                if child is not None:
                    if child not in index:
                        index[child] = low[child] = counter
                        counter += 1
                        stack.append(child)
                        on_stack.add(child)
                        work.append((child, iter(sorted(self.edges.get(child, ())))))
                    elif child in on_stack:
                        low[node] = min(low[node], index[child])
                    continue
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1 or node in self.edges.get(node, ()):
                        found.append(sorted(comp))
        return found


def _module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    names: list[str] = []
    if isinstance(node, ast.Import):   # `import a.b.c` also binds (and so uses) the top package `a`
        names = [alias.name for alias in node.names]
        names += [alias.name.split(".")[0] for alias in node.names if alias.asname is None and "." in alias.name]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]
    out = []
    for name in names:
        while name and name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in known:
            out.append(name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _visit(node: ast.AST, in_function: bool, module: str, is_package: bool, graph: Graph) -> None:
    edges = graph.edges[module]
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                _visit(sub, in_function, module, is_package, graph)
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            for target in _targets(child, module, is_package, graph.modules):
                if target == module:
                    continue
                edges.add(target)
                if in_function:
                    graph.function_level.append((module, child.lineno, target))
            continue
        inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _visit(child, inner, module, is_package, graph)


def import_graph(root: Path) -> Graph:
    """Edges between the modules of the package at `root` (imports under `if TYPE_CHECKING:` excluded)."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = Graph(modules=set(files))
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph.edges.setdefault(module, set())
        _visit(tree, False, module, path.name == "__init__.py", graph)
    return graph
