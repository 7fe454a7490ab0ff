"""Structured pruning on models: trace coupled groups, score channels, cut, retrain, repeat.

Rounds follow Network Trimming (Hu et al. 2016): measure, trim, retrain; a round whose
validation score falls more than `max_drop` points below the original is undone and trimming
stops, so the result is always the last model inside the budget.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import FilterFn, matches
from slimkit.core.task import Task
from slimkit.pruning.finetune import finetune, training_data, validation
from slimkit.pruning.importance import above_mean_std, activation_mean, apoz, channels_first, hooked, weight_norm
from slimkit.surgery.edits import edit_log
from slimkit.surgery.shrink import prune_groups_, same_output_shape
from slimkit.surgery.trace import Group, trace_groups
from slimkit.train.supervised import class_loss

Scorer = Callable[[nn.Module, list[Group]], dict[str, torch.Tensor]]


def prunable_groups(model: nn.Module, task: Task, targets, ignore, filter_fn: FilterFn | None) -> list[Group]:
    """Traced groups whose producer is selected; one-line errors when none is or the tracer fails."""
    groups, problems = trace_groups(model, task.example_inputs(2))
    patterns = [targets] if isinstance(targets, str) else list(targets or [])
    for p in patterns:
        if not any(matches(g.producer, p) for g in groups):
            why = next((f": {name} {msg}" for name, msg in problems.items() if matches(name, p)), "")
            raise SlimError(f"module selector {p!r} matches no prunable layer{why}")
    chosen = [g for g in groups
              if (not patterns or any(matches(g.producer, p) for p in patterns))
              and not any(matches(g.producer, p) for p in ignore)
              and (filter_fn is None or filter_fn(model.get_submodule(g.producer), g.producer))]
    if not chosen:
        raise SlimError("no prunable group of layers found (" +
                        "; ".join(f"{k}: {v}" for k, v in problems.items()) + ")")
    return chosen


def param_count(model: nn.Module) -> int:
    return sum(t.numel() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


def require_relu(groups: list[Group]) -> None:
    """APoZ counts zeros after a ReLU: a one-line error for the first group without one."""
    missing = [g.producer for g in groups if not g.activation]
    if missing:
        raise SlimError(f"APoZ needs a ReLU after {missing[0]}; use weight-norm pruning there")


def apoz_scores(task: Task, samples: int) -> Scorer:
    """Scores = APoZ over `samples` calibration inputs (higher = less useful)."""
    def score(model, groups):
        require_relu(groups)
        sites = {g.producer: g.activation for g in groups}
        return apoz(model, task.calibration(samples), sites, task.forward)
    return score


def activation_scores(task: Task, samples: int) -> Scorer:
    """Scores = minus (mean |activation| after the ReLU x norm of the unit's outgoing weights)."""
    def score(model, groups):
        sites = {g.producer: g.activation or g.producer for g in groups}
        mean = activation_mean(model, task.calibration(samples), sites, task.forward)
        out = {}
        for g in groups:
            fan_out = torch.zeros(g.channels)
            for m in g.members:
                if m.role == "in":
                    w = model.get_submodule(m.module).weight.detach().transpose(0, 1)
                    cols = w[m.offset:m.offset + g.channels * m.block].reshape(g.channels, m.block, -1)
                    fan_out += cols.pow(2).sum((1, 2)).sqrt()
            out[g.producer] = -(mean[g.producer].float() * fan_out)
        return out
    return score


def taylor_scores(task: Task, batches: int = 8) -> Scorer:
    """Scores = minus first-order Taylor importance (Molchanov et al. 2017): |activation x
    gradient of the loss|, summed over positions, averaged over `batches` labelled batches."""
    def score(model, groups):
        sites = {g.producer: g.activation or g.producer for g in groups}
        sums: dict[str, torch.Tensor] = {}

        def hook(key):
            def fn(module, _inputs, output):
                def grad_hook(grad, a=output.detach()):
                    prod = channels_first(module, a * grad)
                    prod = prod.reshape(prod.shape[0], prod.shape[1], -1).sum(2).abs().sum(0)
                    sums[key] = sums.get(key, 0) + prod
                output.register_hook(grad_hook)
            return fn

        try:
            with hooked(model, sites, hook):
                for inputs, target in training_data(task, 64, 0)[:batches]:
                    model.zero_grad()
                    class_loss(task.forward(model, inputs), target).backward()
        finally:
            model.zero_grad()
        return {k: -v for k, v in sums.items()}
    return score


def norm_scores(p: int) -> Scorer:
    """Scores = minus the L`p` norm of each filter / neuron, summed over the producers a residual
    add or a gate couples (higher = less useful)."""
    return lambda model, groups: {g.producer: -sum(weight_norm(model.get_submodule(name).weight, p)
                                                   for name in g.producers()) for g in groups}


def _restore(model: nn.Module, backup: nn.Module) -> None:
    for name, child in backup.named_children():
        setattr(model, name, child)
    model.__dict__["slimkit_edits"] = edit_log(backup)


def guard_score(task: Task, model: nn.Module) -> float | None:
    """The score each round is checked against `max_drop` with: the validation score, else the
    task's own score (a task written without `validation_score` still keeps its guard)."""
    own = validation(task, model)
    if own is not None:
        return own
    with torch.no_grad():
        return float(task.score(model))


def trim_(model: nn.Module, task: Task, select: Callable[[nn.Module], list[Group]], scorer: Scorer,
          choose: Callable[[torch.Tensor], torch.Tensor], cfg) -> list[dict]:
    """Rounds of score -> cut (channels where `choose(scores)` is True) -> retrain.

    `cfg` carries rounds, epochs, lr, batch_size, seed, max_drop, target_ratio, min_channels.
    Returns one record per round kept (params, validation score, channels per layer).
    """
    x = task.example_inputs(2)
    start_params, start_val = param_count(model), guard_score(task, model)
    history: list[dict] = []
    for r in range(cfg.rounds):
        groups = select(model)
        scores = scorer(model, groups)
        plan = []
        for g in groups:
            cut = choose(scores[g.producer])
            floor = max(cfg.min_channels, 1)
            if int((~cut).sum()) < floor:     # never empty a layer: keep the best `floor`
                cut = torch.ones_like(cut)
                cut[scores[g.producer].argsort()[:floor]] = False
            if cut.any():
                plan.append((g, torch.nonzero(~cut).flatten()))
        if not plan:
            break
        backup = copy.deepcopy(model)
        prune_groups_(model, plan, check=same_output_shape(lambda m: task.forward(m, x), model))
        if cfg.epochs:
            finetune(model, task, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed + r,
                     select_from=cfg.epochs // 2)
        val = guard_score(task, model)
        if start_val is not None and val is not None and 100 * (start_val - val) > cfg.max_drop:
            _restore(model, backup)
            warnings.warn(f"{cfg.method}: round {r + 1} lost {100 * (start_val - val):.2f} validation "
                          f"points (max_drop {cfg.max_drop}); undone, stopping", stacklevel=2)
            break
        history.append({"round": r + 1, "params": param_count(model), "val": val,
                        "channels": {g.producer: len(k) for g, k in plan}})
        if cfg.target_ratio and start_params / param_count(model) >= cfg.target_ratio:
            break
    return history


def fraction_cut(ratio: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Cut the `ratio` highest-scored (least useful) channels of each group."""
    def choose(scores):
        n = math.floor(ratio * scores.numel())
        cut = torch.zeros(scores.numel(), dtype=torch.bool)
        cut[scores.argsort(descending=True, stable=True)[:n]] = True
        return cut
    return choose


def mean_std_cut(std: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda scores: above_mean_std(scores, std)
