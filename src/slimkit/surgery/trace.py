"""Which layers are coupled: removing output channel c of a producer means removing entry c of the
BatchNorms that follow it and input column(s) c of every consumer.

Traced with torch.fx plus shape propagation over example inputs. Ops that keep channels
(BatchNorm, ReLU, pooling, dropout) are followed; `flatten` maps one channel to H*W input
columns of the next Linear. Anything else (residual adds, concatenation, the model output) makes
the group unprunable, with the reason recorded.

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
_RELU_FN = {torch.relu, nn.functional.relu}
_KEEP_FN = {torch.max_pool2d, torch.max_pool1d, torch.avg_pool1d, nn.functional.max_pool2d,
            nn.functional.max_pool1d, nn.functional.avg_pool2d, nn.functional.avg_pool1d,
            nn.functional.dropout, torch.dropout}
_KEEP_MOD = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.Dropout, nn.Identity)
_FLATTEN = {torch.flatten, "flatten", "reshape", "view"}


@dataclass(frozen=True)
class Member:
    """One coupled tensor dimension: `module`'s outputs ("out"), inputs ("in") or BN entries ("ch").
    `block` input columns belong to each channel (H*W after a flatten)."""

    module: str
    role: str
    block: int = 1

    def __str__(self) -> str:
        return f"{self.module}[{self.role}{'' if self.block == 1 else f' x{self.block}'}]"


@dataclass
class Group:
    """A producer's output channels and everything that must shrink with them."""

    producer: str
    channels: int
    members: list[Member] = field(default_factory=list)
    activation: str | None = None   # module whose output enters a ReLU (where APoZ is measured)

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


def trace_groups(model: nn.Module, inputs) -> tuple[list[Group], dict[str, str]]:
    """Coupled groups of `model`, and for each producer that cannot be pruned, why.

    `inputs` is a dict of keyword inputs (as a Task's `example_inputs`) or a tensor.
    Raises SlimError when torch.fx cannot trace the model at all.
    """
    try:
        gm = fx.symbolic_trace(model)
        was = model.training
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(*_example_args(gm, inputs))
        model.train(was)
    except Exception as exc:  # fx raises many kinds; report one line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlimError(f"cannot trace {type(model).__name__} for structured pruning: {msg}") from None
    modules = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    groups, problems = [], {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], PRODUCERS):
            continue
        mod = modules[node.target]
        if getattr(mod, "groups", 1) != 1:
            problems[node.target] = "grouped convolution"
            continue
        if calls[node.target] > 1:
            problems[node.target] = "module is called more than once"
            continue
        group, why = _follow(node, modules, calls)
        if group is None:
            problems[node.target] = why
        else:
            groups.append(group)
    return groups, problems


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _follow(start: fx.Node, modules: dict[str, nn.Module], calls: dict[str, int]):
    mod = modules[start.target]
    channels = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
    group = Group(start.target, channels, [Member(start.target, "out")])
    last_module = start.target
    frontier = [(start, 1)]
    while frontier:
        node, block = frontier.pop()
        for user in node.users:
            kind = _kind(user, modules)
            if kind == "relu":
                group.activation = group.activation or last_module
                frontier.append((user, block))
            elif kind == "keep":
                frontier.append((user, block))
            elif kind == "norm":
                if calls[user.target] > 1:
                    return None, f"{user.target} is called more than once"
                group.members.append(Member(user.target, "ch"))
                last_module = user.target
                frontier.append((user, block))
            elif kind == "flatten":
                before, after = _shape(node), _shape(user)
                if before is None or after is None or len(after) != 2 or len(before) < 2 \
                        or after[1] != before[1] * _prod(before[2:]):
                    return None, f"{user.format_node()[:60]} reshapes channels in a way it cannot follow"
                frontier.append((user, block * _prod(before[2:])))
            elif kind == "consumer":
                cons = modules[user.target]
                width = cons.in_features if isinstance(cons, nn.Linear) else cons.in_channels
                if getattr(cons, "groups", 1) != 1 or width != channels * block or calls[user.target] > 1:
                    return None, f"consumer {user.target} does not take these channels one to one"
                group.members.append(Member(user.target, "in", block))
            elif user.op == "output":
                return None, "feeds the model output"
            else:
                return None, f"reaches {user.format_node()[:60]}, which the tracer cannot follow"
    return group, ""


def _prod(dims) -> int:
    out = 1
    for d in dims:
        out *= int(d)
    return out


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
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
        if isinstance(m, nn.Flatten):
            return "flatten"
    elif node.op == "call_function":
        if node.target in _RELU_FN:
            return "relu"
        if node.target in _KEEP_FN:
            return "keep"
        if node.target in _FLATTEN:
            return "flatten"
    elif node.op == "call_method":
        if node.target == "relu":
            return "relu"
        if node.target in _FLATTEN:
            return "flatten"
    return "other"
