"""`compress`: one call from a model, a recipe and your data to a checked artifact.

The recipe runs on a copy of the model (`run_recipe`); the result is measured against the
original the same way `slimkit compress` does (the keys of its `--json` line): bytes against the
original's fp32 bytes, and the score before and after, on your `metric`, or else on accuracy or
output fidelity on a held-back part of `data`. A drop larger than `max_drop` is reported as
`within_budget: False` (the CLI warns and exits with code 3); a recipe that changes nothing is an
error, never a "1.0x" file. The file written to `out` is reloaded from disk and must compute what
the compressed model computes on a batch of the task's inputs before it takes the name `out`
(`slimkit.pipeline.verify`); if it does not, `compress` raises SlimError and leaves no file.

>>> model, result = sk.compress(model, "int8", data=loader, metric=my_accuracy, out="mine.slim")
>>> result["ratio"], result["baseline_score"], result["score"], result["within_budget"]
(3.9, 0.981, 0.979, True)
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import MethodConfig
from slimkit.core.original import remember_original
from slimkit.core.provenance import task_for
from slimkit.core.user_task import Metric, task_from
from slimkit.dist.collectives import is_main
from slimkit.eval.measure import Measurement, evaluate
from slimkit.io.artifact import save
from slimkit.pipeline.recipes import Recipe, load_recipe, run_recipe
from slimkit.pipeline.runner import run_pipeline
from slimkit.pipeline.verify import original_architecture, reload_check
from slimkit.zoo.resolve import resolve

DEFAULT_MAX_DROP = 1.0     # points of a score in [0, 1] (accuracy, fidelity), else percent of the baseline
EXIT_OVER_BUDGET = 3       # the CLI's exit code when the result lost more than max_drop


@dataclass
class RunOptions:
    """How a caller such as the CLI runs `compress`; the defaults suit a library call."""

    on_stage: Callable[[int, MethodConfig, nn.Module], None] | None = None
    stages_folder: Path | None = None        # save and measure every stage there (`run_pipeline`)
    info: dict = field(default_factory=dict)  # added to the artifact's manifest info
    overwrite: bool = True                   # False: never replace an existing `out`
    status: Callable[[str], AbstractContextManager] = lambda _message: nullcontext()
    timing: bool = True                      # measure latency before and after
    verify: bool = True                      # reload the written file and compare it with the model in memory


def compress(model: nn.Module | str, recipe: Recipe | MethodConfig | list[MethodConfig] | str,
             data: object = None, metric: Metric | None = None, out: str | Path | None = None,
             max_drop: float | None = None, *, inplace: bool = False,
             options: RunOptions | None = None) -> tuple[nn.Module, dict]:
    """Compress `model` with `recipe`, check it against the original, optionally save it to `out`.

    `recipe`: a shipped name or a .yaml path, a `Recipe`, one method config or a list of them.
    `data`: a Task, a DataLoader or an iterable of batches (`slimkit.core.user_task`); `metric`:
    `metric(model) -> float`, higher is better. A builtin or Hugging Face model brings its own task.
    `max_drop`: the score `compress` may lose, in points for scores in [0, 1], else in percent of
    the baseline; default the recipe's `max_drop`, else 1. The model is copied first unless
    `inplace`. Returns the compressed model and the measurement, as `slimkit compress --json`
    prints it: out, bytes, baseline_bytes, ratio, score, baseline_score, score_name, drop,
    drop_unit, max_drop, within_budget, latency_ms, baseline_latency_ms, recipe.

    >>> model, result = compress(model, [sk.Int8Config()], data=loader, out="mine.slim")
    """
    options = options or RunOptions()
    plan = as_recipe(recipe)
    limit = budget_of(max_drop, plan)
    net = resolve(model) if isinstance(model, str) else model
    if not isinstance(net, nn.Module):
        raise SlimError(f"compress needs an nn.Module or a model reference, got a {type(model).__name__}")
    if not inplace:
        net = copy.deepcopy(net)
    task = task_from(data, metric, net) or task_for(net)
    if task is None:
        raise SlimError("compress needs data= (a DataLoader or a list of batches of your inputs) to check the result "
                        "against the original; add metric= to check it on your own score")
    remember_original(net)
    architecture = original_architecture(net) if out is not None else None   # for the reload check
    with options.status("measuring the original"):
        before = evaluate(net, task, timing=options.timing)
    mark = fingerprint(net)
    with options.status(f"compressing with {plan.name} ({len(plan.stages)} stage(s))"), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if options.stages_folder is not None:
            net, _ = run_pipeline(net, plan, task, options.stages_folder, timing=options.timing)
        else:
            net = run_recipe(net, plan, task, on_stage=options.on_stage)
    for w in caught:   # shown as they would have been; the last one may say why nothing changed
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if fingerprint(net) == mark:
        why = f": {str(caught[-1].message).splitlines()[0]}" if caught else \
            " (no layer its methods handle, or all left out by targets / ignore); `slimkit inspect` shows what " \
            "each stage can do"
        raise SlimError(f"recipe {plan.name!r} changed nothing in this model{why}")
    if not is_main():   # under torchrun every rank compressed; rank 0 saves and measures
        return net, {}
    if out is not None:   # the file is reloaded and compared with `net` before it takes the name `out`
        verify = reload_check(net, task, out, architecture) if options.verify else None
        save(net, out, info={"recipe": plan.name, **options.info}, overwrite=options.overwrite, verify=verify)
    with options.status("measuring the result"):
        after = evaluate(net, task, path=out, timing=options.timing)
    return net, result_of(before, after, limit, out, plan.name)


def as_recipe(recipe: Recipe | MethodConfig | list[MethodConfig] | str) -> Recipe:
    """`recipe` as a `Recipe`: a shipped name or .yaml path, a config, or a list of configs."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, str | Path):
        return load_recipe(str(recipe))
    stages = [recipe] if isinstance(recipe, MethodConfig) else None
    if isinstance(recipe, list | tuple):
        stages = list(recipe)
    if not stages or not all(isinstance(s, MethodConfig) for s in stages):
        raise SlimError("recipe must be a shipped recipe name, a .yaml path, a Recipe, or method configs "
                        f"(e.g. [sk.Int8Config()]), got {type(recipe).__name__}")
    return Recipe(name="+".join(s.method for s in stages), description="", stages=stages)


def budget_of(max_drop: float | None, recipe: Recipe) -> float:
    """The allowed drop: `max_drop`, else the recipe's, else DEFAULT_MAX_DROP."""
    value = max_drop if max_drop is not None else recipe.max_drop
    if value is None:
        return DEFAULT_MAX_DROP
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise SlimError(f"max_drop must be a number of points >= 0, got {value!r}")
    return float(value)


def score_drop(before: float | None, after: float | None) -> tuple[float | None, str]:
    """(how much `after` lost against `before`, unit): points ("pt", 100 x the difference) for a
    baseline in [0, 1], else percent of the baseline ("%"). Higher scores are better."""
    if before is None or after is None:
        return None, "pt"
    if 0.0 <= before <= 1.0:
        return round(100 * (before - after), 4), "pt"
    return round(100 * (before - after) / abs(before), 4), "%"


def result_of(before: Measurement, after: Measurement, limit: float, out: str | Path | None, name: str) -> dict:
    """The measurement `compress` returns (and `slimkit compress --json` prints)."""
    drop, unit = score_drop(before.score, after.score)
    return {"out": None if out is None else str(out), "bytes": after.bytes, "baseline_bytes": after.baseline_bytes,
            "ratio": round(after.ratio, 3), "score": after.score, "baseline_score": before.score,
            "score_name": after.score_name, "drop": drop, "drop_unit": unit, "max_drop": limit,
            "within_budget": drop is not None and drop <= limit + 1e-9,
            "latency_ms": after.latency_ms, "baseline_latency_ms": before.latency_ms, "recipe": name,
            **({"metrics": after.metrics, "baseline_metrics": before.metrics} if after.metrics else {})}


def over_budget_line(result: dict) -> str:
    """The one warning line for a result outside its budget."""
    if result["drop"] is None:
        return "the result could not be scored, so it is not known to be within max_drop"
    return (f"the result lost {result['drop']:.2f} {result['drop_unit']} of {result['score_name']} "
            f"({result['baseline_score']:.4f} -> {result['score']:.4f}), more than max_drop {result['max_drop']:g}; "
            "fine-tune with your labels (epochs / finetune_epochs), compress less, or raise max_drop")


def fingerprint(model: nn.Module) -> str:
    """A digest of the model's structure, codecs and tensor values: equal before and after a recipe
    means the recipe changed nothing."""
    digest = hashlib.blake2b(digest_size=16)
    for name, module in model.named_modules():
        codecs = json.dumps(module.__dict__.get("slim_codecs", {}), sort_keys=True, default=str)
        digest.update(f"{name}:{type(module).__qualname__}:{codecs};".encode())
    for key, t in model.state_dict().items():
        digest.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        if not t.is_meta and t.numel():
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
