"""Swap float modules for quantized ones, and keep a report of what was done and what was not.

Modules a method cannot quantize (a Conv1d, a custom layer holding a weight matrix) stay float
and are listed in the report, never a crash.

>>> report = quant_report(model)
>>> report["quantized"]["fc1"], report["skipped"]
('int8 (w8a8 dynamic)', {'conv': 'Conv1d is not supported'})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from torch import nn

from slimkit.core.select import FilterFn, select_modules
from slimkit.quantization.conv import unsupported
from slimkit.surgery.edits import replace_module

log = logging.getLogger("slimkit.quantization")

KNOWN = (nn.Linear, nn.Embedding, nn.Conv2d)  # quantizable; left alone only when the options say so
Factory = Callable[[str, nn.Module], nn.Module]


def quant_report(model: nn.Module) -> dict[str, dict[str, str]]:
    """What quantization did to `model`: {"quantized": {name: how}, "skipped": {name: why}}."""
    return model.__dict__.setdefault("slimkit_quant", {"quantized": {}, "skipped": {}})


def _has_weight_matrix(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.dim() >= 2 and not list(module.children())


def select_targets(model: nn.Module, targets: str | Sequence[str] | None, ignore: Sequence[str],
                   filter_fn: FilterFn | None, handled: tuple[type[nn.Module], ...]
                   ) -> tuple[list[tuple[str, nn.Module]], dict[str, str]]:
    """The selected modules of the `handled` types, and the selected unsupported ones with a reason."""
    chosen = select_modules(model, targets, (nn.Module,), filter_fn, ignore)
    picked, skipped = [], {}
    for name, module in chosen:
        if type(module) in handled:
            why = unsupported(module)
            if why:
                skipped[name] = why
            else:
                picked.append((name, module))
        elif type(module) not in KNOWN and _has_weight_matrix(module):
            skipped[name] = f"{type(module).__name__} is not supported"
    return picked, skipped


def convert(model: nn.Module, picked: list[tuple[str, nn.Module]], factory: Factory, how: str,
            skipped: dict[str, str] | None = None) -> nn.Module:
    """Replace each picked module by `factory(name, module)`; record it in the report."""
    report = quant_report(model)
    for name, module in picked:
        replace_module(model, name, factory(name, module))
        report["quantized"][name] = how
        report["skipped"].pop(name, None)
    return note_skipped(model, skipped or {})


# modules that take bf16 activations as they are (LayerNorm's CPU kernel takes bf16 inputs with
# fp32 weights); checked by type name so that this file imports no runtime module
LOW_PRECISION_OK = {"Int8Linear", "QuantLinear", "QuantEmbedding", "QuantConv2d", "LayerNorm", "InputScale"}


def low_precision_blockers(model: nn.Module) -> dict[str, str]:
    """Modules that hold float weights or buffers and are not known to take bf16 activations
    (a float `nn.Linear` left out of quantization, a Conv, a custom layer): {name: type}.
    An empty dict means the model can run in bf16 with its stored fp32 tensors unchanged.

    >>> low_precision_blockers(model)
    {'classifier': 'Linear'}
    """
    out = {}
    for name, module in model.named_modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if type(module).__name__ not in LOW_PRECISION_OK and any(t.is_floating_point() for t in own):
            out[name or "(model)"] = type(module).__name__
    return out


def note_skipped(model: nn.Module, skipped: dict[str, str]) -> nn.Module:
    """List modules that stay float (and say so once in the log)."""
    report = quant_report(model)
    for name, why in skipped.items():
        if name not in report["quantized"]:
            report["skipped"][name] = why
    if skipped:
        log.warning("%d module(s) stay float: %s", len(skipped),
                    ", ".join(f"{n} ({w})" for n, w in list(skipped.items())[:5]))
    return model
