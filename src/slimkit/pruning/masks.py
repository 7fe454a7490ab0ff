"""Masks: which weights survive. Pure tensor math plus `MaskSet`, which keeps pruned weights at
exactly zero while a model is fine-tuned.

>>> masks = magnitude_masks({"fc1": w1, "fc2": w2}, 0.9, scope="global")
>>> held = MaskSet({"fc1": (model.fc1, masks["fc1"]), "fc2": (model.fc2, masks["fc2"])})
>>> held.apply()          # zero the pruned weights; gradients of pruned weights stay zero too
"""

from __future__ import annotations

import torch
from torch import nn


def _keep_top(scores: torch.Tensor, prune: int) -> torch.Tensor:
    """Boolean mask that drops exactly `prune` of the lowest scores (ties broken by position)."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    if prune > 0:
        order = torch.argsort(flat, stable=True)
        keep[order[:prune]] = False
    return keep.reshape(scores.shape)


def magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float,
                    scope: str = "layer") -> dict[str, torch.Tensor]:
    """Keep the largest |w|: in each tensor (`scope="layer"`) or over all tensors together
    (`scope="global"`), so that a fraction `sparsity` of the weights is pruned."""
    if scope == "layer":
        return {k: _keep_top(w.detach().abs(), round(sparsity * w.numel())) for k, w in weights.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    flat = torch.cat([w.detach().abs().reshape(-1) for w in weights.values()])
    keep = _keep_top(flat, round(sparsity * flat.numel()))
    out, start = {}, 0
    for k, w in weights.items():
        out[k] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return out


def nm_mask(weight: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M semi-structured mask: in every group of `m` consecutive inputs of an output row, keep
    the `n` largest |w| (2:4 is what sparse tensor cores run). Input size must divide by `m`."""
    rows = weight.detach().reshape(weight.shape[0], -1)
    if rows.shape[1] % m:
        raise ValueError(f"N:M sparsity needs the input size ({rows.shape[1]}) to be a multiple of {m}")
    groups = rows.abs().reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return keep.reshape(weight.shape)


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of exact zeros in `t`."""
    return 1.0 - int(torch.count_nonzero(t)) / max(1, t.numel())


class MaskSet:
    """Masks held on module weights: `apply()` zeroes pruned weights; while `hold()` is active,
    their gradients are zeroed too so an optimizer step cannot revive them (call `apply()` after
    each step to undo momentum and weight decay as well)."""

    def __init__(self, masks: dict[str, tuple[nn.Module, torch.Tensor]] | None = None):
        self.masks: dict[str, tuple[nn.Module, torch.Tensor]] = dict(masks or {})
        self._handles: list = []

    def update(self, masks: dict[str, torch.Tensor], modules: dict[str, nn.Module]) -> None:
        for name, mask in masks.items():
            self.masks[name] = (modules[name], mask)
        self.apply()

    @torch.no_grad()
    def apply(self) -> None:
        for module, mask in self.masks.values():
            module.weight.mul_(mask.to(module.weight.dtype))

    def hold(self) -> MaskSet:
        self.release()
        for name in self.masks:
            module, _ = self.masks[name]
            self._handles.append(module.weight.register_hook(
                lambda g, n=name: g * self.masks[n][1].to(g.dtype)))
        return self

    def release(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> MaskSet:
        return self.hold()

    def __exit__(self, *exc) -> None:
        self.release()

    def sparsity(self) -> dict[str, float]:
        return {k: 1.0 - float(m.float().mean()) for k, (_, m) in self.masks.items()}
