"""AWQ and SmoothQuant on models with activation outliers: better than plain RTN / W8A8, folded where
exact, saved and loaded to identical outputs, estimated to the byte scale of the real file."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from llm_models import (
    CASES,
    MLPTask,
    case,
    one_thread,  # noqa: F401  (fixture)
    output_mse,
)
from slimkit.dist.calibration import hessian_stages
from slimkit.io.sizing import Plan, estimate_stage, file_size
from slimkit.nn.input_scale import InputScale
from slimkit.nn.kernels import kernel_mode
from slimkit.nn.quant_linear import Int8Linear, QuantLinear
from slimkit.nn.quant_math import rtn_quantize
from slimkit.quantization.awq import search_clip, search_scales, smooth_scales, weight_mean
from slimkit.quantization.fold import FoldFinder
from slimkit.quantization.scaled import ScaleRun

pytestmark = pytest.mark.usefixtures("one_thread")


def _roundtrip(model, name, task, tmp_path):
    path = tmp_path / f"{name}.slim"
    size = sk.save(model, path)
    loaded = sk.load(path, model=CASES[name][0](), runtime="torch")
    with torch.no_grad():
        for batch in task.held_out()[:2]:
            assert torch.equal(task.forward(model, batch), task.forward(loaded, batch))
    return size


@pytest.mark.parametrize("name", ["mlp", "llama"])
def test_awq_beats_rtn_at_4_bits_groups_of_64(name):
    errors = {}
    for config in (sk.WeightOnlyConfig(bits=4, group_size=64, symmetric=False),
                   sk.AWQConfig(bits=4, group_size=64, samples=64)):
        model, reference, task = case(name)
        sk.quantize_(model, config, data=task)
        errors[config.method] = output_mse(model, reference, task)
    assert errors["awq"] < 0.7 * errors["rtn"], errors


@pytest.mark.parametrize("name", ["mlp", "llama"])
def test_smoothquant_beats_plain_w8a8_on_outliers(name):
    errors = {}
    for config in (sk.Int8Config(), sk.SmoothQuantConfig(samples=64)):
        model, reference, task = case(name)
        sk.quantize_(model, config, data=task)
        with kernel_mode("compact"):   # the integer path: activations really quantized to int8
            errors[config.method] = output_mse(model, reference, task)
    assert errors["smoothquant"] < 0.5 * errors["int8"], errors


def test_scales_fold_into_norms_and_linears_else_stay_in_front():
    model, _, task = case("llama")
    sk.quantize_(model, sk.AWQConfig(bits=4, group_size=64, samples=32), data=task)
    attention, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    for layer in (attention.q_proj, attention.k_proj, attention.v_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        assert type(layer) is QuantLinear         # folded: into the RMSNorms, down_proj's into up_proj
    # grouped-query attention: v_proj has fewer outputs than o_proj inputs, nothing to fold into
    assert isinstance(attention.o_proj, nn.Sequential) and type(attention.o_proj.scale) is InputScale
    mlp_model, _, mlp_task = case("mlp")
    sk.quantize_(mlp_model, sk.SmoothQuantConfig(samples=32), data=mlp_task)
    assert all(type(getattr(mlp_model, f)) is Int8Linear for f in ("fc1", "fc2", "fc3"))   # norm, ReLU folds


@pytest.mark.parametrize("method", ["awq", "smoothquant"])
def test_scaled_stages_keep_the_float_model_until_quantized(method):
    """Later stages calibrate on the float function: kept scales wait for quantization."""
    model, reference, task = case("llama")
    config = sk.AWQConfig(bits=4, group_size=64, samples=16) if method == "awq" else sk.SmoothQuantConfig(samples=16)
    run, finder = ScaleRun(model, config), FoldFinder.for_task(model, task)
    linears, _, _ = config._targets(model, None)
    for stage, stats in hessian_stages(model, task, task.calibration(16), linears, hessian=config._needs_hessian):
        run.stage(stage, stats, finder)
    assert run.folded and any(s is not None for s in run.kept.values())     # o_proj keeps its scales
    with torch.no_grad():
        batch = task.held_out()[0]
        torch.testing.assert_close(task.forward(model, batch), task.forward(reference, batch), rtol=1e-4, atol=1e-4)


class GeluMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(128, 64), nn.Linear(64, 32)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x)))


def test_a_fold_that_would_change_the_model_is_refused():
    torch.manual_seed(0)
    model, task = GeluMLP().eval(), MLPTask()
    finder = FoldFinder.for_task(model, task)
    assert finder.candidates(["fc2"]) == ["fc1"] and finder.find(["fc2"]) is None   # GELU is not homogeneous
    reference = copy.deepcopy(model)
    sk.quantize_(model, sk.SmoothQuantConfig(samples=32), data=task)
    assert isinstance(model.fc2, nn.Sequential)
    with kernel_mode("dense"):
        x = task.held_out()[0]["x"]
        torch.testing.assert_close(model(x), reference(x), rtol=0.05, atol=0.02)


@pytest.mark.parametrize("method", ["awq", "smoothquant"])
def test_a_kept_input_scale_exports_to_onnx(method, tmp_path):
    pytest.importorskip("onnxruntime")
    from slimkit.export.onnx import export

    torch.manual_seed(0)
    model, task = GeluMLP().eval(), MLPTask()
    config = sk.AWQConfig(bits=4, group_size=32, samples=32) if method == "awq" else sk.SmoothQuantConfig(samples=32)
    sk.quantize_(model, config, data=task)
    assert isinstance(model.fc2, nn.Sequential)
    result = export(model, tmp_path / "m.onnx", task=task)
    assert result["max_abs_diff"] < 1e-4 and result["integer_layers"] + result["coded_weights"] == 2


@pytest.mark.parametrize("name", ["mlp", "llama"])
@pytest.mark.parametrize("method", ["awq", "smoothquant"])
def test_saves_smaller_loads_identical_and_estimates_match(name, method, tmp_path):
    model, reference, task = case(name)
    config = (sk.AWQConfig(bits=4, group_size=64, samples=32, embedding_bits=8) if method == "awq"
              else sk.SmoothQuantConfig(samples=32))
    plan = Plan.of(reference)
    estimate_stage(plan, config, task)
    sk.quantize_(model, config, data=task)
    size = _roundtrip(model, name, task, tmp_path)
    fp32 = file_size(reference)
    # linear weights: 4 bits + an fp16 scale and 4-bit zero per 64 (4.31 / 32), or 8 bits + fp32 row scales;
    # embeddings 8 bits; norms and biases float32
    assert size < (0.16 if method == "awq" else 0.28) * fp32, (size, fp32)
    assert abs(plan.total() - size) <= 0.05 * size, (plan.total(), size)


def test_math_never_worse_than_plain_rounding():
    torch.manual_seed(0)
    w = torch.randn(32, 64)
    x = torch.randn(256, 64)
    x[:, :4] *= 30
    h = 2 * x.T @ x / x.shape[0]

    def fake(v):
        return rtn_quantize(v, 4, False, "group", 16).dequantize()

    s, alpha = search_scales([w], h, x.abs().mean(0), fake, grid=10)
    assert alpha > 0 and s[:4].min() > s[4:].max()          # salient channels get larger scales
    plain = float(((fake(w) - w) @ h * (fake(w) - w)).sum())
    for scales in (s, search_scales([w], h, x.abs().mean(0), fake, 10, weight_mean([w], 16))[0]):
        delta = fake(w * scales) / scales - w
        assert float((delta @ h * delta).sum()) <= plain
    ratios = search_clip(w, h, 4, False, 16, grid=10)
    assert ratios.shape == (32, 4) and float(ratios.min()) >= 0.5 and float(ratios.max()) == 1.0
    assert smooth_scales(x.abs().amax(0), [w])[:4].min() > 3.0


def test_config_errors_are_one_line():
    with pytest.raises(sk.SlimError, match="awq needs calibration data"):
        sk.quantize_(case("mlp")[0], sk.AWQConfig())
    with pytest.raises(ValueError, match="alpha"):
        sk.SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ValueError, match="max_shrink"):
        sk.AWQConfig(max_shrink=1.0)
