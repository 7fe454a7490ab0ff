"""Per-layer sensitivity, measured before the sampler starts: which layers lose the most
validation score when only they are compressed hard. The search gives the most sensitive layers
more bits; the table goes into the report.

>>> rows = layer_sensitivity(model, task, score, [MagnitudePruning(sparsity=0.9)], ["fc1", "fc2", "fc3"])
>>> protect_order(rows)                     # most sensitive first
['fc3', 'fc2', 'fc1']
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

from torch import nn

from slimkit.core.methods import MethodConfig, apply_
from slimkit.core.task import Task


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy that shares no slimkit bookkeeping with `model`."""
    out = copy.deepcopy(model)
    for key in ("slimkit_base", "slimkit_edits"):
        if key in model.__dict__:
            out.__dict__[key] = copy.deepcopy(model.__dict__[key])
    return out


def layer_sensitivity(model: nn.Module, task: Task, score: Callable[[nn.Module], float],
                      probes: list[MethodConfig], layers: list[str], time_cap: float = 60.0) -> list[dict]:
    """One row per (layer, probe): the held-out score with only that layer compressed by the probe
    and the drop in points from the uncompressed model. Stops early after `time_cap` seconds."""
    base = score(model)
    rows: list[dict] = []
    start = time.monotonic()
    for layer in layers:
        for probe in probes:
            if time.monotonic() - start > time_cap:
                return rows
            trial = fresh_copy(model)
            try:
                trial = apply_(trial, probe.model_copy(update={"targets": [layer], "ignore": []}), task)
            except (ValueError, TypeError, RuntimeError) as exc:   # e.g. the probe does not fit this layer
                rows.append({"layer": layer, "probe": _label(probe), "score": None, "drop_pts": None,
                             "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
                continue
            value = score(trial)
            rows.append({"layer": layer, "probe": _label(probe), "score": round(value, 6),
                         "drop_pts": round((base - value) * 100, 3)})
    return rows


def protect_order(rows: list[dict]) -> list[str]:
    """Layers by total drop over all probes, most sensitive first."""
    total: dict[str, float] = {}
    for r in rows:
        total[r["layer"]] = total.get(r["layer"], 0.0) + (r["drop_pts"] or 0.0)
    return sorted(total, key=lambda name: -total[name])


def _label(config: MethodConfig) -> str:
    options = config.model_dump(exclude_unset=True, exclude={"targets", "ignore"})
    return config.method + "(" + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
