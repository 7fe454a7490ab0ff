"""A user model's architecture as JSON: traced with torch.fx at save time, rebuilt without its source.

`capture(model)` traces `model` (in eval mode) with torch.fx, keeping plain torch layers
(`slimkit.surgery.torch_layers`) and slimkit's runtime modules as whole modules, and returns the
graph as JSON: the modules it calls (by their specs), the tensors it reads directly (shape and dtype
only; the values are the file's tensors), and its nodes. `graph_module(data)` checks that JSON
against fixed limits and the allowlist of `slimkit.surgery.graph_ops`, and rebuilds an
`fx.GraphModule` with uninitialised (meta) weights. No pickle, no import, no name looked up from the
file: every string the generated code holds is an identifier checked here or a quoted literal.

>>> data, why = capture(model)          # (None, "torch.fx cannot trace ...") when it cannot
>>> net = graph_module(json.loads(json.dumps(data)))

Format (docs/format.md, "graph base"): {"v": 1, "modules": {name: spec}, "tensors": {name:
{"shape", "dtype", "param"}}, "nodes": [{"op", "name", "target", "args", "kwargs"}]}; an argument is
a JSON scalar, a list, or one of {"node": name}, {"tuple": [...]}, {"slice": [a, b, c]},
{"dict": {...}}, {"dtype": name}, {"device": name}, {"float": "inf"|"-inf"|"nan"}, {"ellipsis": null}.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch import fx, nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.surgery.graph_load import graph_module
from slimkit.surgery.graph_ops import DTYPES, METHODS, TENSOR_ATTRS, name_of
from slimkit.surgery.specs import MODULE_TYPES, to_spec
from slimkit.surgery.torch_layers import PLAIN

VERSION = 1
LEAF_TYPES = tuple(cls for cls, _, _ in PLAIN.values())
__all__ = ["VERSION", "capture", "graph_module"]


class Uncapturable(SlimError):
    """Why a model's architecture cannot be stored as a graph (one line)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class _LeafTracer(fx.Tracer):
    """fx tracer that keeps describable layers whole and refuses tensors the file would not hold."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in LEAF_TYPES or getattr(type(m), "slim_type", None) in MODULE_TYPES:
            return True
        return super().is_leaf_module(m, qualname)

    def trace(self, root: nn.Module, concrete_args: dict | None = None) -> fx.Graph:  # type: ignore[override]
        pairs = [*root.named_parameters(remove_duplicate=False), *root.named_buffers(remove_duplicate=False)]
        self.known = {id(t) for _, t in pairs}
        return super().trace(root, concrete_args)

    def create_arg(self, a: Any) -> Any:
        # fx would store any other tensor as a new attribute of the user's model (`_tensor_constant0`)
        if isinstance(a, torch.Tensor) and id(a) not in self.known and a not in self.tensor_attrs:
            raise Uncapturable(f"forward uses a tensor of shape {list(a.shape)} that is neither a parameter "
                               "nor a buffer of the model")
        return super().create_arg(a)


def capture(model: nn.Module) -> tuple[dict | None, str]:
    """`model`'s architecture as graph JSON, or (None, why it cannot be captured)."""
    try:
        return _capture(model), ""
    except Uncapturable as exc:
        return None, str(exc)


def _capture(model: nn.Module) -> dict:
    tracer = _LeafTracer()
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        graph = tracer.trace(model)
    except Uncapturable:
        raise
    except Exception as exc:  # fx raises many kinds (TraceError, TypeError, NotImplementedError, ...)
        raise Uncapturable(f"torch.fx cannot trace {type(model).__name__}: {_first_line(exc)}") from None
    finally:
        for m, mode in modes:
            m.training = mode
    state = model.state_dict(keep_vars=True)
    modules = {n.target: _describe(model, n.target) for n in graph.nodes if n.op == "call_module"}
    tensors: dict[str, dict] = {}
    for key, t in state.items():
        if any(key.startswith(name + ".") for name in modules):
            continue
        owner = _leaf_owner(model, key, tracer)
        if owner is not None:
            modules[owner] = _describe(model, owner)
        else:
            tensors[key] = {"shape": list(t.shape), "dtype": _dtype_name(t.dtype, key),
                            "param": isinstance(t, nn.Parameter)}
    nodes = [_encode_node(n, state) for n in graph.nodes]
    data = json.loads(json.dumps({"v": VERSION, "modules": modules, "tensors": tensors, "nodes": nodes}))
    _verify(data, state)
    return data


def _describe(model: nn.Module, name: str) -> dict:
    module = model.get_submodule(name)
    try:
        return to_spec(module)
    except SlimError as exc:
        raise Uncapturable(f"layer {name} ({type(module).__name__}) cannot be described: {_first_line(exc)}") from None


def _leaf_owner(model: nn.Module, key: str, tracer: _LeafTracer) -> str | None:
    """The outermost layer kept whole that holds state-dict entry `key` (one forward never called)."""
    parts = key.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if tracer.is_leaf_module(model.get_submodule(name), name):
            return name
    return None


def _dtype_name(dtype: torch.dtype, where: str) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise Uncapturable(f"{where} has dtype {name}, which a graph cannot record")
    return name


def _encode_node(node: fx.Node, state: dict) -> dict:
    out: dict[str, Any] = {"op": node.op, "name": node.name}
    target = node.target
    if node.op == "call_function":
        name = name_of(target)
        if name is None:
            qual = f"{getattr(target, '__module__', None) or ''}.{getattr(target, '__name__', repr(target))}"
            raise Uncapturable(f"forward calls {qual.strip('.')}, which is not in slimkit's list of graph "
                               "operations")
        if name == "getattr" and not (len(node.args) == 2 and node.args[1] in TENSOR_ATTRS):
            raise Uncapturable(f"forward reads attribute {str(node.args[1:])[:60]} of a value; only "
                               f"{', '.join(sorted(TENSOR_ATTRS))} are recorded")
        target = name
    elif node.op == "call_method" and target not in METHODS:
        raise Uncapturable(f"forward calls tensor method {target!r}, which is not in slimkit's list of "
                           "graph operations")
    elif node.op == "get_attr" and target not in state:
        raise Uncapturable(f"forward reads {target}, which is not saved with the model (not a parameter or "
                           "a persistent buffer)")
    if node.op != "output":
        out["target"] = target
    if node.args:
        out["args"] = [_encode_arg(a) for a in node.args]
    if node.kwargs:
        out["kwargs"] = {k: _encode_arg(v) for k, v in node.kwargs.items()}
    return out


def _encode_arg(a: Any) -> Any:
    if isinstance(a, fx.Node):
        return {"node": a.name}
    if a is None or isinstance(a, bool | int | str):
        return a
    if isinstance(a, float):
        return a if math.isfinite(a) else {"float": str(a)}
    if isinstance(a, list):
        return [_encode_arg(v) for v in a]
    if isinstance(a, tuple) and not hasattr(a, "_fields"):
        return {"tuple": [_encode_arg(v) for v in a]}
    if isinstance(a, slice):
        return {"slice": [_encode_arg(a.start), _encode_arg(a.stop), _encode_arg(a.step)]}
    if isinstance(a, dict) and all(isinstance(k, str) for k in a):
        return {"dict": {k: _encode_arg(v) for k, v in a.items()}}
    if isinstance(a, torch.dtype):
        return {"dtype": _dtype_name(a, "an argument")}
    if isinstance(a, torch.device):
        return {"device": str(a)}
    if a is Ellipsis:
        return {"ellipsis": None}
    raise Uncapturable(f"forward passes a {type(a).__name__} constant, which a graph cannot record")


def _verify(data: dict, state: dict) -> None:
    """Rebuild the JSON as `load` will and check it has the model's tensors, by name and shape."""
    try:
        rebuilt = graph_module(data)
    except SlimFormatError as exc:
        raise Uncapturable(f"the traced graph cannot be stored: {_first_line(exc)}") from None
    want = {k: tuple(v.shape) for k, v in state.items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict(keep_vars=True).items()}
    if want != got:
        diff = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
        raise Uncapturable(f"the rebuilt graph does not hold the model's tensors ({', '.join(diff[:3])})")
