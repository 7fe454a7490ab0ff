"""Record a model's dataflow by running it once, for models torch.fx cannot trace.

Forward hooks record every call of a leaf module (a `torch.nn` layer: Linear, Conv, BatchNorm,
ReLU, ...), and a `TorchFunctionMode` records every torch function and tensor method called outside
them (view/flatten, add, cat, relu, pooling, ...). Tensors are followed by identity from the
example inputs to the output. The result has the node interface of a torch.fx graph (`op`,
`target`, `args`, `kwargs`, `users`, `meta["tensor_meta"].shape`), so `trace._follow` walks both.

Only what ran is recorded: a data-dependent branch is traced along the path the example input
takes, and a group whose channels reach a value used for control flow (e.g. `h.sum() > 0`) is
reported as unprunable, like any op the tracer does not know.

>>> nodes, modules = hook_graph(model, {"x": torch.rand(2, 64)})
>>> [n.target for n in nodes if n.op == "call_module"]
['fc1', 'fc2', 'fc3']
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

# Metadata queries: they read shapes and types, never values, so they are not dataflow.
_META = {"size", "dim", "numel", "nelement", "ndimension", "is_floating_point", "is_complex", "is_contiguous",
         "stride", "element_size", "data_ptr", "storage_offset", "get_device", "__len__", "__format__",
         "__repr__", "__hash__", "_is_view", "is_signed", "requires_grad_", "retain_grad"}
_META_PROPS = {"shape", "dtype", "device", "ndim", "requires_grad", "is_cuda", "is_sparse", "is_quantized",
               "is_meta", "layout", "grad_fn", "is_leaf", "grad", "names", "_version", "output_nr", "is_nested"}


class TensorMeta:
    """The shape of a recorded tensor (the part of fx's `tensor_meta` the tracer reads)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(s) for s in shape)


class Node:
    """One recorded call, shaped like a `torch.fx.Node`."""

    def __init__(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None,
                 shape: tuple[int, ...] | None = None, scope: str = ""):
        self.op, self.target, self.args, self.kwargs = op, target, args, kwargs or {}
        self.users: dict[Node, None] = {}
        self.meta = {"tensor_meta": TensorMeta(shape)} if shape is not None else {}
        self.scope = scope

    def format_node(self) -> str:
        return f"{self.target} in {self.scope}" if self.scope else str(self.target)

    def __repr__(self) -> str:
        return f"Node({self.format_node()})"


def _is_leaf(module: nn.Module) -> bool:
    """torch.fx's rule: layers defined in torch.nn are leaves, containers and user modules are not."""
    return type(module).__module__.startswith("torch.nn") and not isinstance(
        module, nn.Sequential | nn.ModuleList | nn.ModuleDict)


def _func_name(func: Any) -> str | None:
    """The op's name, or None for a metadata query that is not recorded."""
    name = getattr(func, "__name__", None) or str(func)
    if name == "__get__":
        prop = getattr(getattr(func, "__self__", None), "__name__", "")
        return None if prop in _META_PROPS else prop
    return None if name in _META else name


class _Recorder(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.nodes: list[Node] = []
        self.producer: dict[int, Node] = {}
        self.alive: list[torch.Tensor] = []   # keeps ids unique while recording
        self.leaf_depth = 0
        self.scopes: list[str] = []

    def _wrap(self, value: Any, used: list[Node]) -> Any:
        if isinstance(value, torch.Tensor):
            node = self.producer.get(id(value))
            if node is not None:
                used.append(node)
                return node
            return Node("constant", "tensor", shape=tuple(value.shape))
        if isinstance(value, list):
            return [self._wrap(v, used) for v in value]
        if isinstance(value, tuple):
            return tuple(self._wrap(v, used) for v in value)
        if isinstance(value, dict):
            return {k: self._wrap(v, used) for k, v in value.items()}
        return value

    def record(self, op: str, target: Any, args: tuple, kwargs: dict, result: Any) -> None:
        used: list[Node] = []
        args, kwargs = self._wrap(args, used), self._wrap(kwargs, used)
        if not used and op != "call_module":
            return   # built from constants and parameters only: not dataflow from the inputs
        outs = list(_tensors(result))
        node = Node(op, target, args, kwargs, tuple(outs[0].shape) if len(outs) == 1 else None,
                    self.scopes[-1] if self.scopes else "")
        for u in used:
            u.users[node] = None
        self.nodes.append(node)
        for t in outs:
            self.producer[id(t)] = node
            self.alive.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.leaf_depth == 0:
            name = _func_name(func)
            if name is not None:
                self.record("call_function", name, tuple(args), kwargs, result)
        return result


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


@contextlib.contextmanager
def _hooks(model: nn.Module, rec: _Recorder) -> Iterator[None]:
    handles = []
    for name, module in model.named_modules():
        if _is_leaf(module) and name:
            def pre(mod, args, kwargs, name=name):
                rec.leaf_depth += 1

            def post(mod, args, kwargs, output, name=name):
                if rec.leaf_depth == 1:   # still > 0: the shape reads in `record` are not recorded
                    rec.record("call_module", name, tuple(args), kwargs, output)
                rec.leaf_depth -= 1
        else:
            def pre(mod, args, kwargs, name=name):
                rec.scopes.append(f"{name or 'model'} ({type(mod).__name__})")

            def post(mod, args, kwargs, output, name=name):
                rec.scopes.pop()
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(module.register_forward_hook(post, with_kwargs=True, always_call=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hook_graph(model: nn.Module, inputs) -> tuple[list[Node], dict[str, nn.Module]]:
    """Run `model` once on `inputs` (a dict of keyword inputs, a tuple or a tensor) in eval mode
    and return the recorded nodes (in call order, ending with the output) and the modules by name.

    >>> nodes, _ = hook_graph(nn.Sequential(nn.Linear(4, 3), nn.ReLU()), torch.rand(2, 4))
    >>> [n.target for n in nodes]
    ['0', '0', '1', 'output']
    """
    rec = _Recorder()
    named = inputs.items() if isinstance(inputs, dict) else enumerate(
        inputs if isinstance(inputs, tuple | list) else [inputs])
    for key, value in named:
        if isinstance(value, torch.Tensor):
            node = Node("placeholder", str(key), shape=tuple(value.shape))
            rec.nodes.append(node)
            rec.producer[id(value)] = node
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _hooks(model, rec), rec:
            if isinstance(inputs, dict):
                out = model(**inputs)
            elif isinstance(inputs, tuple | list):
                out = model(*inputs)
            else:
                out = model(inputs)
    finally:
        model.train(was)
    used: list[Node] = []
    args = rec._wrap(tuple(_tensors(out)), used)
    output = Node("output", "output", (args,))
    for u in used:
        u.users[output] = None
    rec.nodes.append(output)
    return rec.nodes, _outer_modules(model)


def _outer_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules by name, without the insides of leaf modules (they run unrecorded, as one op)."""
    out: dict[str, nn.Module] = {}
    inside: set[str] = set()
    for name, module in model.named_modules():
        parent = name.rpartition(".")[0]
        if name and (parent in inside or (parent in out and parent and _is_leaf(out[parent]))):
            inside.add(name)
            continue
        out[name] = module
    return out
