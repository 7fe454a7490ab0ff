"""Which layers are coupled: removing output channel c of a producer means removing entry c of the
BatchNorms that follow it and input column(s) c of every consumer.

Traced with torch.fx plus shape propagation over example inputs; when fx cannot trace the model
(data-dependent control flow, Hugging Face models, ...) the same graph is recorded by running the
model once with hooks (`slimkit.surgery.hooktrace`). Both give the same node interface (`op`,
`target`, `users`, `args`, shape metadata), walked by one `_follow`.

Ops that keep channels (BatchNorm, ReLU and other element-wise activations, pooling over trailing
dimensions, dropout, arithmetic with a scalar) are followed; `flatten` maps one channel to H*W input
columns of the next Linear; `cat` along the channel dimension shifts the columns by an offset.
Anything else (residual adds, LayerNorm, attention reshapes, the model output) makes the group
unprunable, with the reason recorded.

>>> groups, problems = trace_groups(model, {"x": x})
>>> print(groups[0])
conv1[out] <-> bn1[ch] <-> conv2[in]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimkit.errors import SlimError

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
TRACERS = ("auto", "fx", "hooks")
_RELU = {"relu", "relu_"}
_ELEMENTWISE = {"dropout", "dropout_", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d",
                "gelu", "silu", "sigmoid", "tanh", "hardtanh", "relu6", "leaky_relu", "elu", "selu", "celu",
                "mish", "hardswish", "hardsigmoid", "softplus", "contiguous", "clone", "detach", "float",
                "half", "bfloat16", "double", "to", "type_as", "sigmoid_", "tanh_", "silu_", "gelu_"}
_SCALAR_OPS = {"add", "sub", "mul", "div", "truediv", "neg", "__add__", "__radd__", "__sub__", "__rsub__",
               "__mul__", "__rmul__", "__truediv__", "__neg__", "add_", "sub_", "mul_", "div_"}
_POOL = {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d"}
_FLATTEN = {"flatten", "reshape", "view"}
_META_METHODS = {"size", "dim", "numel"}       # read the shape, not the values: no dataflow
_META_ATTRS = {"shape", "dtype", "device", "ndim"}
_KEEP_MOD = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
             nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.Hardswish, nn.Mish)
_POOL_MOD = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Member:
    """One coupled tensor dimension: `module`'s outputs ("out"), inputs ("in") or BN entries ("ch").
    `block` input positions belong to each channel (H*W after a flatten); the group's positions
    start at `offset` (after a concatenation)."""

    module: str
    role: str
    block: int = 1
    offset: int = 0

    def __str__(self) -> str:
        block = "" if self.block == 1 else f" x{self.block}"
        return f"{self.module}[{self.role}{block}{f' @{self.offset}' if self.offset else ''}]"


@dataclass
class Group:
    """A producer's output channels and everything that must shrink with them."""

    producer: str
    channels: int
    members: list[Member] = field(default_factory=list)
    activation: str | None = None   # module whose output enters a ReLU (where APoZ is measured)
    tracer: str = "fx"              # "fx" or "hooks": which tracer found the group

    def __str__(self) -> str:
        return " <-> ".join(str(m) for m in self.members)

    def details(self) -> str:
        relu = f"ReLU after {self.activation}" if self.activation else "no ReLU"
        return f"{self} ({self.channels} channels, {relu})"


def _example_args(gm: fx.GraphModule, inputs) -> list:
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(inputs, dict):
        return [inputs[k] for k in names if k in inputs]
    return list(inputs) if isinstance(inputs, tuple | list) else [inputs]


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def fx_graph(model: nn.Module, inputs) -> tuple[list, dict[str, nn.Module]]:
    """The fx graph's nodes with shapes from `inputs`, and the modules by name (fx errors propagate)."""
    gm = fx.symbolic_trace(model)
    was = model.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*_example_args(gm, inputs))
    finally:
        model.train(was)
    return list(gm.graph.nodes), dict(gm.named_modules())


def trace_groups(model: nn.Module, inputs, tracer: str = "auto") -> tuple[list[Group], dict[str, str]]:
    """Coupled groups of `model`, and for each producer that cannot be pruned, why.

    `inputs` is a dict of keyword inputs (as a Task's `example_inputs`) or a tensor. `tracer`:
    "fx", "hooks" (one forward pass with hooks), or "auto" (fx, and hooks when fx fails).
    Raises SlimError when the model cannot be traced at all.

    >>> groups, problems = trace_groups(LeNet300100(), {"x": torch.rand(2, 64)})
    >>> [str(g) for g in groups], problems
    (['fc1[out] <-> fc2[in]', 'fc2[out] <-> fc3[in]'], {'fc3': 'feeds the model output'})
    """
    from slimkit.surgery.hooktrace import hook_graph

    if tracer not in TRACERS:
        raise ValueError(f"tracer must be one of {', '.join(TRACERS)}, got {tracer!r}")
    fx_error = None
    if tracer in ("auto", "fx"):
        try:
            graph = fx_graph(model, inputs)
        except Exception as exc:  # fx raises many kinds; report one line
            fx_error = _first_line(exc)
            if tracer == "fx":
                raise SlimError(f"cannot trace {type(model).__name__} for structured pruning: {fx_error}") from None
        else:
            return _groups(*graph, "fx")
    try:
        graph = hook_graph(model, inputs)
    except Exception as exc:  # the model's own forward failed on the example inputs
        why = f"torch.fx: {fx_error}; hooks: {_first_line(exc)}" if fx_error else _first_line(exc)
        raise SlimError(f"cannot trace {type(model).__name__} for structured pruning: {why}") from None
    return _groups(*graph, "hooks")


def _groups(nodes: list, modules: dict[str, nn.Module], tracer: str) -> tuple[list[Group], dict[str, str]]:
    calls: dict[str, int] = {}
    for n in nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    groups, problems = [], {}
    for node in nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], PRODUCERS):
            continue
        if node.target in problems or any(g.producer == node.target for g in groups):
            continue
        mod = modules[node.target]
        if getattr(mod, "groups", 1) != 1:
            problems[node.target] = "grouped convolution"
            continue
        if calls[node.target] > 1:
            problems[node.target] = "module is called more than once"
            continue
        group, why = _follow(node, modules, calls)
        if group is not None and tracer == "hooks":
            why = _idle_taker(group, modules, calls)
            group = None if why else group
        if group is None:
            problems[node.target] = why
        else:
            group.tracer = tracer
            groups.append(group)
    return groups, problems


def _width(module: nn.Module) -> int:
    if isinstance(module, NORMS):
        return module.num_features
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _idle_taker(group: Group, modules: dict[str, nn.Module], calls: dict[str, int]) -> str:
    """Hooks see only the path the example input took: a layer that did not run but takes as many
    inputs as this group feeds may consume these channels in another branch, so the group is unsafe."""
    widths = {group.channels} | {_width(modules[m.module]) for m in group.members if m.role != "out"}
    for name, module in modules.items():
        if name not in calls and isinstance(module, PRODUCERS + NORMS) and _width(module) in widths:
            return (f"{name} did not run on the example input but takes {_width(module)} inputs "
                    "like these channels (another branch?)")
    return ""


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _describe(node) -> str:
    if isinstance(node, fx.Node):
        return str(node.target) if node.op == "call_module" else f"{_name(node.target)} ({node.name})"
    return node.format_node()[:120]


def _follow(start, modules: dict[str, nn.Module], calls: dict[str, int]):
    """Walk from producer node `start` to every consumer of its channels; (Group, "") or (None, why)."""
    mod = modules[start.target]
    channels = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    shape = _shape(start)
    if shape is None:
        return None, "output shape unknown"
    group = Group(start.target, channels, [Member(start.target, "out")])
    last_module = start.target
    cdim0 = len(shape) - 1 if isinstance(mod, nn.Linear) else 1
    frontier = [(start, 1, 0, cdim0)]   # node, positions per channel, first position, channel dim
    steps = 0
    while frontier:
        node, block, offset, cdim = frontier.pop()
        steps += 1
        if steps > 10_000:
            return None, "the graph after it is too large to follow"
        shape = _shape(node) or ()
        for user in node.users:
            kind = _kind(user, node, modules)
            where = _describe(user)
            if kind == "meta":
                continue
            if kind in ("relu", "keep"):
                if kind == "relu":
                    group.activation = group.activation or last_module
                frontier.append((user, block, offset, cdim))
            elif kind == "pool":
                if cdim != 1 or len(shape) < 3:
                    return None, f"{where} pools over the channel dimension"
                frontier.append((user, block, offset, cdim))
            elif kind == "norm":
                if calls[user.target] > 1:
                    return None, f"{user.target} is called more than once"
                if cdim != 1 or modules[user.target].num_features != shape[cdim]:
                    return None, f"{user.target} does not normalize these channels one to one"
                group.members.append(Member(user.target, "ch", block, offset))
                last_module = user.target
                frontier.append((user, block, offset, cdim))
            elif kind == "flatten":
                moved = _reshaped(shape, _shape(user), block, offset, cdim)
                if moved is None:
                    return None, f"{where} reshapes channels in a way it cannot follow"
                frontier.append((user, *moved))
            elif kind == "cat":
                placed = _concatenated(user, node, cdim, len(shape))
                if placed is None:
                    return None, f"{where} concatenates along another dimension than the channels"
                frontier.extend((user, block, offset + shift, cdim) for shift in placed)
            elif kind == "consumer":
                cons = modules[user.target]
                width = cons.in_features if isinstance(cons, nn.Linear) else cons.in_channels
                want = len(shape) - 1 if isinstance(cons, nn.Linear) else 1
                if getattr(cons, "groups", 1) != 1 or cdim != want or not shape or width != shape[cdim] \
                        or calls[user.target] > 1:
                    return None, f"consumer {user.target} does not take these channels one to one"
                group.members.append(Member(user.target, "in", block, offset))
            elif user.op == "output":
                return None, "feeds the model output"
            elif _name(user.target) in _SCALAR_OPS:
                return None, (f"is combined with another tensor by {where} (e.g. a residual add), "
                              "which the tracer cannot follow")
            else:
                return None, f"reaches {where}, which the tracer cannot follow"
    return group, ""


def _reshaped(before: tuple, after: tuple | None, block: int, offset: int, cdim: int):
    """(block, offset, channel dim) after a reshape, or None when channels get mixed."""
    if not before or after is None:
        return None
    if tuple(after[:cdim + 1]) == tuple(before[:cdim + 1]):           # only trailing dims change
        return block, offset, cdim
    if cdim == len(before) - 1 and after and after[-1] == before[-1]:  # leading dims merged or split
        return block, offset, len(after) - 1
    size = _prod(before[cdim + 1:])
    if len(after) == cdim + 1 and tuple(after[:cdim]) == tuple(before[:cdim]) \
            and after[cdim] == before[cdim] * size:                    # flatten(cdim): H*W per channel
        return block * size, offset * size, cdim
    return None


def _concatenated(cat, node, cdim: int, ndim: int) -> list[int] | None:
    """Offsets of `node` within `cat`'s output when concatenated along the channel dim, else None."""
    tensors = cat.args[0] if cat.args else cat.kwargs.get("tensors")
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    if not isinstance(tensors, list | tuple) or not isinstance(dim, int) or dim % max(ndim, 1) != cdim:
        return None
    shifts, pos = [], 0
    for t in tensors:
        if t is node:
            shifts.append(pos)
        shape = _shape(t) if hasattr(t, "meta") else None
        if shape is None:
            return None
        pos += shape[cdim]
    return shifts


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _name(target) -> str:
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def _scalar_only(user, node) -> bool:
    """True when every argument of `user` other than `node` is a number or a one-element tensor."""
    args = [*user.args, *user.kwargs.values()]
    if sum(a is node for a in args) != 1:
        return False
    for a in args:
        if a is node or isinstance(a, int | float | bool) or a is None:
            continue
        shape = _shape(a) if hasattr(a, "meta") else None
        if shape is None or _prod(shape) != 1:
            return False
    return True


def _kind(node, source, modules: dict[str, nn.Module]) -> str:
    """How `node` treats the channels of its input `source`."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, NORMS):
            return "norm"
        if isinstance(m, PRODUCERS):
            return "consumer"
        if isinstance(m, _KEEP_MOD):
            return "keep"
        if isinstance(m, _POOL_MOD):
            return "pool"
        if isinstance(m, nn.Flatten):
            return "flatten"
    elif node.op in ("call_function", "call_method"):
        name = _name(node.target)
        if name in _META_METHODS or (name == "getattr" and len(node.args) > 1 and node.args[1] in _META_ATTRS):
            return "meta"
        if name in _RELU:
            return "relu"
        if name in _ELEMENTWISE:
            return "keep"
        if name in _POOL:
            return "pool"
        if name in _FLATTEN:
            return "flatten"
        if name == "cat":
            return "cat"
        if name in _SCALAR_OPS and _scalar_only(node, source):
            return "keep"
    return "other"
