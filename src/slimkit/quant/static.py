"""`int8-static`: int8 weights and int8 activations with scales fixed by calibration.

One calibration pass feeds every target Linear's input to an observer (`observers.py`); each
layer then becomes an `Int8Linear` with a fixed per-tensor input scale. Conv2d layers (`conv`)
get int8 per-channel weights as in `int8`, run weight-only with fp32 activations (no integer
convolution is faster here, see `slimkit.nn.quant_conv`), so they need no calibration.

>>> sk.quantize_(model, Int8Static(observer="percentile", percentile=99.99), data=task)
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import field_validator
from torch import nn

from slimkit.api import Family, MethodConfig, register_method
from slimkit.dist.collectives import shard
from slimkit.errors import SlimError
from slimkit.eval.task import Task
from slimkit.quant.api import INT8_CONV, _embedding_factory
from slimkit.quant.conv import int8_conv
from slimkit.quant.convert import convert, note_skipped, select_targets
from slimkit.quant.math import check_calibration
from slimkit.quant.observers import Observer, ObserverKind
from slimkit.select import FilterFn


def observe_inputs(model: nn.Module, task: Task, batches: list, names: list[str],
                   kind: ObserverKind, percentile: float) -> dict[str, Observer]:
    """Observers of the inputs of the named modules over all calibration batches."""
    observers = {n: Observer(kind, percentile) for n in names}
    hooks = [model.get_submodule(n).register_forward_pre_hook(
        lambda _m, args, n=n: observers[n].update(args[0])) for n in names]
    try:
        with torch.no_grad():
            for batch in shard(batches):  # under torch.distributed: this rank's share
                task.forward(model, batch)
    finally:
        for h in hooks:
            h.remove()
    for obs in observers.values():  # merged over ranks (no-op in one process)
        obs.all_reduce()
    return observers


@register_method
class Int8Static(MethodConfig):
    """int8 weights (per channel) and int8 activations with calibrated per-tensor scales."""

    method: ClassVar[str] = "int8-static"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "int8 weights + static int8 activations calibrated by an observer"
    observer: ObserverKind = ObserverKind.PERCENTILE
    percentile: float = 99.99
    samples: int = 256
    embeddings: bool = True
    conv: bool = True

    @field_validator("percentile")
    @classmethod
    def _percentile(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"percentile must lie in (0, 100], got {v}")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        from slimkit.nn.quant_linear import Int8Linear

        handled = (nn.Linear,) + ((nn.Embedding,) if self.embeddings else ()) + ((nn.Conv2d,) if self.conv else ())
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, handled)
        linears = [(n, m) for n, m in picked if type(m) is nn.Linear]
        if task is None:
            raise SlimError("int8-static needs calibration data: pass data=<task>")
        batches = check_calibration(task.calibration(self.samples), "int8-static calibration data")
        was_training = model.training
        model.eval()
        observers = observe_inputs(model, task, batches, [n for n, _ in linears], self.observer,
                                   self.percentile)
        reached = [(n, m) for n, m in linears if observers[n].count_]
        convert(model, reached, lambda n, m: Int8Linear.from_linear(m, observers[n].scale()),
                f"int8 static ({self.observer.value})", skipped)
        unreached = {n: "not reached by calibration" for n, _ in linears if not observers[n].count_}
        note_skipped(model, unreached)
        embeddings = [(n, m) for n, m in picked if type(m) is nn.Embedding]
        convert(model, embeddings, _embedding_factory(8, True, None, False), "int8 embedding")
        convert(model, [(n, m) for n, m in picked if type(m) is nn.Conv2d], lambda _n, m: int8_conv(m), INT8_CONV)
        model.train(was_training)
        return model
