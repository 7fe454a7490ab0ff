"""Which layers are coupled: removing output channel c of a producer means removing entry c of the
BatchNorms that follow it and input column(s) c of every consumer.

Traced with torch.fx plus shape propagation over example inputs; when fx cannot trace the model
(data-dependent control flow, Hugging Face models, ...) the same graph is recorded by running the
model once with hooks (`slimkit.surgery.hooktrace`). Both give the same node interface (`op`,
`target`, `users`, `args`, shape metadata), walked by one `walk.follow`, which says what it
follows (BatchNorm, element-wise ops, pooling, flatten, cat, residual adds that couple producers)
and why anything else (LayerNorm, attention reshapes, the model output) makes a group unprunable.

>>> groups, problems = trace_groups(model, {"x": x})
>>> print(groups[0])
conv1[out] <-> bn1[ch] <-> conv2[in]
"""

from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimkit.core.errors import SlimError
from slimkit.surgery.hooktrace import hook_graph
from slimkit.surgery.walk import NORMS, PRODUCERS, Group, Member, follow

TRACERS = ("auto", "fx", "hooks")
__all__ = ["NORMS", "PRODUCERS", "TRACERS", "Group", "Member", "fx_graph", "trace_groups"]


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
        if node.target in problems or any(node.target in g.producers() for g in groups):
            continue
        mod = modules[node.target]
        if getattr(mod, "groups", 1) != 1:
            problems[node.target] = "grouped convolution"
            continue
        if calls[node.target] > 1:
            problems[node.target] = "module is called more than once"
            continue
        group, why = follow(node, modules, calls)
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
