"""Size estimates of the pruning methods (`magnitude`, `nm`, `wanda`, `sparsegpt`, `weight-norm`, `structured`, `apoz`)
for `slimkit inspect` (see `slimkit.io.sizing`).

Unstructured sparsity: the current weights' mask, its positions coded by the real `sparse`
codec ("about"). Structured pruning: the channels cut on a copy of the model, groups traced by
the method's own code; where data decides how far a method goes (APoZ), the estimate assumes
the config's target is reached.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import matches
from slimkit.io.sizing import Note, Plan, Stored, estimates, note, sparse_record, tensor_key
from slimkit.pruning.masks import magnitude_masks, nm_mask
from slimkit.pruning.structured import param_count, prunable_groups, require_relu
from slimkit.pruning.transformer import find_blocks, prune_ffn_, prune_heads_
from slimkit.pruning.unstructured import prunable
from slimkit.surgery.shrink import prune_groups_
from slimkit.surgery.trace import trace_groups

APOZ_CUT = 0.16  # share of a normal spread above mean + 1 std: what one APoZ round removes


def _sparse(plan: Plan, name: str, m: nn.Module, mask: torch.Tensor, cfg, how: str) -> None:
    bits = 16 if cfg.value_dtype.value == "float16" else 32
    plan.set(tensor_key(name, "weight"), sparse_record(mask, bits, f"{how}, {bits}-bit values"))
    bias = tensor_key(name, "bias")
    if getattr(m, "bias", None) is not None and cfg.bias_dtype.value == "float16" and bias not in plan.touched:
        plan.set(bias, Stored(m.bias.numel(), m.bias.numel(), 16, how="float16", kind="cast"))


@estimates("magnitude")
def _magnitude(plan: Plan, cfg, task) -> Note:
    modules = prunable(plan.model, cfg.targets, cfg.ignore, None)
    masks = magnitude_masks({k: m.weight for k, m in modules.items()}, cfg.sparsity, cfg.scope.value)
    touched = {}
    for name, m in modules.items():
        how = f"sparse, {1 - int(masks[name].sum()) / m.weight.numel():.1%} zeros"
        _sparse(plan, name, m, masks[name], cfg, how)
        touched[name] = how
    basis = "about: the current weights' mask, coded by the sparse codec" + (
        " (fine-tuning may share a global threshold out differently)" if cfg.scope.value == "global" else "")
    return note(touched, {}, basis)


@estimates("nm")
def _nm(plan: Plan, cfg, task) -> Note:
    touched, skipped = {}, {}
    for name, m in prunable(plan.model, cfg.targets, cfg.ignore, None).items():
        fan_in = m.weight[0].numel()
        if fan_in % cfg.m:
            skipped[name] = f"input size {fan_in} is not a multiple of {cfg.m}"
            continue
        how = f"{cfg.n}:{cfg.m} sparse"
        _sparse(plan, name, m, nm_mask(m.weight, cfg.n, cfg.m), cfg, how)
        touched[name] = how
    if not touched:
        raise SlimError(f"no selected layer has an input size divisible by {cfg.m}")
    return note(touched, skipped, "about: nonzeros exact; positions from the current weights' mask")


@estimates("wanda", "sparsegpt")
def _calibrated(plan: Plan, cfg, task) -> Note:
    """Values exact; positions from the same pattern chosen by magnitude (the data moves them, the
    sparse codec's cost of an unstructured mask or an N:M index barely changes)."""
    if task is None:
        raise SlimError(f"{cfg.method} needs calibration data: pass data=<task> (e.g. the model's zoo task)")
    modules, skipped = cfg.layers(plan.model)
    touched = {}
    for name, m in modules.items():
        how = f"{cfg.pattern} sparse ({cfg.method})"
        _sparse(plan, name, m, cfg.magnitude_mask(m), cfg, how)
        touched[name] = how
    return note(touched, skipped, "about: nonzeros exact; positions from the magnitude mask of the same pattern")


def _channel_rounds(plan: Plan, cfg, task, cut: float, rounds: int) -> tuple[dict, dict]:
    """Cut a fraction `cut` of every selected group's channels per round (the kept ones: the first)."""
    if task is None:
        raise SlimError(f"{cfg.method} needs example inputs to trace the model (a builtin model or a "
                        ".slim file made from one)")
    model = plan.editable()
    start = param_count(model)
    channels: dict[str, int] = {}
    for _ in range(rounds):
        groups = prunable_groups(model, task, cfg.targets, cfg.ignore, None)
        if cfg.method == "apoz":
            require_relu(groups)   # as the real run: APoZ is measured after a ReLU
        cuts = []
        for g in groups:
            keep = max(min(cfg.min_channels, g.channels), g.channels - math.floor(cut * g.channels))
            if keep < g.channels:
                cuts.append((g, torch.arange(keep)))
                channels[g.producer] = keep
        if not cuts:
            break
        prune_groups_(model, cuts)
        if cfg.target_ratio and start / param_count(model) >= cfg.target_ratio:
            break
    plan.refresh()
    _, problems = trace_groups(model, task.example_inputs(2))
    touched = {name: f"{n} channels kept" for name, n in channels.items()}
    return touched, problems


@estimates("weight-norm", "structured", "apoz")
def _structured(plan: Plan, cfg, task) -> Note:
    if cfg.method == "structured" and find_blocks(plan.model):
        return _transformer(plan, cfg)
    if cfg.method == "apoz":
        touched, skipped = _channel_rounds(plan, cfg, task, APOZ_CUT, cfg.rounds)
        basis = (f"about: data decides; assumes each round removes the {APOZ_CUT:.0%} of neurons above "
                 f"mean + std until {cfg.target_ratio or '-'}x fewer parameters or {cfg.rounds} rounds")
        return note(touched, skipped, basis)
    touched, skipped = _channel_rounds(plan, cfg, task, cfg.ratio, cfg.rounds)
    basis = (f"at least: {cfg.ratio:.0%} of each group's channels removed per round, {cfg.rounds} round(s), "
             "unless a round is undone for losing more than max_drop")
    return note(touched, skipped, basis)


def _transformer(plan: Plan, cfg) -> Note:
    model = plan.editable()
    patterns = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    touched = {}
    for name, block in find_blocks(model).items():
        if (patterns and not any(matches(name, p) for p in patterns)) or any(matches(name, p) for p in cfg.ignore):
            continue
        ffn = block.intermediate.dense.out_features
        heads = block.attention.self.num_attention_heads
        keep_ffn, keep_heads = max(1, ffn - int(cfg.ratio * ffn)), max(1, heads - int(cfg.head_ratio * heads))
        if keep_ffn < ffn:
            prune_ffn_(model, name, torch.arange(keep_ffn))
        if keep_heads < heads:
            prune_heads_(model, name, torch.arange(keep_heads))
        touched[name] = f"{keep_ffn}/{ffn} FFN neurons, {keep_heads}/{heads} heads"
    if not touched:
        raise SlimError("no transformer block matches the selection")
    plan.refresh()
    return note(touched, {}, "exact: FFN neurons and heads removed by the ratios")
