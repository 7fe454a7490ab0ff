"""Layer-by-layer calibration driver: collect each Linear's input Hessian (a Conv2d's: of its
im2col patches) with forward hooks, quantize it, and move on, so later layers see the
already-quantized earlier ones (as GPTQ does).

Linears that read the same input tensor (a block's q/k/v projections) form one stage and are
calibrated by the same pass. On a transformer (`slimkit.dist.blocks`) the driver works block by
block: block i runs on its cached inputs for each of its stages, then once more to produce the
inputs of block i+1, so the model's prefix is never re-run. Elsewhere each stage re-runs the
model's forward, stopped (by an exception raised in a hook) as soon as the stage's inputs are in.

Under an initialised `torch.distributed` group each rank calibrates on its share of the batches
(`slimkit.dist.collectives.shard`) and the Hessians are summed over ranks, so every rank
quantizes with the single-process Hessians.

>>> for stage, hessians in hessian_stages(model, task, batches, names):
...     quantize(stage, hessians)        # replace the stage's layers before asking for the next
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from slimkit.core.task import Batch, Task
from slimkit.dist.blocks import BlockChain, StopForward, find_blocks
from slimkit.dist.collectives import is_distributed, shard
from slimkit.quantization.conv import layer_rows
from slimkit.quantization.gptq import hessian_all_reduce, hessian_init, hessian_update

_Stop = StopForward


def _run(model: nn.Module, task: Task, batch: Batch) -> None:
    try:
        with torch.no_grad():
            task.forward(model, batch)
    except _Stop:
        pass


def linear_stages(model: nn.Module, task: Task, batch: Batch, names: list[str]
                  ) -> tuple[list[list[str]], set[str]]:
    """Target layers grouped by shared input, in execution order, and those called twice or more.

    Layers the forward never reaches are left out (callers fall back to round-to-nearest).
    """
    order: list[tuple[str, tuple]] = []
    hooks = []
    for name in names:
        def hook(_m, args, name=name):
            x = args[0]
            order.append((name, (x.data_ptr(), tuple(x.shape))))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        _run(model, task, batch)
    finally:
        for h in hooks:
            h.remove()
    counts: dict[str, int] = {}
    for name, _ in order:
        counts[name] = counts.get(name, 0) + 1
    reused = {n for n, c in counts.items() if c > 1}
    stages: list[list[str]] = []
    last_key = None
    seen: set[str] = set()
    for name, key in order:
        if name in seen:
            continue
        seen.add(name)
        if stages and key == last_key:
            stages[-1].append(name)
        else:
            stages.append([name])
        last_key = key
    return stages, reused


def accumulate(model: nn.Module, stage: list[str], passes: Iterable[Callable[[], None]],
                stop_early: bool) -> dict[str, dict]:
    """Hessian accumulators of the layers in `stage` over `passes` (each runs one batch), summed
    over ranks; a layer no rank reached is left out."""
    acc: dict[str, dict | None] = dict.fromkeys(stage)
    pending: set[str] = set()
    hooks = []
    for name in stage:
        def hook(module, args, name=name):
            x = layer_rows(module, args[0])    # a conv's im2col patches, a Linear's inputs
            if acc[name] is None:
                acc[name] = hessian_init(x.shape[-1], device=x.device)
            hessian_update(acc[name], x)
            pending.discard(name)
            if stop_early and not pending:
                raise _Stop

        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for run in passes:
            pending = set(stage)
            run()
    finally:
        for h in hooks:
            h.remove()
    for name in stage:  # the same order on every rank; a layer this rank never reached adds zeros
        if acc[name] is not None or is_distributed():
            weight = model.get_submodule(name).weight
            acc[name] = hessian_all_reduce(acc[name] or hessian_init(weight[0].numel(), device=weight.device))
    return {k: v for k, v in acc.items() if v is not None and v["n"]}


def collect_hessians(model: nn.Module, task: Task, batches: list[Batch], stage: list[str],
                     stop_early: bool = True) -> dict[str, dict]:
    """Hessian accumulators of the layers in `stage`, from the inputs they see on `batches`
    (summed over the ranks of an initialised process group)."""
    return accumulate(model, stage, [lambda b=b: _run(model, task, b) for b in batches], stop_early)


def _block_of(stage: list[str], blocks: list[str]) -> int | None:
    """Index of the block holding every layer of `stage`; None if not all in one block."""
    found = {next((i for i, b in enumerate(blocks) if n.startswith(b + ".")), None) for n in stage}
    return found.pop() if len(found) == 1 else None


def plan_blocks(stages: list[list[str]], blocks: list[str]) -> tuple[list, dict[int, list], list] | None:
    """(stages before the blocks, stages of each block, stages after) when the stages run block
    by block in order; None when they interleave otherwise."""
    where = [_block_of(s, blocks) for s in stages]
    inside = [i for i, w in enumerate(where) if w is not None]
    if not inside:
        return None
    first, last = inside[0], inside[-1]
    order = [where[i] for i in range(first, last + 1)]
    if None in order or order != sorted(order):
        return None
    per_block: dict[int, list] = {}
    for i in range(first, last + 1):
        per_block.setdefault(where[i], []).append(stages[i])
    return stages[:first], per_block, stages[last + 1:]


def hessian_stages(model: nn.Module, task: Task, batches: list[Batch], names: list[str],
                   blockwise: bool = True) -> Iterator[tuple[list[str], dict[str, dict]]]:
    """(stage, Hessian accumulators) for the target layers `names`, in execution order. The caller
    must replace the stage's layers (quantize them) before taking the next stage.

    Layers the forward never reaches are in no stage (callers fall back to round-to-nearest).
    With `blockwise` and a model whose repeated blocks form a chain, stages inside the blocks are
    calibrated on cached block inputs; the result equals the full-forward driver's.

    >>> for stage, hessians in hessian_stages(model, task, batches, ["l0.q", "l0.k", "l0.out"]):
    ...     for name in stage: quantize(name, hessian_value(hessians[name]))
    """
    stages, reused = linear_stages(model, task, batches[0], names)
    mine = shard(batches)

    def full(stage: list[str]) -> dict[str, dict]:
        return collect_hessians(model, task, mine, stage, stop_early=not reused & set(stage))

    blocks = find_blocks(model) if blockwise else []
    plan = plan_blocks(stages, blocks) if blocks else None
    if plan is None:
        for stage in stages:
            yield stage, full(stage)
        return
    before, per_block, after = plan
    for stage in before:
        yield stage, full(stage)
    chain = BlockChain.trace(model, task, mine, blocks)
    if chain is None:  # not a plain chain: the full forward for every stage
        for stage in [s for i in sorted(per_block) for s in per_block[i]] + after:
            yield stage, full(stage)
        return
    for index, (_name, block) in enumerate(chain.blocks()):
        for stage in per_block.get(index, []):
            yield stage, accumulate(model, stage, chain.passes(block), not reused & set(stage))
        if index < max(per_block):
            chain.advance(block)
        else:
            break  # the blocks after the last target block need not run
    del chain
    for stage in after:
        yield stage, full(stage)
