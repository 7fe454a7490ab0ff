"""Physically remove channels: output neurons / filters, the matching BatchNorm entries, and the
matching input columns of every consumer (`trace.Group` says which). Each replaced module is
recorded with `replace_module`, so a .slim file replays the smaller architecture.

>>> groups, _ = trace_groups(model, task.example_inputs(2))
>>> prune_groups_(model, [(groups[0], torch.tensor([0, 2, 5]))], check=same_output_shape(lambda m: m(x), model))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.surgery.edits import edit_log, get_submodule, replace_module
from slimkit.surgery.pruned import mark_pruned
from slimkit.surgery.trace import Group, Member


def _like(old: nn.Module, new: nn.Module) -> nn.Module:
    codecs = old.__dict__.get("slim_codecs")
    if codecs:
        new.__dict__["slim_codecs"] = dict(codecs)
    mark_pruned(old, new)
    return new.train(old.training)


@torch.no_grad()
def shrink_linear(m: nn.Linear, out_keep: torch.Tensor | None = None,
                  in_keep: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding rows `out_keep` and columns `in_keep` of `m` (None: all)."""
    w = m.weight
    if out_keep is not None:
        w = w[out_keep]
    if in_keep is not None:
        w = w[:, in_keep]
    new = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if m.bias is not None:
        new.bias.copy_(m.bias if out_keep is None else m.bias[out_keep])
    return _like(m, new)


@torch.no_grad()
def shrink_conv(m: nn.Conv1d | nn.Conv2d, out_keep: torch.Tensor | None = None,
                in_keep: torch.Tensor | None = None) -> nn.Module:
    """A new convolution with filters `out_keep` and input channels `in_keep` of `m`."""
    if m.groups != 1:
        raise SlimError("cannot shrink a grouped convolution")
    w = m.weight
    if out_keep is not None:
        w = w[out_keep]
    if in_keep is not None:
        w = w[:, in_keep]
    new = type(m)(w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, 1,
                  m.bias is not None, m.padding_mode, device=w.device, dtype=w.dtype)
    new.weight.copy_(w)
    if m.bias is not None:
        new.bias.copy_(m.bias if out_keep is None else m.bias[out_keep])
    return _like(m, new)


@torch.no_grad()
def shrink_norm(m: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> nn.Module:
    """A new BatchNorm with entries `keep` (affine parameters and running statistics)."""
    new = type(m)(len(keep), m.eps, m.momentum, m.affine, m.track_running_stats,
                  device=(m.weight if m.affine else m.running_mean).device)
    if m.affine:
        new.weight.copy_(m.weight[keep])
        new.bias.copy_(m.bias[keep])
    if m.track_running_stats:
        new.running_mean.copy_(m.running_mean[keep])
        new.running_var.copy_(m.running_var[keep])
        new.num_batches_tracked.copy_(m.num_batches_tracked)
    return _like(m, new)


def _cut_positions(group: Group, member: Member, keep: torch.Tensor) -> torch.Tensor:
    """Positions of `member`'s dimension that belong to the channels of `group` not in `keep`."""
    cut = torch.ones(group.channels, dtype=torch.bool)
    cut[keep] = False
    cut_idx = torch.nonzero(cut).flatten()
    return member.offset + (cut_idx[:, None] * member.block + torch.arange(member.block)).reshape(-1)


def _width(module: nn.Module, member: Member) -> int:
    if member.role == "ch":
        return module.num_features
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _checked(group: Group, keep) -> torch.Tensor:
    keep = torch.as_tensor(keep, dtype=torch.long).sort().values
    if keep.numel() == 0:
        raise SlimError(f"refusing to remove every channel of {group.producer}")
    if keep[0] < 0 or keep[-1] >= group.channels:
        raise SlimError(f"channel index out of range for {group.producer} ({group.channels} channels)")
    return keep


def _shrink_all(model: nn.Module, plan: list[tuple[Group, torch.Tensor]]) -> None:
    """Shrink every member of every group; each module is rebuilt once, from the positions all
    groups keep in its *original* layout (so concatenated inputs cut by two groups stay right)."""
    outs: dict[str, torch.Tensor] = {}
    masks: dict[tuple[str, str], torch.Tensor] = {}
    for group, keep in plan:
        for member in group.members:
            if member.role == "out":
                if member.module in outs:
                    raise SlimError(f"two groups cut the outputs of {member.module}")
                outs[member.module] = keep
                continue
            module = get_submodule(model, member.module)
            width = _width(module, member)
            mask = masks.setdefault((member.module, member.role), torch.ones(width, dtype=torch.bool))
            cut = _cut_positions(group, member, keep)
            if cut.numel() and int(cut.max()) >= width:
                raise SlimError(f"{member} lies outside {member.module} ({width} inputs)")
            mask[cut] = False
    names = list(dict.fromkeys([*outs, *(name for name, _ in masks)]))
    for name in names:
        module = get_submodule(model, name)
        ch = masks.get((name, "ch"))
        if ch is not None:
            replace_module(model, name, shrink_norm(module, torch.nonzero(ch).flatten()))
            continue
        cols = masks.get((name, "in"))
        in_keep = None if cols is None else torch.nonzero(cols).flatten()
        if isinstance(module, nn.Linear):
            replace_module(model, name, shrink_linear(module, outs.get(name), in_keep))
        elif isinstance(module, nn.Conv1d | nn.Conv2d):
            replace_module(model, name, shrink_conv(module, outs.get(name), in_keep))
        else:
            raise SlimError(f"cannot shrink {name} (a {type(module).__name__})")


def prune_group_(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    """Keep channels `keep` (sorted indices) of `group`, shrinking every member in `model`."""
    _shrink_all(model, [(group, _checked(group, keep))])


def prune_groups_(model: nn.Module, plan: list[tuple[Group, torch.Tensor]],
                  check: Callable[[nn.Module], object] | None = None) -> None:
    """Apply several group prunes, then run `check(model)` (a forward pass on example input).

    If anything fails, every touched module is put back and the edit log restored, so the
    model is exactly the original; the problem is raised as a one-line SlimError.
    """
    plan = [(group, _checked(group, keep)) for group, keep in plan]
    with guarded(model, {m.module for g, _ in plan for m in g.members}, check):
        _shrink_all(model, plan)


def same_output_shape(run: Callable[[nn.Module], object], model: nn.Module) -> Callable[[nn.Module], None]:
    """A `check` for `prune_groups_`: `run(model)` must still work and give outputs of the shapes
    it gives now (tensors anywhere in tuples, lists, dicts or Hugging Face outputs).

    >>> prune_groups_(model, plan, check=same_output_shape(lambda m: m(x), model))
    """
    with torch.no_grad():
        before = _shapes(run(model))

    def check(m: nn.Module) -> None:
        after = _shapes(run(m))
        if after != before:
            raise SlimError(f"output shape changed from {_fmt(before)} to {_fmt(after)}")
    return check


def _shapes(value: object) -> list[tuple[int, ...]]:
    if isinstance(value, torch.Tensor):
        return [tuple(value.shape)]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [s for v in value for s in _shapes(v)]
    return []


def _fmt(shapes: list[tuple[int, ...]]) -> str:
    return ", ".join(str(list(s)) for s in shapes) or "no tensor"


@contextlib.contextmanager
def guarded(model: nn.Module, names: Iterable[str],
            check: Callable[[nn.Module], object] | None = None) -> Iterator[None]:
    """Run structural edits of modules `names`; then `check(model)`. On any failure put the
    original modules and edit log back and raise a one-line SlimError."""
    saved = {name: get_submodule(model, name) for name in names}
    log = edit_log(model)
    n_edits = len(log)
    try:
        yield
        if check is not None:
            with torch.no_grad():
                check(model)
    except Exception as exc:
        for name, module in saved.items():
            parent, _, child = name.rpartition(".")
            setattr(get_submodule(model, parent) if parent else model, child, module)
        del log[n_edits:]
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SlimError(f"structural pruning broke the model, original kept: {msg}") from None
