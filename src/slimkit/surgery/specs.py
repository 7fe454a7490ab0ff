"""Describe a module tree as JSON (`to_spec`) and rebuild it with empty weights (`from_spec`).

Specs let a .slim file record "fc1 became this" without pickling code: plain torch layers are
described by their constructor arguments (`slimkit.surgery.torch_layers`), slimkit's runtime
modules by `slim_spec()`.
Runtime modules register with `@register_module`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.surgery.pruned import note, restore_note
from slimkit.surgery.torch_layers import PLAIN as _PLAIN

MODULE_TYPES: dict[str, type[nn.Module]] = {}


def register_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator for runtime modules: needs `slim_type`, `slim_spec()`, `from_slim_spec()`.

    A module that allocates memory to run beyond its stored tensors (a hashed layer's virtual
    weight) also defines `runtime_bytes() -> int`, its peak: `load` checks the sum against the
    file's decoded budget before any tensor is placed."""
    for attr in ("slim_type", "slim_spec", "from_slim_spec"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__name__} lacks {attr}")
    MODULE_TYPES[cls.slim_type] = cls
    return cls


def to_spec(module: nn.Module) -> dict:
    """JSON description of `module` (recursively for `nn.Sequential`)."""
    slim_type = getattr(type(module), "slim_type", None)
    if slim_type in MODULE_TYPES:
        return {"type": slim_type, **module.slim_spec()}
    if type(module) is nn.Sequential:
        return {"type": "Sequential", "children": {k: to_spec(c) for k, c in module.named_children()}}
    for name, (cls, describe, _) in _PLAIN.items():
        if type(module) is cls:
            was = note(module)
            return {"type": name, **describe(module), **({"pruned_from": dict(was)} if was else {})}
    raise SlimError(f"cannot record a module of type {type(module).__name__} in a .slim file")


def from_spec(spec: object) -> nn.Module:
    """Build an (uninitialised) module from `to_spec` output. Raises SlimFormatError if malformed."""
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise SlimFormatError(f"module spec must be an object with a 'type', got {str(spec)[:80]}")
    kind = spec["type"]
    args = {k: v for k, v in spec.items() if k != "type"}
    try:
        with torch.device("meta"):
            return check_geometry(_build(kind, args))
    except SlimFormatError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, ArithmeticError) as exc:
        why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise SlimFormatError(f"module spec for {kind} is invalid: {why}") from None


# A convolution's padding beyond the kernel's reach only adds zeros, and from a file it would make every
# forward allocate without bound: padding 1,048,576 took 1.3 GB for an 8x8 input. Any layer with
# `kernel_size`, `dilation` and int `padding` (plain, quantized, pruned convolutions) is checked.
MAX_PADDING = 64


def check_geometry(module: nn.Module) -> nn.Module:
    """`module`, if its padding is at most max(MAX_PADDING, dilation x (kernel - 1)) per side, else
    SlimFormatError."""
    padding = getattr(module, "padding", None)
    kernel, dilation = getattr(module, "kernel_size", None), getattr(module, "dilation", 1)
    if padding is None or isinstance(padding, str) or kernel is None:
        return module
    pads, kernels = _ints(padding), _ints(kernel)
    dilations = _ints(dilation) if isinstance(dilation, tuple | list) else (dilation,) * len(kernels)
    for p, k, d in zip(pads, kernels, dilations * len(kernels), strict=False):
        if type(p) is not int or p < 0 or p > max(MAX_PADDING, int(d) * (int(k) - 1)):
            raise SlimFormatError(f"{type(module).__name__} spec: padding {str(padding)[:40]} beyond the kernel's "
                                  f"reach (at most {MAX_PADDING} or dilation x (kernel - 1))")
    return module


def _ints(value: object) -> tuple:
    return tuple(value) if isinstance(value, tuple | list) else (value,)


def _build(kind: str, args: dict) -> nn.Module:
    if kind == "Sequential":
        children = args.get("children")
        if not isinstance(children, dict):
            raise SlimFormatError("Sequential spec needs 'children'")
        return nn.Sequential(OrderedDict((k, from_spec(v)) for k, v in children.items()))
    if kind in _PLAIN:
        module = _PLAIN[kind][2](args)
        if "pruned_from" in args:
            restore_note(module, args["pruned_from"])
        return module
    if kind in MODULE_TYPES:
        return MODULE_TYPES[kind].from_slim_spec(args)
    raise SlimFormatError(f"unknown module type {kind!r} in the manifest")
