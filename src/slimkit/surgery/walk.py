"""Walk a traced graph (torch.fx or `hooktrace`) from one producer to every tensor dimension that
must shrink with its output channels: the coupled group.

Forward, channels pass through BatchNorm, ReLU and other element-wise ops, pooling over trailing
dimensions, arithmetic with scalars and reshapes that keep them apart (`flatten` gives each
channel H*W columns; `cat` along the channels shifts them by an offset) until consumers take
them. Where two traced tensors of the same shape are added or multiplied (a residual connection,
a gated unit), channel c of one meets channel c of the other, so the walk goes backward too and
every producer of the other operand joins the group: `conv1[out] <-> conv2[out] <-> fc[in]`.
Anything else makes the group unprunable, with a one-line reason naming the op and module.

>>> group, why = follow(node, modules, calls)     # `node` calls a Linear/Conv producer
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx, nn

PRODUCERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_RELU = {"relu", "relu_"}
_ELEMENTWISE = {"dropout", "dropout_", "alpha_dropout", "feature_alpha_dropout", "dropout1d", "dropout2d",
                "gelu", "silu", "sigmoid", "tanh", "hardtanh", "relu6", "leaky_relu", "elu", "selu", "celu",
                "mish", "hardswish", "hardsigmoid", "softplus", "contiguous", "clone", "detach", "float",
                "half", "bfloat16", "double", "to", "type_as", "sigmoid_", "tanh_", "silu_", "gelu_"}
_SCALAR_OPS = {"add", "sub", "mul", "div", "truediv", "neg", "__add__", "__radd__", "__sub__", "__rsub__",
               "__mul__", "__rmul__", "__truediv__", "__neg__", "add_", "sub_", "mul_", "div_", "iadd", "imul",
               "__iadd__", "__imul__"}
_COUPLE = {"add", "sub", "mul", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "add_",
           "sub_", "mul_", "iadd", "imul", "__iadd__", "__imul__"}
_POOL = {"max_pool1d", "max_pool2d", "avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
         "adaptive_avg_pool2d", "adaptive_max_pool1d", "adaptive_max_pool2d"}
_FLATTEN = {"flatten", "reshape", "view", "unsqueeze", "squeeze"}   # reshapes, checked by `reshaped`
_META_METHODS = {"size", "dim", "numel"}       # read the shape, not the values: no dataflow
_META_ATTRS = {"shape", "dtype", "device", "ndim"}
_KEEP_MOD = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
             nn.LeakyReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.Hardswish, nn.Mish)
_POOL_MOD = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d,
             nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_MAX_STEPS = 100_000


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
    """A producer's output channels and everything that must shrink with them (other producers
    too, where a residual add or a gate couples their outputs)."""

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

    def producers(self) -> list[str]:
        """Every module whose output channels this group removes (the first is `producer`)."""
        return [m.module for m in self.members if m.role == "out"]


class _Stop(Exception):
    """The group cannot be cut; the message says why."""


def follow(start, modules: dict[str, nn.Module], calls: dict[str, int]) -> tuple[Group | None, str]:
    """The group of producer node `start`, or (None, why) when it cannot be cut safely."""
    mod = modules[start.target]
    channels = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    if shape_of(start) is None:
        return None, "output shape unknown"
    walk = _Walk(Group(start.target, channels), modules, calls)
    try:
        walk.run(start)
    except _Stop as stop:
        return None, str(stop)
    return walk.group, ""


class _Walk:
    def __init__(self, group: Group, modules: dict[str, nn.Module], calls: dict[str, int]):
        self.group, self.modules, self.calls = group, modules, calls
        self.todo: list[tuple] = []
        self.seen: set[tuple] = set()

    def add(self, member: Member) -> None:
        if member not in self.group.members:
            self.group.members.append(member)

    def run(self, start) -> None:
        self.todo.append(("back", start, None))
        steps = 0
        while self.todo:
            steps += 1
            if steps > _MAX_STEPS:
                raise _Stop("the graph around it is too large to follow")
            item = self.todo.pop()
            if item[0] == "back":
                self.backward(item[1], item[2])
            else:
                self.forward(*item[1:])

    def backward(self, node, cdim: int | None) -> None:
        """`node`'s output carries the group's channels (at block 1, offset 0): take it in, walk
        forward from it, and back to where its channels come from."""
        shape = shape_of(node)
        if shape is None:
            raise _Stop(f"{describe(node)} has no known shape")
        if (node, 1, 0) in self.seen:
            return
        kind = _kind(node, _tensor_args(node)[0] if _tensor_args(node) else None, self.modules)
        last = node.target if node.op == "call_module" else None
        if kind == "producer":
            self._producer(node, shape, cdim)
            cdim = self._cdim(node, shape)
        self.todo.append(("fwd", node, 1, 0, cdim, last))
        if kind == "producer":
            return
        if kind == "norm":
            self._norm(node, shape, 1, 0, cdim)
        elif kind == "pool" and (cdim != 1 or len(shape) < 3):
            raise _Stop(f"{describe(node)} pools over the channel dimension")
        elif node.op == "placeholder":
            raise _Stop(f"is combined with the model input {node.target}, whose channels cannot be removed")
        elif kind not in ("relu", "keep", "norm", "pool", "couple"):
            raise _Stop(f"is combined with the output of {describe(node)}, which the tracer cannot follow")
        for arg in _tensor_args(node) if kind == "couple" else _tensor_args(node)[:1]:
            self.todo.append(("back", arg, cdim))

    def _cdim(self, node, shape: tuple) -> int:
        return len(shape) - 1 if isinstance(self.modules[node.target], nn.Linear) else 1

    def _producer(self, node, shape: tuple, cdim: int | None) -> None:
        mod = self.modules[node.target]
        out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        if getattr(mod, "groups", 1) != 1:
            raise _Stop(f"is coupled to {node.target}, a grouped convolution")
        if self.calls[node.target] > 1:
            raise _Stop(f"is coupled to {node.target}, which is called more than once")
        if out != self.group.channels or (cdim is not None and cdim != self._cdim(node, shape)):
            raise _Stop(f"is coupled to {node.target}, whose outputs do not match one to one")
        self.add(Member(node.target, "out"))

    def _norm(self, node, shape: tuple, block: int, offset: int, cdim: int | None) -> None:
        if self.calls[node.target] > 1:
            raise _Stop(f"{node.target} is called more than once")
        if cdim != 1 or self.modules[node.target].num_features != shape[1]:
            raise _Stop(f"{node.target} does not normalize these channels one to one")
        self.add(Member(node.target, "ch", block, offset))

    def forward(self, node, block: int, offset: int, cdim: int, last: str | None) -> None:
        if (node, block, offset) in self.seen:
            return
        self.seen.add((node, block, offset))
        shape = shape_of(node) or ()
        for user in node.users:
            kind = _kind(user, node, self.modules)
            where = describe(user)
            if kind == "meta":
                continue
            if kind in ("relu", "keep"):
                if kind == "relu" and last is not None:
                    self.group.activation = self.group.activation or last
                self.todo.append(("fwd", user, block, offset, cdim, last))
            elif kind == "pool":
                if cdim != 1 or len(shape) < 3:
                    raise _Stop(f"{where} pools over the channel dimension")
                self.todo.append(("fwd", user, block, offset, cdim, last))
            elif kind == "norm":
                self._norm(user, shape, block, offset, cdim)
                self.todo.append(("fwd", user, block, offset, cdim, user.target))
            elif kind == "flatten":
                moved = reshaped(shape, shape_of(user), block, offset, cdim)
                if moved is None:
                    raise _Stop(f"{where} reshapes channels in a way it cannot follow")
                self.todo.append(("fwd", user, *moved, last))
            elif kind == "cat":
                placed = concatenated(user, node, cdim, len(shape))
                if placed is None:
                    raise _Stop(f"{where} concatenates along another dimension than the channels")
                self.todo.extend(("fwd", user, block, offset + shift, cdim, last) for shift in placed)
            elif kind == "couple":
                if (block, offset) != (1, 0):
                    raise _Stop(f"{where} combines tensors after a reshape or concatenation of the channels")
                self.todo.append(("fwd", user, 1, 0, cdim, None))
                self.todo.extend(("back", arg, cdim) for arg in _tensor_args(user) if arg is not node)
            elif kind in ("producer", "consumer"):
                self._consumer(user, shape, block, offset, cdim)
            elif user.op == "output":
                raise _Stop("feeds the model output")
            elif _name(user.target) in _SCALAR_OPS:
                raise _Stop(f"is combined with another tensor by {where} (a broadcast or per-channel scale), "
                            "which the tracer cannot follow")
            else:
                raise _Stop(f"reaches {where}, which the tracer cannot follow")

    def _consumer(self, user, shape: tuple, block: int, offset: int, cdim: int) -> None:
        cons = self.modules[user.target]
        width = cons.in_features if isinstance(cons, nn.Linear) else cons.in_channels
        want = len(shape) - 1 if isinstance(cons, nn.Linear) else 1
        if getattr(cons, "groups", 1) != 1 or cdim != want or not shape or width != shape[cdim] \
                or self.calls[user.target] > 1:
            raise _Stop(f"consumer {user.target} does not take these channels one to one")
        self.add(Member(user.target, "in", block, offset))


def shape_of(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def describe(node) -> str:
    """A node in a few words: the op and, for the hook tracer, the module it ran in."""
    if isinstance(node, fx.Node):
        return str(node.target) if node.op == "call_module" else f"{_name(node.target)} ({node.name})"
    return node.format_node()[:120]


def _is_node(value) -> bool:
    return isinstance(value, fx.Node) or (hasattr(value, "users") and hasattr(value, "op"))


def _tensor_args(node) -> list:
    """The traced tensors `node` reads (constants excluded)."""
    flat: list = []
    for a in [*node.args, *node.kwargs.values()]:
        flat.extend(a if isinstance(a, list | tuple) else [a])
    return [a for a in flat if _is_node(a) and a.op != "constant"]


def reshaped(before: tuple, after: tuple | None, block: int, offset: int, cdim: int):
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


def concatenated(cat, node, cdim: int, ndim: int) -> list[int] | None:
    """Offsets of `node` within `cat`'s output when concatenated along the channel dim, else None."""
    tensors = cat.args[0] if cat.args else cat.kwargs.get("tensors")
    dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
    if not isinstance(tensors, list | tuple) or not isinstance(dim, int) or dim % max(ndim, 1) != cdim:
        return None
    shifts, pos = [], 0
    for t in tensors:
        if t is node:
            shifts.append(pos)
        shape = shape_of(t) if hasattr(t, "meta") else None
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


def _only_scalars_besides(user, node) -> bool:
    """True when every argument of `user` other than `node` is a number or a one-element tensor."""
    args = [*user.args, *user.kwargs.values()]
    if sum(a is node for a in args) != 1:
        return False
    for a in args:
        if a is node or isinstance(a, int | float | bool) or a is None:
            continue
        shape = shape_of(a) if hasattr(a, "meta") else None
        if shape is None or _prod(shape) != 1:
            return False
    return True


def _couples(user, node) -> bool:
    """True for `node (+|-|*) other` where every other tensor is traced and of the same shape."""
    args = [*user.args, *user.kwargs.values()]
    tensors = [a for a in args if _is_node(a)]
    others = [a for a in args if not _is_node(a)]
    return len(tensors) == 2 and all(isinstance(a, int | float | bool) or a is None for a in others) \
        and all(a.op != "constant" and shape_of(a) == shape_of(node) for a in tensors)


def _kind(node, source, modules: dict[str, nn.Module]) -> str:
    """How `node` treats the channels of its input `source`."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, NORMS):
            return "norm"
        if isinstance(m, PRODUCERS):
            return "producer"
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
        if source is not None and name in _SCALAR_OPS and _only_scalars_besides(node, source):
            return "keep"
        if source is not None and name in _COUPLE and _couples(node, source):
            return "couple"
    return "other"
