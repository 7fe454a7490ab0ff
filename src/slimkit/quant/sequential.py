"""Layer-by-layer calibration driver: collect each Linear's input Hessian with forward hooks,
quantize it, and move on, so later layers see the already-quantized earlier ones (as GPTQ does).

Linears that read the same input tensor (a block's q/k/v projections) form one stage and are
calibrated by the same pass. Each pass stops (by an exception raised in a hook) as soon as the
stage's inputs are collected, so a stage costs only the forward up to its depth.

>>> stages = linear_stages(model, task, batches, names)        # [["l0.q", "l0.k", "l0.v"], ...]
>>> for stage in stages:
...     hessians = collect_hessians(model, task, batches, stage)
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.eval.task import Batch, Task
from slimkit.quant.gptq import hessian_init, hessian_update


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass early."""


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


def collect_hessians(model: nn.Module, task: Task, batches: list[Batch], stage: list[str],
                     stop_early: bool = True) -> dict[str, dict]:
    """Hessian accumulators of the layers in `stage`, from the inputs they see on `batches`."""
    acc = {name: None for name in stage}
    hooks = []
    for name in stage:
        module = model.get_submodule(name)

        def hook(_m, args, name=name):
            x = args[0]
            if acc[name] is None:
                acc[name] = hessian_init(x.shape[-1])
            hessian_update(acc[name], x)
            pending.discard(name)
            if stop_early and not pending:
                raise _Stop

        hooks.append(module.register_forward_pre_hook(hook))
    try:
        for batch in batches:
            pending = set(stage)
            _run(model, task, batch)
    finally:
        for h in hooks:
            h.remove()
    return {k: v for k, v in acc.items() if v is not None}
