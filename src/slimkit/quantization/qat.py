"""Quantization-aware training: fake-quantized weights with a straight-through estimator, and
optionally a learned step size (LSQ, Esser et al. 2019), fine-tuned on the task's labelled data,
then converted to the same packed `QuantLinear` (`QuantConv2d` for a Conv2d) the post-training
methods produce.

>>> sk.quantize_(model, QATConfig(bits=4, epochs=3), data=digits_task)
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn
from slimkit.core.task import Task
from slimkit.nn.quant_conv import QuantConv2d
from slimkit.nn.quant_math import Granularity, QuantizedWeight, check_bits
from slimkit.quantization.conv import quantized_layer
from slimkit.quantization.convert import convert, select_targets
from slimkit.train.loop import Hooks, LoopSettings, fit
from slimkit.train.supervised import cross_entropy, task_batches


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """x forward; its gradient multiplied by `factor` backward (LSQ's step-size gradient scale)."""
    return (x - x * factor).detach() + x * factor


def fake_quantize_lsq(w: torch.Tensor, step: torch.Tensor, bits: int,
                      grad_factor: float = 1.0) -> torch.Tensor:
    """Symmetric fake quantization round(clamp(w / step)) * step, differentiable in w and step."""
    qmax = 2 ** (bits - 1) - 1
    s = scale_grad(step, grad_factor)
    return round_ste(torch.clamp(w / s, -qmax, qmax)) * s


class FakeQuantLinear(nn.Module):
    """Training-time Linear whose weight is fake-quantized per output channel."""

    def __init__(self, linear: nn.Linear, bits: int, learn_step: bool = True):
        super().__init__()
        self.bits, self.learn_step = check_bits(bits), learn_step
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.step = nn.Parameter(self._minmax_step(), requires_grad=learn_step)

    def _minmax_step(self) -> torch.Tensor:
        """max |w| / qmax per output channel, shaped to broadcast over the weight."""
        qmax = 2 ** (self.bits - 1) - 1
        dims = tuple(range(1, self.weight.dim()))
        return (self.weight.detach().abs().amax(dims, keepdim=True) / qmax).clamp_min(1e-8)

    def current_step(self) -> torch.Tensor:
        if self.learn_step:
            return self.step.abs().clamp_min(1e-8)
        return self._minmax_step()

    def quantized_weight(self) -> torch.Tensor:
        factor = 1.0 / math.sqrt(self.weight.numel() * (2 ** (self.bits - 1) - 1))
        return fake_quantize_lsq(self.weight, self.current_step(), self.bits, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def to_quantized(self) -> QuantizedWeight:
        """Codes and fp32 scales that reproduce this layer's fake-quantized weight exactly (a
        conv's weight flattened to (out, in/groups * kh * kw))."""
        step = self.current_step().detach().float()
        qmax = 2 ** (self.bits - 1) - 1
        q = torch.clamp(torch.round(self.weight.detach() / step), -qmax, qmax)
        codes = (q + 2 ** (self.bits - 1)).to(torch.uint8).reshape(q.shape[0], -1)
        return QuantizedWeight(codes, step.reshape(-1, 1), None, self.bits, Granularity.CHANNEL, codes.shape[1])

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, bits={self.bits}, lsq={self.learn_step}"


class FakeQuantConv2d(FakeQuantLinear):
    """Training-time Conv2d whose weight is fake-quantized per output channel (LSQ step per channel)."""

    def __init__(self, conv: nn.Conv2d, bits: int, learn_step: bool = True):
        super().__init__(conv, bits, learn_step)   # weight (out, in/g, kh, kw), step (out, 1, 1, 1)
        self.conv = {k: getattr(conv, k) for k in ("stride", "padding", "dilation", "groups")}
        self.geometry = {"in_channels": conv.in_channels, "out_channels": conv.out_channels,
                         "kernel_size": conv.kernel_size, **self.conv}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.quantized_weight(), self.bias, **self.conv)

    def to_packed(self) -> nn.Module:
        """The `QuantConv2d` holding this layer's codes, scales and trained bias."""
        qw = self.to_quantized()
        layer = QuantConv2d(**self.geometry, bias=self.bias is not None, bits=qw.bits, symmetric=True,
                            granularity=qw.granularity, group_size=qw.group_size, scale_dtype="float32")
        layer._load_quantized(qw)
        if self.bias is not None:
            layer.bias.data.copy_(self.bias.detach().float())
        return layer.to(self.weight.device)


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@register_method
class QATConfig(MethodConfig):
    """Fine-tune with fake-quantized weights (STE; LSQ step sizes when `lsq`), then pack."""

    method: ClassVar[str] = "qat"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "quantization-aware training (STE + LSQ), per-channel weights, bit-packed"
    bits: int = 4
    lsq: bool = True
    epochs: int = Field(3, ge=1)
    lr: float = Field(5e-4, gt=0, le=10)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    checkpoint: str | None = None  # folder: save after every epoch, resume from it when run again

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        check_bits(v)
        if v < 2:
            raise ValueError("bits must be at least 2 for symmetric QAT")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, (nn.Linear, nn.Conv2d))
        task_batches(task, self.batch_size, self.seed, "qat")   # labelled data first, before any surgery
        fakes = {name: (FakeQuantConv2d if type(m) is nn.Conv2d else FakeQuantLinear)(m, self.bits, self.lsq)
                 for name, m in picked}
        for name, fake in fakes.items():
            _swap(model, name, fake)
        self.train(model, task)
        how = f"qat w{self.bits} per-channel{' lsq' if self.lsq else ''}"
        linears = [(n, f) for n, f in fakes.items() if not isinstance(f, FakeQuantConv2d)]
        convert(model, linears, lambda _n, f: quantized_layer(f, f.to_quantized(), True, "float32"), how, skipped)
        convs = [(n, f) for n, f in fakes.items() if isinstance(f, FakeQuantConv2d)]
        convert(model, convs, lambda _n, f: f.to_packed(), f"{how} (conv)")
        return model

    def train(self, model: nn.Module, task: Task) -> None:
        """Fine-tune on `slimkit.train`'s loop: Adam, constant LR, cross-entropy, the last epoch
        kept; BatchNorm statistics stay frozen.

        With `checkpoint`, the model, optimizer and RNG are saved (pickle-free, atomically) after
        every epoch, and a later run with the same settings resumes after the last saved epoch."""
        batches = task_batches(task, self.batch_size, self.seed, "qat")
        settings = LoopSettings(epochs=self.epochs, lr=self.lr, weight_decay=0.0, optimizer="adam",
                                schedule="constant", seed=None, freeze_norm=True)
        hooks = Hooks(resume_key={"bits": self.bits, "lsq": self.lsq, "seed": self.seed})
        was_training = model.training
        try:
            fit(model, cross_entropy(task), batches, settings, hooks=hooks, checkpoint=self.checkpoint)
        finally:
            model.train(was_training)

    @classmethod
    def example(cls) -> QATConfig:
        return cls(bits=4, epochs=1)


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
QAT = QATConfig
