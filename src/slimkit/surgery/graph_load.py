"""Rebuild a captured graph (`slimkit.surgery.graph`) from JSON that came from a file.

Everything is checked before torch.fx sees it: sizes against fixed limits, every name that the
generated code holds as an identifier (placeholders, keyword arguments, module paths) against
`[A-Za-z_][A-Za-z0-9_]*` (digits allowed for module path parts), every function against the
allowlist (`slimkit.surgery.graph_ops.FUNCTIONS`), every method against `METHODS`, every module
against the specs `from_spec` knows, every tensor against its declared shape and dtype. Any
problem is one `SlimFormatError` line. Weights are left on the meta device (the loader assigns
the file's tensors).

>>> net = graph_module(data, where="model.slim")
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Any

import torch
from torch import fx, nn

from slimkit.core.errors import SlimFormatError
from slimkit.surgery.graph_audit import audit
from slimkit.surgery.graph_ops import DTYPES, FUNCTIONS, METHODS, TENSOR_ATTRS
from slimkit.surgery.specs import from_spec

MAX_NODES = 20_000
MAX_MODULES = 10_000
MAX_TENSORS = 10_000
MAX_NAME = 300          # characters of a dotted module or tensor path
MAX_STRING = 256        # characters of a string argument
MAX_DEPTH = 16          # nesting of one argument (tuples in lists in dicts ...)
MAX_ITEMS = 4096        # values in the arguments of one node
MAX_DIMS = 16
MAX_NUMEL = 1 << 48
OPS = ("placeholder", "get_attr", "call_module", "call_function", "call_method", "output")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
_PART = re.compile(r"[A-Za-z0-9_]{1,100}")
_DEVICE = re.compile(r"(cpu|cuda|meta|mps|xpu)(:[0-9]{1,3})?")
# names the generated code uses for globals: an input named like one would shadow it
_RESERVED = frozenset({"self", "torch", "getattr", "operator", "builtins", "inf", "nan", "device", "math",
                       "fx_pytree", "pytree", "NoneType", "slice", "Ellipsis"})
_SPECIAL = ("node", "tuple", "slice", "dict", "dtype", "device", "float", "ellipsis")


def _fail(where: str, msg: str) -> SlimFormatError:
    return SlimFormatError(f"{where}: {msg}")


def _short(value: object) -> str:
    return repr(str(value)[:60])


def graph_module(data: object, where: str = "graph base") -> fx.GraphModule:
    """An `fx.GraphModule` (meta weights) from graph JSON; SlimFormatError if it is malformed."""
    if not isinstance(data, dict) or set(data) - {"v", "modules", "tensors", "nodes"}:
        raise _fail(where, "must be an object with 'v', 'modules', 'tensors' and 'nodes'")
    if type(data.get("v")) is not int or data.get("v") != 1:
        raise _fail(where, f"version {_short(data.get('v'))} is not supported (this slimkit reads 1)")
    modules, tensors, nodes = data.get("modules", {}), data.get("tensors", {}), data.get("nodes")
    if not isinstance(modules, dict) or len(modules) > MAX_MODULES:
        raise _fail(where, f"'modules' must be an object of at most {MAX_MODULES} entries")
    if not isinstance(tensors, dict) or len(tensors) > MAX_TENSORS:
        raise _fail(where, f"'tensors' must be an object of at most {MAX_TENSORS} entries")
    if not isinstance(nodes, list) or not 1 <= len(nodes) <= MAX_NODES:
        raise _fail(where, f"'nodes' must be a list of 1 to {MAX_NODES} nodes")
    try:
        gm = fx.GraphModule(nn.Module(), fx.Graph())
        tree = _Tree(gm, where)
        for name, spec in modules.items():
            tree.put(name, _module(spec, name, where))
        for name, entry in tensors.items():
            tree.put(name, _tensor(entry, name, where))
        graph = _Nodes(tree, modules, where).build(nodes)
        graph.lint()
        audit(graph.python_code("self"))   # the source fx generates, read before it is compiled
        gm.graph = graph            # generates forward() from the checked graph
    except SlimFormatError:
        raise
    except (SyntaxError, TypeError, ValueError, KeyError, AttributeError, RuntimeError, IndexError,
            ArithmeticError, RecursionError) as exc:   # checked above as far as we know; never a traceback
        why = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise _fail(where, f"cannot be rebuilt: {type(exc).__name__}: {why}") from None
    return gm


def _module(spec: object, name: str, where: str) -> nn.Module:
    try:
        return from_spec(spec)
    except SlimFormatError as exc:
        raise _fail(where, f"module {_short(name)}: {exc}") from None


def _tensor(entry: object, name: str, where: str) -> torch.Tensor:
    if not isinstance(entry, dict) or set(entry) != {"shape", "dtype", "param"}:
        raise _fail(where, f"tensor {_short(name)} must have exactly 'shape', 'dtype' and 'param'")
    shape, dtype, param = entry["shape"], entry["dtype"], entry["param"]
    if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape) \
            or math.prod(shape) > MAX_NUMEL:
        raise _fail(where, f"tensor {_short(name)} has an invalid shape")
    if not isinstance(dtype, str) or dtype not in DTYPES or type(param) is not bool:
        raise _fail(where, f"tensor {_short(name)} has an invalid dtype or 'param'")
    t = torch.empty(shape, dtype=DTYPES[dtype], device="meta")
    return nn.Parameter(t, requires_grad=t.is_floating_point()) if param else t


class _Tree:
    """Places modules and tensors at dotted paths of the GraphModule, in containers made here only."""

    def __init__(self, gm: fx.GraphModule, where: str):
        self.gm, self.where = gm, where
        self.containers = {id(gm)}

    def check(self, name: object) -> list[str]:
        parts = name.split(".") if isinstance(name, str) and len(name) <= MAX_NAME else []
        if not parts or not all(_PART.fullmatch(p) and not p.startswith("__") and not hasattr(fx.GraphModule, p)
                                for p in parts):
            raise _fail(self.where, f"invalid module or tensor path {_short(name)}")
        return parts

    def put(self, name: str, value: nn.Module | torch.Tensor) -> None:
        *path, last = self.check(name)
        parent: nn.Module = self.gm
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                if part in parent._parameters or part in parent._buffers:
                    raise _fail(self.where, f"path {_short(name)} passes through a tensor")
                child = nn.Module()
                parent.add_module(part, child)
                self.containers.add(id(child))
            elif id(child) not in self.containers:
                raise _fail(self.where, f"path {_short(name)} lies inside a layer")
            parent = child
        if last in parent._modules or last in parent._parameters or last in parent._buffers:
            raise _fail(self.where, f"path {_short(name)} is given twice")
        if isinstance(value, nn.Module):
            parent.add_module(last, value)
        elif isinstance(value, nn.Parameter):
            parent.register_parameter(last, value)
        else:
            parent.register_buffer(last, value)

    def tensor(self, name: object) -> bool:
        """Whether `name` is a parameter or buffer of the rebuilt tree (looked up in its dicts only)."""
        if not isinstance(name, str) or len(name) > MAX_NAME:
            return False
        *path, last = name.split(".")
        owner: nn.Module | None = self.gm
        for part in path:
            owner = owner._modules.get(part) if owner is not None else None
        return owner is not None and (last in owner._parameters or last in owner._buffers)


class _Nodes:
    """Checks node after node and adds each to a new fx.Graph."""

    def __init__(self, tree: _Tree, modules: dict, where: str):
        self.tree, self.modules, self.where = tree, modules, where
        self.graph = fx.Graph()
        self.made: dict[str, fx.Node] = {}
        self.inputs: set[str] = set()
        self.defaults = False
        self.items = 0

    def fail(self, i: int, msg: str) -> SlimFormatError:
        return _fail(self.where, f"node #{i}: {msg}")

    def build(self, nodes: list) -> fx.Graph:
        for i, node in enumerate(nodes):
            if not isinstance(node, dict) or set(node) - {"op", "name", "target", "args", "kwargs"}:
                raise self.fail(i, "must be an object with op, name, target, args, kwargs")
            op, name = node.get("op"), node.get("name")
            if op not in OPS:
                raise self.fail(i, f"unknown op {_short(op)}")
            if not isinstance(name, str) or not _IDENT.fullmatch(name) or name in self.made:
                raise self.fail(i, f"name {_short(name)} is not a new identifier")
            if (op == "output") != (i == len(nodes) - 1):
                raise self.fail(i, "the last node, and only it, must be the output")
            self.items = 0
            args, kwargs = node.get("args", []), node.get("kwargs", {})
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise self.fail(i, "args must be a list and kwargs an object")
            args = tuple(self.arg(a, i, 0) for a in args)
            kwargs = {self.keyword(k, i): self.arg(v, i, 0) for k, v in kwargs.items()}
            target = self.target(op, node.get("target"), args, kwargs, i)
            self.made[name] = self.graph.create_node(op, target, args, kwargs, name=name)
        return self.graph

    def keyword(self, key: object, i: int) -> str:
        if not isinstance(key, str) or not _IDENT.fullmatch(key) or keyword.iskeyword(key):
            raise self.fail(i, f"keyword {_short(key)} is not an identifier")
        return key

    def target(self, op: str, target: object, args: tuple, kwargs: dict, i: int) -> Any:
        if op == "output":
            if target is not None or len(args) != 1 or kwargs:
                raise self.fail(i, "the output takes one argument")
            return "output"
        if not isinstance(target, str):
            raise self.fail(i, "target must be a string")
        if op == "placeholder":
            return self.placeholder(target, args, kwargs, i)
        if op == "get_attr":
            self.tree.check(target)
            if args or kwargs or not self.tree.tensor(target):
                raise self.fail(i, f"get_attr {_short(target)} names no tensor of the model")
            return target
        if op == "call_module":
            if target not in self.modules:
                raise self.fail(i, f"call_module {_short(target)} names no module of the graph")
            return target
        if op == "call_method":
            if target not in METHODS or not args or not isinstance(args[0], fx.Node):
                raise self.fail(i, f"method {_short(target)} is not allowed, or has no tensor to call it on")
            return target
        fn = FUNCTIONS.get(target)
        if fn is None:
            raise self.fail(i, f"function {_short(target)} is not allowed")
        if target == "getattr" and (len(args) != 2 or kwargs or not isinstance(args[0], fx.Node)
                                    or not isinstance(args[1], str) or args[1] not in TENSOR_ATTRS):
            raise self.fail(i, f"getattr may only read {', '.join(sorted(TENSOR_ATTRS))} of a value")
        return fn

    def placeholder(self, target: str, args: tuple, kwargs: dict, i: int) -> str:
        if not _IDENT.fullmatch(target) or keyword.iskeyword(target) or target in _RESERVED \
                or target.startswith("_") or target in self.inputs:
            raise self.fail(i, f"input name {_short(target)} is not allowed")
        found: list[fx.Node] = []
        fx.node.map_arg(args, found.append)
        if kwargs or len(args) > 1 or found:
            raise self.fail(i, "an input takes at most one default value")
        if self.defaults and not args:
            raise self.fail(i, "an input without default follows one with a default")
        self.defaults = self.defaults or bool(args)
        self.inputs.add(target)
        return target

    def arg(self, a: Any, i: int, depth: int) -> Any:
        self.items += 1
        if depth > MAX_DEPTH or self.items > MAX_ITEMS:
            raise self.fail(i, f"arguments nest deeper than {MAX_DEPTH} or hold more than {MAX_ITEMS} values")
        if a is None or isinstance(a, bool | int):
            return a
        if isinstance(a, float):
            if not math.isfinite(a):
                raise self.fail(i, "a non-finite number must be written {\"float\": ...}")
            return a
        if isinstance(a, str):
            if len(a) > MAX_STRING:
                raise self.fail(i, f"a string argument is longer than {MAX_STRING} characters")
            return a
        if isinstance(a, list):
            return [self.arg(v, i, depth + 1) for v in a]
        if not isinstance(a, dict) or len(a) != 1 or next(iter(a)) not in _SPECIAL:
            raise self.fail(i, f"argument {_short(a)} is not a value a graph may hold")
        kind, value = next(iter(a.items()))
        return self.special(kind, value, i, depth)

    def special(self, kind: str, value: Any, i: int, depth: int) -> Any:
        if kind == "node":
            if not isinstance(value, str) or value not in self.made:
                raise self.fail(i, f"refers to {_short(value)}, which is not an earlier node")
            return self.made[value]
        if kind == "tuple" and isinstance(value, list):
            return tuple(self.arg(v, i, depth + 1) for v in value)
        if kind == "slice" and isinstance(value, list) and len(value) == 3:
            return slice(*(self.arg(v, i, depth + 1) for v in value))
        if kind == "dict" and isinstance(value, dict):
            return {self.literal_key(k, i): self.arg(v, i, depth + 1) for k, v in value.items()}
        if kind == "dtype" and isinstance(value, str) and value in DTYPES:
            return DTYPES[value]
        if kind == "device" and isinstance(value, str) and _DEVICE.fullmatch(value):
            return torch.device(value)
        if kind == "float" and isinstance(value, str) and value in ("inf", "-inf", "nan"):
            return float(value)
        if kind == "ellipsis" and value is None:
            return Ellipsis
        raise self.fail(i, f"invalid {kind} argument {_short(value)}")

    def literal_key(self, key: str, i: int) -> str:
        if len(key) > MAX_STRING:
            raise self.fail(i, f"a dictionary key is longer than {MAX_STRING} characters")
        return key
