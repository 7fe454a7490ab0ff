"""Reload-and-verify: a written artifact is read back from disk and must compute what the model in
memory computes, before `compress` reports success.

`reload_check(model, task)` runs the compressed model once on a small batch of the task's inputs
and returns a `verify(path)` for `save(..., verify=...)`: it loads the finished temporary file
(`load(path, runtime="torch")`: the same modules, so the outputs agree to float rounding), runs it
on the same batch and compares every floating-point output. If the file does not load, or an output
differs by more than `RTOL` of the output's scale (plus `ATOL`), it raises `SlimError` and the file
never takes the output's name (`AtomicFile.commit` removes it).

>>> verify = reload_check(model, task)
>>> save(model, "out.slim", verify=verify)        # SlimError, and no out.slim, if the file disagrees
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import base_of
from slimkit.core.task import Task
from slimkit.io.artifact import load

BATCH = 8
# torch runtime: the reloaded modules are the saved ones, so only float rounding differs (a fused or
# reordered kernel after load); a lost or changed stored value moves an output far more than this
RTOL = 1e-4
ATOL = 1e-6


def floats(output: object) -> list[torch.Tensor]:
    """The floating-point tensors in a model output (a tensor, tuple, list, dict or ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return [output.detach().float()] if output.is_floating_point() else []
    if isinstance(output, dict):
        return [t for v in output.values() for t in floats(v)]
    if isinstance(output, list | tuple):
        return [t for v in output for t in floats(v)]
    return []


def meta_copy(model: nn.Module) -> nn.Module:
    """The architecture of `model` with every parameter and buffer on the meta device (no memory)."""
    memo: dict[int, object] = {}
    for t in [*model.parameters(), *model.buffers()]:
        empty = torch.empty_like(t, device="meta")
        memo[id(t)] = nn.Parameter(empty, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else empty
    return copy.deepcopy(model, memo)


def compare(got: object, want: object, where: str) -> float:
    """The largest output difference relative to the output's scale; SlimError above tolerance."""
    a, b = floats(got), floats(want)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=False)):
        raise SlimError(f"{where}: the written file, reloaded, gives outputs of other shapes than the compressed "
                        "model; it was not kept")
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        scale = float(y.abs().max()) if y.numel() else 0.0
        diff = float((x - y).abs().max()) if y.numel() else 0.0
        if not (diff <= ATOL + RTOL * scale):   # NaN fails too
            raise SlimError(f"{where}: the written file, reloaded, does not compute what the compressed model "
                            f"computes (max difference {diff:.3g} at output scale {scale:.3g}); it was not kept")
        worst = max(worst, diff / scale if scale else diff)
    return worst


def original_architecture(model: nn.Module) -> nn.Module | None:
    """For a user's model (base kind "user"), its architecture on the meta device: what `load` needs
    (`model=`) if the saved file cannot hold the architecture itself. Take it before compressing."""
    return meta_copy(model) if base_of(model).get("kind") == "user" else None


def reload_check(model: nn.Module, task: Task, where: str | os.PathLike = "the artifact",
                 architecture: nn.Module | None = None) -> Callable[[Path], float]:
    """`verify(path)` for `save`: load `path` (with `architecture`, from `original_architecture`, for a
    user's model), run it on a batch of `task`, compare with `model`'s outputs on that batch (computed
    now, before saving). `verify` returns the worst relative difference."""
    batch = task.example_inputs(BATCH)
    with torch.inference_mode():
        want = task.forward(model.eval(), batch)

    def verify(path: Path) -> float:
        try:
            reloaded = load(path, model=copy.deepcopy(architecture), runtime="torch")
        except SlimError as exc:
            raise SlimError(f"{where}: the written file does not load back ({exc}); it was not kept") from None
        with torch.inference_mode():
            got = task.forward(reloaded, batch)
        return compare(got, want, str(where))

    return verify
