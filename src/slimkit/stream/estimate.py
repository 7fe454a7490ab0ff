"""What a weight-only recipe does to a bare checkpoint, tensor by tensor, without running it.

`slimkit inspect` on a `.safetensors` file estimates each recipe with the same selection
(`StreamPlan.selected`) and the same layouts (`slimkit.stream.encode.known_layout`) that
`compress_checkpoint` uses, so the two always agree on what a recipe touches; a recipe that touches
no tensor is refused by both in the same words (`untouched`).

>>> rows = checkpoint_estimates(items_of(state), ["int8", "deep-compression"])
>>> rows[0]["recipe"], rows[0]["stages"][0]["basis"]
('int8', '3 of 7 tensors: int8 per-row')
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from slimkit.core.errors import SlimError
from slimkit.core.streaming import StreamPlan
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.checkpoint import Item
from slimkit.stream.encode import known_layout
from slimkit.stream.plan import plan_from_recipe

ENTRY_BYTES = 160    # header bytes one stored array adds (a safetensors entry and its manifest entry)


def items_of(state: dict[str, torch.Tensor]) -> list[Item]:
    """The checkpoint items of an in-memory state dict (as `open_checkpoint` lists a file's)."""
    return [Item(name, 0, str(t.dtype).removeprefix("torch."), tuple(t.shape), 0, t.numel() * t.element_size())
            for name, t in state.items()]


def touched(items: list[Item], plan: StreamPlan) -> list[Item]:
    """The items `plan` compresses (every other one is copied as it is)."""
    return [it for it in items if plan.selected(it.name, it.shape, it.is_float)]


def untouched(recipe: str, where: str, plan: StreamPlan) -> SlimError:
    """The one-line error for a recipe that would touch no tensor of checkpoint `where`."""
    picked = f"; targets {plan.targets}" if plan.targets else ""
    left = f"; ignore {plan.ignore}" if plan.ignore else ""
    return SlimError(f"recipe {recipe!r} touches no tensor of {where}: a bare checkpoint compresses float tensors "
                     f"of 2 or more dimensions and at least {plan.min_numel} values{picked}{left}")


def _stored_bytes(item: Item, plan: StreamPlan) -> tuple[float, str]:
    """(estimated stored bytes, how) of one selected item."""
    layout = known_layout(item, plan)
    if layout is not None:
        _, how, arrays = layout
        return sum(math.prod(shape) * dtype.itemsize for _, dtype, shape in arrays) + ENTRY_BYTES * len(arrays), how
    numel = math.prod(item.shape)
    kept = numel if plan.sparsity is None else numel - math.floor(plan.sparsity * numel)
    positions = 0.0 if plan.sparsity is None else min(numel / 8, kept * 2)      # bitmask or gaps, the smaller
    if plan.kmeans is not None:
        bits = plan.kmeans.bits
        how = f"kmeans {bits}-bit" + ("" if plan.sparsity is None else f" after magnitude {plan.sparsity:g}")
        return kept * bits / 8 + 2 * 2**bits + positions + 3 * ENTRY_BYTES, how
    value_bytes = 2 if plan.value_dtype == "float16" else item.itemsize
    return kept * value_bytes + positions + 2 * ENTRY_BYTES, f"magnitude {plan.sparsity:g}"


def estimate_checkpoint(items: list[Item], recipe, where: str = "this checkpoint") -> dict:
    """The expected size under `recipe` (a `Recipe`), in the row format of
    `slimkit.pipeline.preflight.estimate_recipe`: {"bytes", "exact", "stages", "error"}."""
    try:
        plan = plan_from_recipe(recipe)
    except SlimError as exc:
        return {"bytes": None, "exact": False, "stages": [], "error": str(exc).splitlines()[0]}
    chosen = {it.name for it in touched(items, plan)}
    if not chosen:
        return {"bytes": None, "exact": False, "stages": [], "error": str(untouched(recipe.name, where, plan))}
    total, hows = 8.0 + 256, Counter()
    for it in items:
        if it.name not in chosen:
            total += it.nbytes + ENTRY_BYTES
            continue
        size, how = _stored_bytes(it, plan)
        total += size
        hows[how] += 1
    basis = f"{len(chosen)} of {len(items)} tensors: " + ", ".join(f"{h}" + (f" x{n}" if len(hows) > 1 else "")
                                                                    for h, n in hows.most_common())
    stages = [{"method": cfg.method, "bytes": None, "touched": {}, "skipped": {}, "basis": basis}
              for cfg in recipe.stages]
    return {"bytes": math.ceil(total), "exact": False, "stages": stages, "error": None}


def checkpoint_estimates(items: list[Item], names: list[str], baseline: int, where: str) -> list[dict]:
    """`estimate_checkpoint` for each recipe of `names`, in the rows `slimkit inspect` prints."""
    rows = []
    for name in names:
        recipe = load_recipe(name, check_requires=False)
        est = estimate_checkpoint(items, recipe, where)
        rows.append({"recipe": name, "made_for": recipe.models, "for_this_model": True, "baseline_bytes": baseline,
                     "ratio": round(baseline / est["bytes"], 2) if est["bytes"] else None, **est})
    return sorted(rows, key=lambda r: (r["bytes"] is None, r["bytes"] or 0))
