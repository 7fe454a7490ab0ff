"""Sibling layers multiplied at once at batch 1: the weight-only linears that read the same input one
after another (a Llama-family attention's q/k/v projections, its MLP's gate/up projections) run
one low-bit kernel on their codes stacked, instead of one kernel call each.

At batch 1 a decoder pays a fixed cost per kernel call (threads woken, the activation cast to bf16
and back, Python's dispatch) on top of reading the weights; stacked, SmolLM2's 210 projections per
token are 120 calls. `link(model)` (run by `slimkit.load`) makes each parent module whose children
SIBLINGS names are `QuantLinear`s of one layout (input size, bits, groups, one scale per output
row) a `Siblings` group; nothing is built then. Once every member's batch-1 kernel choice
(`slimkit.nn.kernels`) has settled on "pack" (`slimkit.nn.torch_pack`), the first member's
single-row call runs the stacked kernel, returns its own outputs and keeps the others'; the next
member called with the same input (the same tensor, its values unchanged) takes its own. Any other
call (another input or order, several rows, a member alone) runs the member's own kernel. Either
way a member computes its own function: each output is the same dot product over the same codes and
scales, alone or stacked. The stacked kernel replaces the members' own packed copies (no extra
memory; `runtime_state` counts it once, on the first member).

Inside `torch.compile` the same rule holds without the values check (the traced step is a fixed
sequence of calls), so a compiled decode step runs the stacked kernel too.

>>> link(model)                                  # doctest: +SKIP
{'model.layers.0.self_attn': ('q_proj', 'k_proj', 'v_proj'), 'model.layers.0.mlp': ('gate_proj', 'up_proj'), ...}
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from slimkit.io.bases import register_after_load
from slimkit.nn.codes import _DecodeCache
from slimkit.nn.torch_pack import codes_kernel

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
SOURCES = ("qweight", "scale", "zero", "bias")


class Siblings:
    """One group of sibling layers (module docstring): each member's `__dict__["_siblings"]`, with its
    place in the group in `__dict__["_sibling_index"]`."""

    def __init__(self, members: list[nn.Module]):
        self.members = members
        self.sizes: list[int] = []   # the members' output sizes, set with the stacked kernel
        self.cache = _DecodeCache()
        self.pending: tuple | None = None   # (input, a copy of its values, outputs, next member's index)
        self.fused_calls = 0

    def __deepcopy__(self, memo: dict) -> Siblings:
        """A group of the copied members with nothing built (as `_DecodeCache` copies)."""
        return Siblings([copy.deepcopy(m, memo) for m in self.members])

    def __getstate__(self) -> dict:
        return {"members": self.members}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["members"])   # members may be half-restored here (reference cycle): not read

    def ready(self) -> bool:
        """Whether every member runs torch's packed kernel at batch 1 (their choices have settled)."""
        for m in self.members:
            choice = m.__dict__.get("_kernel_choice")
            if choice is None or choice.names.get(1) != "pack":
                return False
        return True

    def kernel(self):
        """The stacked kernel: built at the first call, rebuilt when a member's tensors change; the
        members' own packed copies are dropped."""
        tensors = [getattr(m, n) for m in self.members for n in SOURCES]
        kernel = self.cache.get_tensors(tensors, self._build)
        for m in self.members:
            own = m.__dict__.get("_pack_cache")
            if own is not None:
                own.value = None
        return kernel

    def _build(self):
        first = self.members[0]
        self.sizes = [m.out_features for m in self.members]
        with torch.no_grad():
            stacked = {n: None if getattr(first, n) is None else torch.cat([getattr(m, n) for m in self.members])
                       for n in SOURCES}
        return codes_kernel(stacked["qweight"], stacked["scale"], stacked["zero"], first.bits, stacked["bias"])

    def run(self, index: int, x: torch.Tensor) -> torch.Tensor | None:
        """Member `index`'s output on the single row `x` through the stacked kernel, or None where
        the member runs its own kernel (module docstring)."""
        compiling = torch.compiler.is_compiling()
        if index == 0:
            self.pending = None
            if compiling:
                kernel = self.cache.value   # what the eager calls built; nothing is built while tracing
            else:
                kernel = self.kernel() if self.ready() else None
            if kernel is None:
                return None
            parts = kernel(x.reshape(1, -1)).split(self.sizes, dim=-1)
            self.pending = (x, None if compiling else x.detach().clone(), parts, 1)
            if not compiling:
                self.fused_calls += 1
            return parts[0].reshape(*x.shape[:-1], self.sizes[0])
        pending = self.pending
        self.pending = None
        if pending is None or pending[3] != index or pending[0] is not x \
                or (pending[1] is not None and not torch.equal(pending[1], x)):
            return None
        if index + 1 < len(self.members):
            self.pending = (*pending[:3], index + 1)
        return pending[2][index].reshape(*x.shape[:-1], self.sizes[index])

    def nbytes(self) -> int:
        """Bytes of the stacked kernel (0 before it is built)."""
        return int(self.cache.value.nbytes) if self.cache.value is not None else 0


def _fits(members: list) -> bool:
    """Whether `members` are weight-only linears of one code layout, one scale row per output."""
    if not all(getattr(m, "slim_type", None) == "QuantLinear" and "_siblings" not in m.__dict__ for m in members):
        return False
    layouts = {(m.in_features, m.bits, m.symmetric, m.granularity, m.group_size, m.scale.dtype, m.scale.shape[1],
                m.zero is None, m.bias is None) for m in members}
    rows = all(m.scale.shape[0] == m.out_features and (m.zero is None or m.zero.shape[0] == m.out_features)
               for m in members)
    return len(layouts) == 1 and rows


@register_after_load
def link(model: nn.Module) -> dict[str, tuple[str, ...]]:
    """Make the sibling groups of `model` (module docstring); returns {parent name: member names}."""
    linked = {}
    for name, parent in model.named_modules():
        for names in SIBLINGS:
            members = [parent._modules.get(n) for n in names]
            if None in members or not _fits(members):
                continue
            group = Siblings(members)
            for i, m in enumerate(members):
                m.__dict__["_siblings"], m.__dict__["_sibling_index"] = group, i
            linked[name] = names
    return linked


def unlink(model: nn.Module) -> None:
    """Undo `link`: every layer runs its own kernel again."""
    for m in model.modules():
        m.__dict__.pop("_siblings", None)
        m.__dict__.pop("_sibling_index", None)
