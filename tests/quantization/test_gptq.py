"""GPTQ: the math lowers layer output error vs round-to-nearest; the driver calibrates layer by layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.core.task import Task
from slimkit.dist.calibration import linear_stages
from slimkit.nn.quant_linear import QuantLinear
from slimkit.nn.quant_math import rtn_quantize
from slimkit.quantization.api import GPTQConfig, WeightOnlyConfig
from slimkit.quantization.convert import quant_report
from slimkit.quantization.gptq import gptq_quantize, hessian_init, hessian_update, hessian_value


def _layer(seed=0, rows=32, cols=64, n=1024):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen) / cols**0.5
    x = torch.randn(n, cols, generator=gen) @ mix + 0.1 * torch.randn(n, cols, generator=gen)
    x[:, :4] *= 8                                             # a few outlier input channels
    w = 0.05 * torch.randn(rows, cols, generator=gen)
    acc = hessian_init(cols)
    hessian_update(acc, x)
    return w, x, hessian_value(acc)


def _out_err(x, w, qw):
    return float((x @ (qw.dequantize() - w).t()).pow(2).mean())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("granularity,symmetric,act_order",
                         [("channel", True, False), ("group", True, True), ("group", False, False),
                          ("tensor", True, True)])
def test_gptq_beats_round_to_nearest_on_layer_output(bits, granularity, symmetric, act_order):
    w, x, h = _layer(bits)
    rtn = rtn_quantize(w, bits, symmetric, granularity, 16)
    gptq = gptq_quantize(w, h, bits, symmetric, granularity, 16, act_order=act_order)
    assert gptq.codes.shape == w.shape and int(gptq.codes.max()) < 2**bits
    assert _out_err(x, w, gptq) < (0.8 if bits < 8 else 1.0) * _out_err(x, w, rtn)


def test_gptq_scales_are_storage_exact_and_layout_is_unpermuted():
    w, x, h = _layer()
    qw = gptq_quantize(w, h, 4, True, "group", 16, act_order=True, scale_dtype=torch.float16)
    assert qw.scale.dtype == torch.float16 and qw.scale.shape == (32, 4)
    # act-order permutes only the visiting order: the result is close to w column by column
    assert (qw.dequantize() - w).abs().mean() < 0.5 * w.abs().mean()


def test_gptq_survives_dead_inputs_and_rejects_bad_hessian():
    w, _, h = _layer()
    h[5, :] = 0
    h[:, 5] = 0
    qw = gptq_quantize(w, h, 4, True, "channel")
    assert torch.isfinite(qw.dequantize()).all()
    with pytest.raises(ValueError, match="hessian must be"):
        gptq_quantize(w, torch.eye(3), 4, True, "channel")
    with pytest.raises(ValueError, match="no calibration inputs"):
        hessian_value(hessian_init(4))


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)
        self.unused = nn.Linear(16, 16)

    def forward(self, x):
        return self.out(self.q(x) * torch.sigmoid(self.k(x)) + self.v(x))


class _BlockTask(Task):
    def __init__(self, n=64):
        self.n = n

    def example_inputs(self, batch_size):
        return {"x": torch.randn(batch_size, 16)}

    def score(self, model):
        return 0.0

    def calibration(self, n=256):
        gen = torch.Generator().manual_seed(0)
        return [{"x": torch.randn(32, 16, generator=gen)} for _ in range(min(n, self.n) // 32)]


def test_stages_group_layers_sharing_an_input():
    model, task = _Block(), _BlockTask()
    stages, reused = linear_stages(model, task, task.calibration()[0], ["q", "k", "v", "out", "unused"])
    assert stages == [["q", "k", "v"], ["out"]] and not reused


def test_gptq_method_on_a_block_falls_back_for_unreached_layers():
    model = sk.quantize_(_Block(), GPTQConfig(bits=4, group_size=8), data=_BlockTask())
    assert all(isinstance(getattr(model, n), QuantLinear) for n in ("q", "k", "v", "out", "unused"))
    report = quant_report(model)["quantized"]
    assert report["q"].startswith("gptq") and "not reached" in report["unused"]


def test_gptq_needs_calibration_data():
    with pytest.raises(SlimError, match="calibration"):
        sk.quantize_(_Block(), GPTQConfig(bits=4, group_size=8), data=_BlockTask(n=0))
    with pytest.raises(SlimError, match="calibration"):
        GPTQConfig(bits=4, group_size=8).apply(_Block(), None, None)


def test_gptq_on_lenet_beats_rtn_at_two_bits(lenet, lenet_trained, digits_task):
    import copy

    rtn = sk.quantize_(copy.deepcopy(lenet), WeightOnlyConfig(bits=2, granularity="channel"), data=digits_task)
    gptq = sk.quantize_(lenet, GPTQConfig(bits=2, granularity="channel", samples=256), data=digits_task)
    base = digits_task.validation_score(lenet_trained)
    assert digits_task.validation_score(gptq) > digits_task.validation_score(rtn) + 0.05
    assert base - digits_task.validation_score(gptq) < 0.03


def test_int4_recipe_ships():
    recipe = sk.load_recipe("int4")
    assert recipe.stages[0].method == "gptq" and recipe.stages[0].bits == 4
    assert recipe.stages[0].embedding_bits <= 8
