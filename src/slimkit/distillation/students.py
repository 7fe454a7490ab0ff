"""Derive a student from a teacher, as the teacher's architecture plus recorded edits.

A .slim file rebuilds a model as "base architecture + structural edits", so a derived student
is a copy of the teacher (same base reference, empty edit log) whose layers were replaced with
smaller ones through `slimkit.surgery`. It saves and loads with no new file format.

>>> student = shrink_mlp(teacher, hidden=(32, 16))          # 64-300-100-10 -> 64-32-16-10
>>> student = keep_layers(minilm, [1, 3, 5])                # 6 transformer layers -> 3
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import apply_
from slimkit.core.provenance import task_for
from slimkit.core.task import Task
from slimkit.pruning.api import Criterion, Norm, NormPruningConfig, StructuredPruningConfig
from slimkit.surgery import get_submodule, register_op, replace_module
from slimkit.surgery.edits import edit_log
from slimkit.surgery.trace import trace_groups
from slimkit.zoo import load


def fresh_copy(teacher: nn.Module) -> nn.Module:
    """A deep copy of `teacher` with its own copy of the base reference and the edit log (so the
    student's later edits never touch the teacher's)."""
    student = copy.deepcopy(teacher)
    base = teacher.__dict__.get("slimkit_base")
    if base is not None:
        student.__dict__["slimkit_base"] = copy.deepcopy(base)
    student.__dict__["slimkit_edits"] = [dict(e) for e in teacher.__dict__.get("slimkit_edits", [])]
    return student


def linear_chain(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's `nn.Linear` layers in definition order, checked to form a chain."""
    chain = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if len(chain) < 2:
        raise SlimError(f"{type(model).__name__} is not an MLP: it has {len(chain)} Linear layer(s)")
    for (a, la), (b, lb) in zip(chain, chain[1:], strict=False):
        if la.out_features != lb.in_features:
            raise SlimError(f"Linear layers {a} ({la.out_features} out) and {b} ({lb.in_features} in) "
                            "do not form a chain; pass your own student")
    return chain


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mlp_params(widths: Sequence[int]) -> int:
    """Parameters of an MLP with layer widths `widths` (inputs, hidden..., outputs)."""
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))


@torch.no_grad()
def shrink_mlp(teacher: nn.Module, hidden: Sequence[int], init: str = "random",
               seed: int = 0) -> nn.Module:
    """A student MLP with the teacher's inputs and outputs and hidden widths `hidden`.

    `init="random"` draws fresh weights (seeded); `init="teacher"` keeps, in each hidden layer,
    the teacher's units with the largest incoming times outgoing weight norm (a structured
    pruning of the teacher), a warm start.
    """
    chain = linear_chain(teacher)
    hidden = [int(h) for h in hidden]
    if len(hidden) != len(chain) - 1:
        raise SlimError(f"student needs {len(chain) - 1} hidden widths for {type(teacher).__name__}, "
                        f"got {len(hidden)}: {hidden}")
    if any(h < 1 for h in hidden):
        raise SlimError(f"hidden widths must be >= 1, got {hidden}")
    if init not in ("random", "teacher"):
        raise SlimError(f"unknown student init {init!r} (known: random, teacher)")
    gen = torch.Generator().manual_seed(seed)
    student = fresh_copy(teacher)
    ins = [chain[0][1].in_features, *hidden]
    outs = [*hidden, chain[-1][1].out_features]
    keep_in = None
    for i, (name, old) in enumerate(chain):
        new = nn.Linear(ins[i], outs[i], bias=old.bias is not None)
        if init == "random":
            bound = ins[i] ** -0.5
            new.weight.copy_(torch.empty_like(new.weight).uniform_(-bound, bound, generator=gen))
            if new.bias is not None:
                new.bias.copy_(torch.empty_like(new.bias).uniform_(-bound, bound, generator=gen))
        else:
            keep_out = _top_units(old, chain[i + 1][1], outs[i]) if i < len(chain) - 1 else None
            w = old.weight if keep_out is None else old.weight[keep_out]
            new.weight.copy_(w if keep_in is None else w[:, keep_in])
            if new.bias is not None:
                new.bias.copy_(old.bias if keep_out is None else old.bias[keep_out])
            keep_in = keep_out
        replace_module(student, name, new.to(old.weight.dtype))
    return student


def _top_units(layer: nn.Linear, nxt: nn.Linear, k: int) -> torch.Tensor:
    score = layer.weight.norm(dim=1) * nxt.weight.norm(dim=0)
    return score.topk(min(k, len(score))).indices.sort().values


def _layer_list(model: nn.Module, path: str | None) -> tuple[str, nn.ModuleList]:
    if path is not None:
        found = get_submodule(model, path)
        if not isinstance(found, nn.ModuleList):
            raise SlimError(f"{path} is a {type(found).__name__}, not a list of layers")
        return path, found
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise SlimError(f"{type(model).__name__} has no list of layers to keep from")
    return max(lists, key=lambda nm: len(nm[1]))


def keep_layers(teacher: nn.Module, layers: Sequence[int] | None = None, every: int | None = None,
                path: str | None = None) -> nn.Module:
    """A student that keeps some of the teacher's transformer layers, with their weights.

    Give the layer indices (`layers=[1, 3, 5]`) or keep every k-th one (`every=2` keeps the
    last layer of each group of two: 1, 3, 5). `path` names the layer list (found when omitted,
    e.g. `encoder.layer` of a BERT model). Recorded as a `keep_layers` edit.
    """
    name, blocks = _layer_list(teacher, path)
    n = len(blocks)
    if (layers is None) == (every is None):
        raise SlimError("give exactly one of layers=[...] or every=k")
    if every is not None:
        if every < 1:
            raise SlimError(f"every must be >= 1, got {every}")
        layers = list(range(every - 1, n, every))
    keep = sorted(int(i) for i in layers)
    if not keep or len(set(keep)) != len(keep) or keep[0] < 0 or keep[-1] >= n:
        raise SlimError(f"layers to keep must be distinct indices in 0..{n - 1}, got {list(layers)}")
    student = fresh_copy(teacher)
    _keep(student, name, keep)

    edit_log(student).append({"op": "keep_layers", "module": name, "keep": keep})
    return student


def _keep(model: nn.Module, name: str, keep: list[int]) -> None:
    blocks = get_submodule(model, name)
    if not isinstance(blocks, nn.ModuleList):
        raise SlimError(f"{name} is not a list of layers")
    if keep and keep[-1] >= len(blocks):
        raise SlimError(f"{name} has {len(blocks)} layers, cannot keep layer {keep[-1]}")
    kept = nn.ModuleList([blocks[i] for i in keep])
    for j, block in enumerate(kept):
        attn = getattr(getattr(block, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = j
    parent_name, _, child = name.rpartition(".")
    parent = get_submodule(model, parent_name) if parent_name else model
    setattr(parent, child, kept)
    config = getattr(model, "config", None)  # a Hugging Face model: keep its config truthful
    if config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(keep)


@register_op("keep_layers")
def _replay_keep_layers(model: nn.Module, edit: dict) -> None:
    name, keep = edit.get("module"), edit.get("keep")
    if not isinstance(name, str) or not isinstance(keep, list) or not all(isinstance(i, int) for i in keep):
        raise SlimError("keep_layers edit needs a module name and a list of layer indices")
    _keep(model, name, sorted(keep))


PRUNE_CRITERIA = ("l1", "l2", "activation", "taylor")


def pruned_student(teacher: nn.Module, ratio: float | None = None, widths: Sequence[int] | None = None,
                   criterion: str = "l2", data: object | None = None) -> nn.Module:
    """A student cut from the teacher by structured pruning, keeping its most important units.

    Every prunable layer group the pruner traces (Linear neurons, conv filters with their
    BatchNorm entries; never the layer that feeds the output) loses the fraction `ratio` of its
    units, or keeps `widths[i]` units of the i-th group (in model order). Importance
    (`criterion`): the unit's weight norm `l1` / `l2`, or, measured on `data` (a Task, by
    default the zoo model's own), `activation` (mean |activation| x outgoing weight norm) or
    `taylor` (|activation x gradient|). The kept units keep their weights, so the student starts
    where the teacher's most important units are. Works for any model `slimkit.prune_` can cut
    (MLPs, CNNs such as lenet5); saves and loads like any pruned model.

    >>> student = pruned_student(sk.zoo.load("lenet5"), ratio=0.75, criterion="l2")
    >>> student = pruned_student(sk.zoo.load("lenet-300-100"), widths=[8, 6], criterion="activation")
    """

    if criterion not in PRUNE_CRITERIA:
        raise SlimError(f"unknown pruning criterion {criterion!r} (known: {', '.join(PRUNE_CRITERIA)})")
    if (ratio is None) == (widths is None):
        raise SlimError("give exactly one of ratio=<fraction to remove> or widths=[units per layer]")
    if ratio is not None and not 0.0 < ratio < 1.0:
        raise SlimError(f"student ratio (fraction of units removed) must be in (0, 1), got {ratio}")
    task = data if data is not None else task_for(teacher)
    if not isinstance(task, Task):
        raise SlimError("pruned_student needs data=<a Task> (example inputs and calibration data) "
                        f"for a {type(teacher).__name__} that is not a zoo model")
    student = fresh_copy(teacher)
    if ratio is not None:
        apply_(student, _prune_config(criterion, ratio, None), task)
        return student
    groups, problems = trace_groups(student, task.example_inputs(2))
    widths = [int(w) for w in widths]
    if len(widths) != len(groups):
        names = ", ".join(g.producer for g in groups) or "none"
        raise SlimError(f"{type(teacher).__name__} has {len(groups)} prunable layer group(s) ({names}); "
                        f"got {len(widths)} widths: {widths}")
    for group, width in zip(groups, widths, strict=True):
        if not 1 <= width <= group.channels:
            raise SlimError(f"width for {group.producer} must be in 1..{group.channels}, got {width}")
        if width < group.channels:  # keep exactly `width`: floor(ratio * n) = n - width
            ratio_here = (group.channels - width + 0.5) / group.channels
            apply_(student, _prune_config(criterion, ratio_here, group.producer), task)
    return student


def _prune_config(criterion: str, ratio: float, target: str | None):
    """The structured-pruning config that removes `ratio` of the units, once, with no retraining."""

    common = {"ratio": ratio, "epochs": 0, "rounds": 1, "max_drop": 100.0, "min_channels": 1,
              "targets": target}
    if criterion in ("l1", "l2"):
        return NormPruningConfig(norm=Norm(criterion), **common)
    return StructuredPruningConfig(criterion=Criterion(criterion), **common)


def zoo_student(name: str, init: str = "trained", seed: int = 0) -> nn.Module:
    """A smaller zoo model as the student (`"lenet5"` or `"builtin:lenet5"`): with its trained
    weights (`init="trained"`), or the same architecture freshly initialised (`"random"`, seeded).

    >>> student = zoo_student("builtin:lenet5")    # 31k parameters, for lenet-300-100's 51k
    """

    if init not in ("trained", "random"):
        raise SlimError(f"unknown zoo student init {init!r} (known: trained, random)")
    student = fresh_copy(load(name.removeprefix("builtin:")))
    if init == "random":
        reinitialise_(student, seed)
    return student


@torch.no_grad()
def reinitialise_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Fresh default-initialised weights for every layer of `model` (same shapes), seeded.

    >>> scratch = reinitialise_(fresh_copy(student), seed=3)   # the student's architecture, untrained
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
    return model
