"""Fold per-input-channel scales into the op that makes a layer's inputs, where that is exact.

AWQ and SmoothQuant (`slimkit.quantization.scaled`) divide the inputs of a stage (layers reading the
same tensor, e.g. a block's q/k/v projections) by scales `s` and multiply the layers' weight columns
by them. The division costs nothing when the tensor is made by an op that is linear per channel:

- a norm with a per-channel affine weight (LayerNorm, RMSNorm, ...): weight and bias divided by `s`;
- a Linear: its output rows (weight and bias) divided by `s`, also through a ReLU or an elementwise
  product (Llama's `down_proj(act(gate_proj(x)) * up_proj(x))`: folded into `up_proj`).

Candidates are found on one probe forward (the whole model on an example input, or, when streaming,
one block on one cached input): modules whose output *is* the stage's input tensor,
then Linears beside the stage's first layer (same parent module) with as many outputs as it has
inputs, nearest first. A candidate is accepted only when folding random scales into it (and the
stage's columns) leaves the model's outputs on the probe unchanged: a norm whose output also feeds a
residual stream (post-norm BERT), a GELU between two Linears, a Gemma-style `(1 + w)` norm are all
refused that way. Without an accepted candidate the caller keeps `s` in front of each layer
(`slimkit.nn.input_scale`).

>>> folds = FoldFinder.for_task(model, task)       # or FoldFinder(model, run) with any forward
>>> target = folds.find(["layers.0.q", "layers.0.k", "layers.0.v"])   # e.g. "layers.0.norm", or None
>>> fold_into(model.get_submodule(target), s)                          # then W[:, j] *= s[j] per layer
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from slimkit.core.task import Task

TOLERANCE = 1e-3   # relative change of the probe outputs a fold may cause (float32 rounding: ~1e-6)


def _norm_like(module: nn.Module, cols: int) -> bool:
    """A leaf module with a per-channel affine weight of `cols` entries (and maybe such a bias)."""
    if list(module.children()) or isinstance(module, (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d)):
        return False
    weight = module._parameters.get("weight")
    bias = module._parameters.get("bias")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.numel() != cols:
        return False
    return bias is None or (bias.dim() == 1 and bias.numel() == cols)


def foldable(module: nn.Module, cols: int) -> bool:
    """Whether `module`'s output channels (`cols` of them) can take a division by scales."""
    if type(module) is nn.Linear:
        return module.out_features == cols
    return _norm_like(module, cols)


@torch.no_grad()
def fold_into(module: nn.Module, scale: torch.Tensor) -> None:
    """Divide `module`'s output channels by `scale`: a Linear's rows and bias, a norm's weight and bias."""
    s = scale.to(module.weight.device, torch.float32)
    if type(module) is nn.Linear:
        module.weight.div_(s[:, None].to(module.weight.dtype))
    else:
        module.weight.div_(s.to(module.weight.dtype))
    if getattr(module, "bias", None) is not None:
        module.bias.div_(s.to(module.bias.dtype))


@torch.no_grad()
def scale_columns(module: nn.Module, scale: torch.Tensor) -> None:
    """Multiply a Linear's weight columns by `scale`."""
    module.weight.mul_(scale.to(module.weight.device, module.weight.dtype)[None, :])


def _tensors(out: object) -> Iterator[torch.Tensor]:
    """The floating tensors in a model output (tensors, tuples, lists, dicts, ModelOutputs)."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (tuple, list)):
        for v in out:
            yield from _tensors(v)


class FoldFinder:
    """Fold targets for the stages of one model (see the module doc); one probe forward up front."""

    def __init__(self, model: nn.Module, run: Callable[[], Any]):
        """`run()` runs a forward pass that reaches the stages (and returns the outputs to keep)."""
        self.model, self.run = model, run
        self.order: list[str] = []                       # modules in the order they returned
        self.outputs: dict[str, tuple] = {}              # name -> (data_ptr, shape) of its output
        self.inputs: dict[str, tuple] = {}               # name -> (data_ptr, shape) of its first input
        keep: list[torch.Tensor] = []                     # held so that no address is reused
        hooks = []
        for name, module in model.named_modules():
            if not name:
                continue

            def hook(_m, args, out, name=name):
                if args and isinstance(args[0], torch.Tensor):
                    keep.append(args[0])
                    self.inputs.setdefault(name, (args[0].data_ptr(), tuple(args[0].shape)))
                if isinstance(out, torch.Tensor):
                    keep.append(out)
                    self.outputs.setdefault(name, (out.data_ptr(), tuple(out.shape)))
                    if name not in self.order:
                        self.order.append(name)

            hooks.append(module.register_forward_hook(hook))
        try:
            with torch.no_grad():
                run()
        finally:
            for h in hooks:
                h.remove()
        keep.clear()

    @classmethod
    def for_task(cls, model: nn.Module, task: Task) -> FoldFinder:
        """Probe and check folds with `task`'s forward on one example input, the whole model's outputs."""
        probe = task.example_inputs(1)
        return cls(model, lambda: task.forward(model, probe))

    def candidates(self, stage: list[str]) -> list[str]:
        """Possible fold targets of `stage`, most likely first."""
        first = stage[0]
        cols = self.model.get_submodule(first).weight.shape[1]
        key = self.inputs.get(first)
        if key is None:
            return []
        same = [n for n in self.order if self.outputs.get(n) == key and n not in stage]
        parent = first.rpartition(".")[0]
        before = self.order[:self.order.index(first)] if first in self.order else []
        near = [n for n in reversed(before) if n.rpartition(".")[0] == parent and n not in stage
                and type(self.model.get_submodule(n)) is nn.Linear]
        found = []
        for name in [*reversed(same), *near]:
            if name not in found and foldable(self.model.get_submodule(name), cols):
                found.append(name)
        return found

    def _outputs(self) -> list[torch.Tensor]:
        with torch.no_grad():
            return [t.detach().clone() for t in _tensors(self.run())]

    @torch.no_grad()
    def verified(self, target: str, stage: list[str]) -> bool:
        """Whether folding random scales into `target` (and `stage`'s columns) keeps the outputs."""
        module = self.model.get_submodule(target)
        layers = [self.model.get_submodule(n) for n in stage]
        cols = layers[0].weight.shape[1]
        saved = [p.detach().clone() for m in [module, *layers] for p in (m.weight, getattr(m, "bias", None))
                 if p is not None]
        # the reference outputs, taken once: accepted folds keep the function (float32 rounding, ~1e-6)
        before = self.__dict__.get("_before") or self.__dict__.setdefault("_before", self._outputs())
        gen = torch.Generator().manual_seed(0)
        s = torch.exp(torch.empty(cols).uniform_(-0.7, 0.7, generator=gen))
        fold_into(module, s)
        for layer in layers:
            scale_columns(layer, s)
        try:
            after = self._outputs()
        except RuntimeError:
            after = []
        finally:
            params = [p for m in [module, *layers] for p in (m.weight, getattr(m, "bias", None)) if p is not None]
            for p, old in zip(params, saved, strict=True):
                p.copy_(old)
        if len(after) != len(before) or not before:
            return False
        for a, b in zip(after, before, strict=True):
            if a.shape != b.shape or not torch.isfinite(a).all():
                return False
            if float((a - b).norm()) > TOLERANCE * float(b.norm()) + 1e-12:
                return False
        return True

    def find(self, stage: list[str]) -> str | None:
        """The first candidate of `stage` that passes `verified`, or None."""
        for name in self.candidates(stage):
            if self.verified(name, stage):
                return name
        return None
