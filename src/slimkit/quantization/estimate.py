"""Size estimates of the quantization methods (`int8`, `int8-static`, `smoothquant`, `rtn`, `gptq`, `awq`, `qat`) for
`slimkit inspect`: packed codes, scales and zero points from shapes and the config alone, the
layers chosen by the methods' own `select_targets` (see `slimkit.io.sizing`).

>>> plan = Plan.of(model)
>>> estimate_stage(plan, Int8Config())["touched"]["fc1"]
'int8 per-channel weights, fp32 scales'
"""

from __future__ import annotations

import math

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.io.sizing import Note, Plan, Stored, estimates, note, tensor_key
from slimkit.nn.quant_math import Granularity
from slimkit.quantization.convert import select_targets
from slimkit.quantization.groups import fallback, layout


def _codes(rows: int, cols: int, bits: int, groups: int, scale_bytes: int, zero: bool) -> Stored:
    """A `QuantLinear` / `QuantEmbedding` weight: packed codes, one scale (and zero) per group."""
    extra = groups * scale_bytes + (math.ceil(groups * bits / 8) if zero else 0)
    return Stored(rows * cols, rows * cols, bits, extra, arrays=2 + zero, kind="quant")


def _quant_targets(plan: Plan, cfg, handled: tuple) -> tuple[list, dict]:
    return select_targets(plan.model, cfg.targets, cfg.ignore, None, handled)


@estimates("int8", "int8-static")
def _int8(plan: Plan, cfg, task) -> Note:
    handled = ((nn.Linear,) if getattr(cfg, "linear", True) else ()) + ((nn.Embedding,) if cfg.embeddings else ()) \
        + ((nn.Conv2d,) if getattr(cfg, "conv", True) else ())
    return _int8_layers(plan, cfg, handled, cfg.method == "int8-static")


@estimates("smoothquant")
def _smoothquant(plan: Plan, cfg, task) -> Note:
    """As `int8` on the Linears (and embeddings); the scales it folds cost nothing, those it keeps in
    front of a layer (where no op before it takes them) 2 bytes per input channel, not counted."""
    if task is None:
        raise SlimError("smoothquant needs calibration data: pass data=<task> (e.g. the model's zoo task)")
    found = _int8_layers(plan, cfg, (nn.Linear,) + ((nn.Embedding,) if cfg.embeddings else ()), False)
    found["basis"] += "; input scales kept where no op before a layer takes them not counted (2 B per input)"
    return found


def _int8_layers(plan: Plan, cfg, handled: tuple, static: bool) -> Note:
    picked, skipped = _quant_targets(plan, cfg, handled)
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if type(m) is nn.Conv2d:   # QuantConv2d: uint8 codes, a (rows, 1) fp32 scale
            how = "int8 per-channel weights, fp32 scales (conv: weight-only)"
            plan.set(tensor_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows, how, arrays=2,
                                                        kind="quant"))
        elif type(m) is nn.Linear:
            how = "int8 per-channel weights, fp32 scales" + (", static input scale" if static else "")
            plan.set(tensor_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows + 4 * static, how,
                                                        arrays=2 + static, kind="quant"))
        else:
            how = "int8 rows, fp32 scales"
            plan.set(tensor_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows, how, arrays=2,
                                                        kind="quant"))
        touched[name] = how
    basis = "exact: int8 codes and fp32 scales from shapes"
    if static and getattr(cfg, "dynamic_fallback", None) is not None:
        basis += " (4 B less per layer calibration keeps dynamic)"
    return note(touched, skipped, basis)


def _group_count(cols: int, granularity: str, group_size: int) -> tuple[int, int]:
    """(scale rows factor, groups per row) of a weight with `cols` inputs."""
    if granularity == "tensor":
        return 0, 1
    return 1, (cols // group_size if granularity == "group" else 1)


def _where(gran: Granularity, size: int) -> str:
    return f"groups of {size}" if gran is Granularity.GROUP else gran.value


@estimates("rtn", "gptq", "awq")
def _weight_only(plan: Plan, cfg, task) -> Note:
    """The methods' own layout per layer: the group asked for, or its fallback where it does not
    divide the layer's inputs (`slimkit.quantization.groups`). GPTQ and AWQ without data cannot run:
    said here, before any measurement, as their `apply` would say it. AWQ scales Linears only; the
    input scales it keeps where no op before a layer takes them (2 B per input channel) are not counted."""
    if cfg.method in ("gptq", "awq") and task is None:
        raise SlimError(f"{cfg.method} needs calibration data: pass data=<task> (e.g. the model's zoo task)")
    layers = (nn.Linear,) if cfg.method == "awq" else (nn.Linear, nn.Conv2d)
    handled = layers + ((nn.Embedding,) if cfg.embedding_bits else ())
    picked, skipped = _quant_targets(plan, cfg, handled)
    scale_bytes = 2 if cfg.scale_dtype.value == "float16" else 4
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if type(m) in (nn.Linear, nn.Conv2d):
            gran, size = layout(cols, cfg.granularity, cfg.group_size)
            per_row, groups = _group_count(cols, gran.value, size)
            stored = _codes(rows, cols, cfg.bits, max(1, rows * per_row) * groups, scale_bytes, not cfg.symmetric)
            how = (f"{cfg.bits}-bit {'sym' if cfg.symmetric else 'asym'} {_where(gran, size)}"
                   f"{' (conv)' if type(m) is nn.Conv2d else ''}, {cfg.scale_dtype.value} scales"
                   f"{fallback(cols, cfg.granularity, cfg.group_size)}")
        else:
            gran, size = layout(cols, "group", cfg.embedding_group_size)
            stored = _codes(rows, cols, cfg.embedding_bits, rows * (cols // size), scale_bytes, False)
            how = (f"{cfg.embedding_bits}-bit rows, "
                   f"{'one scale per row' if gran is Granularity.CHANNEL else _where(gran, size)}"
                   f"{fallback(cols, 'group', cfg.embedding_group_size)}")
        plan.set(tensor_key(name, "weight"), Stored(stored.numel, stored.values, stored.bits, stored.extra, how,
                                                    arrays=stored.arrays, kind="quant"))
        touched[name] = how
    return note(touched, skipped, "exact: packed codes, scales and zero points from shapes")


@estimates("qat")
def _qat(plan: Plan, cfg, task) -> Note:
    picked, skipped = _quant_targets(plan, cfg, (nn.Linear, nn.Conv2d))
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        how = f"{cfg.bits}-bit per-channel (QAT), fp32 scales"
        plan.set(tensor_key(name, "weight"), Stored(rows * cols, rows * cols, cfg.bits, 4 * rows, how, arrays=2,
                                                    kind="quant"))
        touched[name] = how
    return note(touched, skipped, "exact: packed codes and scales from shapes")
