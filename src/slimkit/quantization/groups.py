"""Group-wise scales on any layer width: the per-layer group fallback of `rtn`, `gptq` and their
embeddings (and of streaming, which uses the same rule).

A group-wise method asks for one scale per `group_size` input columns. A layer whose input width
(a Linear's in_features, a conv's in/groups * kh * kw, an embedding's dim) that size does not
divide is not refused; it gets, in this order:

1. the largest divisor of the width that is at most `group_size` and at least
   min(`MIN_GROUP`, `group_size`): 1000 inputs with groups of 128 -> groups of 125, which keeps
   the accuracy and the size that was asked for (a scale per 125 weights instead of per 128);
2. else one scale per output row (per-channel): 37 inputs, or a 3x3 conv over 3 channels
   (27 inputs) with groups of 8 or more.

A group at least as wide as the layer is per-channel as well (64 inputs, groups of 128). Smaller
groups than `MIN_GROUP` are not chosen by the fallback: below 16 columns, the fp16 scale (and
zero point) would cost more than a bit per weight. The chosen group is stored in each layer's
spec, so the file loads back exactly, and `slimkit inspect` estimates with the same rule.

>>> fit_group(1536, 128), fit_group(1000, 128), fit_group(300, 64), fit_group(37, 32), fit_group(64, 128)
(128, 125, 60, 37, 64)
>>> layout(37, "group", 32)
(<Granularity.CHANNEL: 'channel'>, 37)
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable

from slimkit.nn.quant_math import Granularity

log = logging.getLogger("slimkit.quantization")

MIN_GROUP = 16   # the smallest group the fallback picks (a group asked for may be smaller)


def fit_group(cols: int, group_size: int, minimum: int = MIN_GROUP) -> int:
    """The group length for `cols` input columns when `group_size` is asked for: `group_size` if it
    divides `cols`, else the largest divisor of `cols` in [min(minimum, group_size), group_size],
    else `cols` (one group per row: per-channel).

    >>> fit_group(100, 32), fit_group(100, 128), fit_group(27, 8), fit_group(30, 4)
    (25, 100, 27, 30)
    """
    if group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    if group_size >= cols:
        return cols
    floor = min(minimum, group_size)
    for size in range(group_size, floor - 1, -1):
        if cols % size == 0:
            return size
    return cols


def layout(cols: int, granularity: Granularity | str, group_size: int | None) -> tuple[Granularity, int]:
    """(granularity, group length) a weight with `cols` inputs is quantized with: per-tensor and
    per-channel as asked; group-wise by `fit_group`, per-channel when the group is the whole row."""
    granularity = Granularity(granularity)
    if granularity is not Granularity.GROUP or group_size is None:
        return (granularity if granularity is not Granularity.GROUP else Granularity.CHANNEL), cols
    size = fit_group(cols, group_size)
    return (Granularity.GROUP, size) if size < cols else (Granularity.CHANNEL, cols)


def describe(granularity: Granularity | str, size: int) -> str:
    """Short words for a layout: 'g64', 'per-channel', 'per-tensor'."""
    granularity = Granularity(granularity)
    return f"g{size}" if granularity is Granularity.GROUP else f"per-{granularity.value}"


def fallback(cols: int, granularity: Granularity | str, group_size: int | None) -> str:
    """The report's words for a layer whose group fell back (' (g125: groups of 128 do not divide
    1000 inputs)'), or '' when it got the group asked for (or was not group-wise)."""
    if Granularity(granularity) is not Granularity.GROUP or group_size is None:
        return ""
    gran, size = layout(cols, granularity, group_size)
    if size == group_size:
        return ""
    why = "do not divide" if group_size < cols else "are not narrower than"
    return f" ({describe(gran, size)}: groups of {group_size} {why} {cols} inputs)"


def warn_fallbacks(method: str, group_size: int | None, layers: Iterable[tuple[str, int]],
                   what: str = "group_size") -> dict[str, str]:
    """Log one warning line for a method run listing the layers (`(name, input width)`) whose group
    fell back, and the group each got; returns {name: 'g125' | 'per-channel'} for those layers.

    >>> warn_fallbacks("rtn", 128, [("fc1", 1536), ("fc2", 1000), ("fc3", 37)])
    {'fc2': 'g125', 'fc3': 'per-channel'}
    """
    if group_size is None:
        return {}
    chosen: dict[str, str] = {}
    buckets: dict[tuple[str, int], list[str]] = defaultdict(list)
    for name, cols in layers:
        gran, size = layout(cols, Granularity.GROUP, group_size)
        if size == group_size:   # the group asked for (one group as wide as the layer is per-channel)
            continue
        chosen[name] = describe(gran, size)
        buckets[(chosen[name], cols)].append(name)
    if chosen:
        parts = [f"{label} for {_names(names)} ({cols} inputs)" for (label, cols), names in buckets.items()]
        log.warning("%s: %s=%d does not fit %d layer(s); they use the largest group that divides their inputs "
                    "(at least %d), else per-channel: %s", method, what, group_size, len(chosen),
                    min(MIN_GROUP, group_size), "; ".join(parts))
    return chosen


def _names(names: list[str], shown: int = 3) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")
