"""A second check of a rebuilt graph: the Python source torch.fx generates for it, read before it runs.

`slimkit.surgery.graph_load` checks the JSON so that fx can only generate calls to allowlisted
operations; this module verifies that on the generated `forward` itself, with Python's `ast`, before
it is compiled. Statements may only be assignments and the return; expressions only names,
constants, containers, subscripts, operators, and calls of: a layer of the model (`self.a.b(...)`,
`getattr(self.a, "0")(...)`), an allowlisted function (`slimkit.surgery.graph_ops.FUNCTIONS`, found by
identity through the generated globals), an allowlisted tensor method on a value, `slice` or
`torch.device`. Attributes may be a layer path under `self`, an allowlisted tensor attribute or
method, a torch dtype; nothing with a double underscore. A graph whose code has anything else is
refused, so a gap in the JSON checks cannot turn into code from the file.

>>> audit(graph.python_code("self"))      # raises SlimFormatError, or returns None
"""

from __future__ import annotations

import ast
import builtins
import re

import torch

from slimkit.core.errors import SlimFormatError
from slimkit.surgery.graph_ops import FUNCTIONS, METHODS, TENSOR_ATTRS

_ALLOWED_FNS = {id(fn) for fn in FUNCTIONS.values()}
_NODES = (ast.Module, ast.FunctionDef, ast.arguments, ast.arg, ast.Assign, ast.Return, ast.Name, ast.Load,
          ast.Store, ast.Attribute, ast.Call, ast.keyword, ast.Constant, ast.Tuple, ast.List, ast.Dict,
          ast.Subscript, ast.Slice, ast.BinOp, ast.UnaryOp, ast.Compare, ast.operator, ast.unaryop, ast.cmpop)
_PART = re.compile(r"[A-Za-z0-9_]{1,100}")
_BUILTINS = ("slice", "getattr", "Ellipsis")   # builtins the generated code may name


def _refuse(why: str) -> SlimFormatError:
    return SlimFormatError(f"graph base: the generated forward {why}")


def audit(code: object) -> None:
    """Check fx's `PythonCode` (`.src`, `.globals`) as described above; SlimFormatError if it fails."""
    src, glob = code.src, code.globals  # type: ignore[attr-defined]
    tree = ast.parse(src)
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef) or tree.body[0].name != "forward":
        raise _refuse("is not one function")
    fn = tree.body[0]
    local = {a.arg for a in fn.args.args} | {t.id for st in fn.body if isinstance(st, ast.Assign)
                                             for t in st.targets if isinstance(t, ast.Name)}
    _Audit(glob, local).check(fn)


class _Audit:
    def __init__(self, glob: dict, local: set[str]):
        self.glob, self.local = glob, local

    def check(self, fn: ast.FunctionDef) -> None:
        if fn.decorator_list or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.returns:
            raise _refuse("has an unusual signature")
        for arg in fn.args.defaults:
            if not isinstance(arg, ast.Constant):
                raise _refuse("has a default that is not a constant")
        for statement in fn.body:
            if not isinstance(statement, ast.Assign | ast.Return):
                raise _refuse(f"holds a {type(statement).__name__}")
            self.visit(statement)

    def visit(self, node: ast.AST) -> None:
        if not isinstance(node, _NODES) or isinstance(node, ast.FunctionDef | ast.Module):
            raise _refuse(f"holds a {type(node).__name__}")
        if isinstance(node, ast.Name):
            self.name(node.id)
        elif isinstance(node, ast.Attribute):
            self.attribute(node)
            inner: ast.expr = node
            while isinstance(inner, ast.Attribute):   # the chain is checked whole: visit only its root
                inner = inner.value
            self.visit(inner)
            return
        elif isinstance(node, ast.Call):
            self.call(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def name(self, name: str) -> None:
        if name.startswith("__") or not (name in self.local or name in self.glob or name in _BUILTINS):
            raise _refuse(f"uses an unknown name {name[:40]!r}")

    def attribute(self, node: ast.Attribute) -> None:
        if node.attr.startswith("__"):
            raise _refuse(f"reads attribute {node.attr[:40]!r}")
        root, path = _chain(node)
        if root == "self":
            if not all(_PART.fullmatch(p) for p in path):
                raise _refuse("names a layer path that is not checked")
        elif root in self.local:
            if len(path) != 1 or (path[0] not in TENSOR_ATTRS and path[0] not in METHODS):
                raise _refuse(f"reads {'.'.join(path)[:40]!r} of a value")
        elif root in self.glob:
            target = _resolve(self.glob[root], path)
            if id(target) not in _ALLOWED_FNS and not isinstance(target, torch.dtype):
                raise _refuse(f"reads {root}.{'.'.join(path)[:60]}, which is not allowed")
        elif root is not None or not isinstance(node.value, ast.Call) or not self.layer_getattr(node.value) \
                or not all(_PART.fullmatch(p) for p in path):
            raise _refuse("reads an attribute of something not allowed")

    def call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id == "slice" or (func.id == "getattr" and self.layer_getattr(node)):
                return
            target = self.glob.get(func.id)
            if func.id in self.local or (id(target) not in _ALLOWED_FNS and target is not torch.device):
                raise _refuse(f"calls {func.id[:40]!r}, which is not allowed")
        elif isinstance(func, ast.Call):
            if not self.layer_getattr(func):
                raise _refuse("calls the result of a call")
        elif not isinstance(func, ast.Attribute):
            raise _refuse("calls something not allowed")
        # an Attribute callee is checked by `attribute` (layer, method or allowlisted function)

    def layer_getattr(self, node: ast.Call) -> bool:
        """`getattr(self.a, "0")`: a layer whose path part is not an identifier."""
        if not (isinstance(node.func, ast.Name) and node.func.id == "getattr" and "getattr" not in self.local
                and self.glob.get("getattr", builtins.getattr) is builtins.getattr
                and len(node.args) == 2 and not node.keywords):
            return False
        obj, attr = node.args
        if not (isinstance(attr, ast.Constant) and isinstance(attr.value, str) and _PART.fullmatch(attr.value)):
            return False
        if isinstance(obj, ast.Call):
            return self.layer_getattr(obj)
        if isinstance(obj, ast.Name):
            return obj.id == "self"
        root, path = _chain(obj) if isinstance(obj, ast.Attribute) else (None, [])
        return root == "self" or (root is None and isinstance(obj, ast.Attribute) and isinstance(obj.value, ast.Call)
                                  and self.layer_getattr(obj.value))


def _chain(node: ast.Attribute) -> tuple[str | None, list[str]]:
    """("root", ["a", "b"]) for `root.a.b`; (None, parts) when the chain does not start at a name."""
    parts = []
    cur: ast.expr = node
    while isinstance(cur, ast.Attribute):
        parts.append(cur.attr)
        cur = cur.value
    return (cur.id if isinstance(cur, ast.Name) else None), parts[::-1]


def _resolve(obj: object, path: list[str]) -> object:
    for part in path:
        if part.startswith("_"):
            return None
        obj = getattr(obj, part, None)
    return obj
