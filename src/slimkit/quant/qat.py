"""Quantization-aware training: fake-quantized weights with a straight-through estimator, and
optionally a learned step size (LSQ, Esser et al. 2019), fine-tuned on the task's labelled data,
then converted to the same packed `QuantLinear` the post-training methods produce.

>>> sk.quantize_(model, QAT(bits=4, epochs=3), data=digits_task)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import field_validator
from torch import nn

from slimkit.api import Family, MethodConfig, register_method
from slimkit.errors import SlimError
from slimkit.eval.task import Task
from slimkit.quant.convert import convert, select_targets
from slimkit.quant.math import Granularity, QuantizedWeight, check_bits
from slimkit.select import FilterFn


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
        qmax = 2 ** (bits - 1) - 1
        init = (self.weight.detach().abs().amax(1, keepdim=True) / qmax).clamp_min(1e-8)
        self.step = nn.Parameter(init, requires_grad=learn_step)

    def current_step(self) -> torch.Tensor:
        if self.learn_step:
            return self.step.abs().clamp_min(1e-8)
        qmax = 2 ** (self.bits - 1) - 1
        return (self.weight.detach().abs().amax(1, keepdim=True) / qmax).clamp_min(1e-8)

    def quantized_weight(self) -> torch.Tensor:
        factor = 1.0 / math.sqrt(self.weight.numel() * (2 ** (self.bits - 1) - 1))
        return fake_quantize_lsq(self.weight, self.current_step(), self.bits, factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def to_quantized(self) -> QuantizedWeight:
        """Codes and fp32 scales that reproduce this layer's fake-quantized weight exactly."""
        step = self.current_step().detach().float()
        qmax = 2 ** (self.bits - 1) - 1
        q = torch.clamp(torch.round(self.weight.detach() / step), -qmax, qmax)
        codes = (q + 2 ** (self.bits - 1)).to(torch.uint8)
        return QuantizedWeight(codes, step, None, self.bits, Granularity.CHANNEL, self.weight.shape[1])

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}, {self.weight.shape[0]}, bits={self.bits}, lsq={self.learn_step}"


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


@register_method
class QAT(MethodConfig):
    """Fine-tune with fake-quantized weights (STE; LSQ step sizes when `lsq`), then pack."""

    method: ClassVar[str] = "qat"
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "quantization-aware training (STE + LSQ), per-channel weights, bit-packed"
    bits: int = 4
    lsq: bool = True
    epochs: int = 3
    lr: float = 5e-4
    batch_size: int = 64
    seed: int = 0
    checkpoint: str | None = None  # folder: save after every epoch, resume from it when run again

    @field_validator("bits")
    @classmethod
    def _bits(cls, v: int) -> int:
        check_bits(v)
        if v < 2:
            raise ValueError("bits must be at least 2 for symmetric QAT")
        return v

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be a positive integer, got {v}")
        return v

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        from slimkit.nn.quant_linear import QuantLinear

        picked, skipped = select_targets(model, self.targets, self.ignore, filter_fn, (nn.Linear,))
        if task is None:
            raise SlimError("qat needs labelled training data: pass data=<task>")
        try:
            batches = task.train_batches(self.batch_size, self.seed)
        except NotImplementedError as exc:
            raise SlimError(f"qat needs labelled training data: {exc}") from None
        if not batches:
            raise SlimError("qat training data is empty")
        fakes = {name: FakeQuantLinear(m, self.bits, self.lsq) for name, m in picked}
        for name, fake in fakes.items():
            _swap(model, name, fake)
        self.train(model, task)
        convert(model, list(fakes.items()),
                lambda _n, f: QuantLinear.from_quantized(f.to_quantized(), f.bias, True, "float32"),
                f"qat w{self.bits} per-channel{' lsq' if self.lsq else ''}", skipped)
        return model

    def train(self, model: nn.Module, task: Task) -> None:
        """The fine-tuning loop (Adam, cross-entropy); BatchNorm statistics stay frozen.

        With `checkpoint`, the model, optimizer and RNG are saved (pickle-free, atomically) after
        every epoch, and a later run with the same settings resumes after the last saved epoch."""
        from slimkit.distill.loop import CHECKPOINT, LoopSettings, load_checkpoint, save_checkpoint

        was_training = model.training
        model.train()
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.lr)
        settings = LoopSettings(epochs=self.epochs, lr=self.lr, weight_decay=0.0, schedule="constant",
                                seed=self.seed)
        path = Path(self.checkpoint) / CHECKPOINT if self.checkpoint else None
        first = 0
        if path is not None and path.is_file():
            state, _ = load_checkpoint(path, model, opt, settings)
            if state.get("bits") != self.bits or state.get("lsq") != self.lsq:
                raise SlimError(f"{path} was written by qat with other bits/lsq; use a new checkpoint folder")
            first = int(state["epoch"])
        for epoch in range(first, self.epochs):
            for inputs, target in task.train_batches(self.batch_size, self.seed + epoch):
                opt.zero_grad()
                loss = F.cross_entropy(task.forward(model, inputs), target)
                loss.backward()
                opt.step()
            if path is not None:
                save_checkpoint(path, model, opt, {}, {"epoch": epoch + 1, "bits": self.bits, "lsq": self.lsq},
                                settings)
        model.train(was_training)

    @classmethod
    def example(cls) -> QAT:
        return cls(bits=4, epochs=1)
