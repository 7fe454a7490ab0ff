"""Pre-flight: before any work, what each family can do to a model and what each shipped recipe
would make of it.

- `capabilities(model, task)`: per layer, what quantization, pruning and sharing would do to it,
  and for layers that stay float, why (answered by each method's own selection code).
- `coupled_groups(model, task)`: the groups structured pruning cuts together
  (`fc1[out] <-> fc2[in]`), transformer blocks, and why other layers cannot be cut.
- `estimate_recipe(model, recipe, task)`: the expected file size under a recipe, from shapes and
  the config only (no training, no calibration data); see `slimkit.io.sizing` and each method package's `estimate.py`.
- `check_recipe(model, recipe, task)`: the same sizing, run before any slow work (the baseline
  measurement, calibration): a stage that cannot apply is a one-line `ConfigError`.

>>> report = preflight(sk.zoo.load("lenet-300-100"))
>>> report["groups"]["groups"][0]["text"]
'fc1[out] <-> fc2[in]'
>>> next(r for r in report["recipes"] if r["recipe"] == "int8")["bytes"]     # the real file: 53,756
53793
"""

from __future__ import annotations

from torch import nn

from slimkit.core.errors import ConfigError, SlimError
from slimkit.core.provenance import base_of
from slimkit.io import sizing
from slimkit.io.sizing import estimate_stage
from slimkit.pipeline.recipes import load_recipe, shipped
from slimkit.pruning.transformer import find_blocks
from slimkit.pruning.unstructured import WEIGHTED as PRUNABLE
from slimkit.quantization.convert import select_targets
from slimkit.quantization.groups import fit_group
from slimkit.sharing.api import WEIGHTED as CLUSTERABLE
from slimkit.sharing.apply_lowrank import FACTORABLE
from slimkit.surgery.trace import trace_groups

GROUP_SIZES = (32, 64, 128)
NORMS = (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm)


def _own_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _quant_cell(name: str, module: nn.Module, skipped: dict[str, str]) -> tuple[str, str | None]:
    """(what quantization does, why it stays float or None)."""
    kind = type(module).__name__
    if type(module) is nn.Linear:
        groups = _groups(module.in_features, f"{module.in_features} inputs")
        return f"int8 w8a8; 1-8 bit rtn/gptq/qat ({groups}); bias stays fp32", None
    if type(module) is nn.Conv2d and name not in skipped:
        cols = module.weight[0].numel()
        return (f"int8 weights (weight-only); 1-8 bit rtn/gptq/qat ({_groups(cols, f'in*kh*kw={cols}')}); "
                "bias stays fp32"), None
    if type(module) is nn.Embedding:
        return "int8 rows (int8); n-bit rows (rtn/gptq embedding_bits)", None
    if hasattr(module, "slim_type"):
        return "stays as stored", f"already compressed ({kind})"
    if name in skipped:
        return "stays float", f"{skipped[name]} by int8/rtn/gptq/qat (Linear, Conv2d and Embedding only)"
    if isinstance(module, NORMS):
        return "stays float", f"{kind}: normalization parameters are never quantized"
    return "stays float", f"{kind}: not a quantization target"


def _groups(cols: int, where: str) -> str:
    """The groups rtn/gptq give a layer with `cols` inputs for the usual group sizes, after their
    per-layer fallback (`slimkit.quantization.groups`): 'per-channel or groups of 32/64/128
    (as 30/60/100 over 300 inputs)'."""
    fits = [fit_group(cols, g) for g in GROUP_SIZES]
    if all(f == cols for f in fits):
        return f"per-channel over {where}"
    asked = "/".join(map(str, GROUP_SIZES))
    if fits == list(GROUP_SIZES):
        return f"per-channel or groups of {asked}"
    got = "/".join("per-channel" if f == cols else str(f) for f in fits)
    return f"per-channel or groups of {asked} (as {got} over {where})"


BLOCK_LAYERS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "intermediate.dense", "output.dense")


def capabilities(model: nn.Module, task=None, groups: dict | None = None) -> list[dict]:
    """One row per module owning parameters: quantization, pruning and sharing, with reasons.
    `groups` is `coupled_groups(model, task)` when already computed.

    >>> [r["quantization"] for r in capabilities(lenet5)][0][:30]
    'int8 weights (weight-only); 1-8'
    """

    _, skipped = select_targets(model, None, [], None, (nn.Linear, nn.Embedding, nn.Conv2d))
    groups = groups or coupled_groups(model, task)
    producers = {g["producer"]: g["text"] for g in groups["groups"]}
    in_block = {f"{b}.{p}" for b in groups["blocks"] for p in BLOCK_LAYERS}
    rows = []
    for name, module in model.named_modules():
        if not name or not _own_params(module):
            continue
        quant, why = _quant_cell(name, module, skipped)
        prune = []
        if isinstance(module, PRUNABLE):
            prune.append("magnitude")
            fan_in = module.weight[0].numel()
            prune.append("2:4" if fan_in % 4 == 0 else f"no 2:4 (input {fan_in} not a multiple of 4)")
        if name in producers:
            prune.append("structured (outputs)")
        elif name in groups["unprunable"]:
            prune.append(f"not structured: {groups['unprunable'][name]}")
        elif name in in_block:
            prune.append("structured (transformer heads / FFN)")
        share = []
        if isinstance(module, CLUSTERABLE):
            share.append("kmeans")
        if isinstance(module, FACTORABLE) and getattr(module, "groups", 1) == 1:
            share.append("lowrank")
        if type(module) is nn.Linear:
            share.append("hashed")
        rows.append({"layer": name, "type": type(module).__name__, "params": _own_params(module),
                     "quantization": quant, "float_reason": why,
                     "pruning": ", ".join(prune) or "not prunable",
                     "sharing": ", ".join(share) or "not shareable"})
    return rows


def coupled_groups(model: nn.Module, task=None) -> dict:
    """Structured-pruning groups (traced), transformer blocks, and layers that cannot be cut.

    >>> coupled_groups(lenet, task)["groups"][0]["text"]
    'fc1[out] <-> fc2[in]'
    """

    blocks = sorted(find_blocks(model))
    out: dict = {"groups": [], "unprunable": {}, "blocks": blocks, "error": None}
    if task is None:
        out["error"] = "no example inputs to trace with (a builtin model or a .slim file made from one)"
        return out
    try:
        groups, problems = trace_groups(model, task.example_inputs(2))
    except SlimError as exc:
        out["error"] = str(exc)
        return out
    out["groups"] = [{"producer": g.producer, "channels": g.channels, "text": str(g),
                      "members": [str(m) for m in g.members], "relu_after": g.activation} for g in groups]
    out["unprunable"] = dict(problems)
    return out


def estimate_recipe(model: nn.Module, recipe, task=None) -> dict:
    """Expected size of `model` after `recipe`, stage by stage; never trains or reads data.

    Returns {"bytes", "exact", "stages": [{"method", "bytes", "touched", "skipped", "basis"}],
    "error"}; a stage that cannot apply to this model gives "error" (one line) and no size.
    """
    plan = sizing.Plan.of(model)
    stages = []
    for config in recipe.stages:
        try:
            note = estimate_stage(plan, config, task)
        except (SlimError, ValueError) as exc:
            return {"bytes": None, "exact": False, "stages": stages,
                    "error": f"stage {len(stages) + 1} ({config.method}): {str(exc).splitlines()[0]}"}
        stages.append({"method": config.method, "bytes": plan.total(), **note})
    if not any(s["touched"] for s in stages):
        return {"bytes": None, "exact": False, "stages": stages,
                "error": "touches no layer of this model (already compressed, or nothing it handles)"}
    return {"bytes": plan.total(), "exact": plan.exact() and all(s["basis"].startswith("exact") for s in stages),
            "stages": stages, "error": None}


def check_recipe(model: nn.Module, recipe, task=None) -> None:
    """Refuse, in one line, a recipe that cannot apply to `model`, before any slow work (measuring
    the original, calibrating, training). Each stage is sized from shapes and its config by the
    method's own estimate, which raises what its `apply` would (gptq without data, a structured
    prune with nothing to trace, N:M on widths M does not divide); a recipe that touches no layer
    is refused too. Checking stops at a stage whose method has no estimate (what follows depends on
    its real result). Never trains, calibrates or reads data; leaves `model` alone.

    >>> check_recipe(lenet, load_recipe("int4"), None)
    Traceback (most recent call last):
    ConfigError: recipe int4, stage 1 (gptq): gptq needs calibration data: pass data=<task> ...
    """
    plan = sizing.Plan.of(model)
    touched = False
    for i, config in enumerate(recipe.stages):
        if config.method not in sizing.ESTIMATORS:
            return
        try:
            touched |= bool(estimate_stage(plan, config, task)["touched"])
        except (SlimError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"recipe {recipe.name}, stage {i + 1} ({config.method}): {first}") from None
    if recipe.stages and not touched:
        raise ConfigError(f"recipe {recipe.name} touches no layer of this model (already compressed, "
                          "or nothing its methods handle)")


def model_name(model: nn.Module) -> str | None:
    """The builtin name `model` came from, if any."""

    base = base_of(model)
    return base.get("name") if base.get("kind") == "zoo" else None


def recipe_estimates(model: nn.Module, task=None, names: list[str] | None = None) -> list[dict]:
    """`estimate_recipe` for every shipped recipe (or `names`), smallest first, failures last."""

    baseline = sizing.file_size(model)
    mine = model_name(model)
    rows = []
    for name in names or sorted(shipped()):
        recipe = load_recipe(name, check_requires=False)   # an estimate never needs the recipe's data
        est = estimate_recipe(model, recipe, task)
        rows.append({"recipe": name, "made_for": recipe.models,
                     "for_this_model": not recipe.models or mine in recipe.models, "baseline_bytes": baseline,
                     "ratio": round(baseline / est["bytes"], 2) if est["bytes"] else None, **est})
    return sorted(rows, key=lambda r: (r["bytes"] is None, not r["for_this_model"], r["bytes"] or 0))


def preflight(model: nn.Module, task=None, recipes: list[str] | None = None) -> dict:
    """Everything `slimkit inspect` reports before any work, as one JSON-ready dict."""
    groups = coupled_groups(model, task)
    return {"capabilities": capabilities(model, task, groups), "groups": groups,
            "baseline_bytes": sizing.file_size(model), "recipes": recipe_estimates(model, task, recipes),
            "estimate_note": "sizes are estimates from shapes and configs, not measurements"}
