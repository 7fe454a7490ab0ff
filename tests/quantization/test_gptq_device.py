"""GPTQ is device-agnostic: tensors are made where the weight / the inputs live (CUDA untested here)."""

from __future__ import annotations

import pytest
import torch

from slimkit.quantization.gptq import gptq_quantize, hessian_init, hessian_update, hessian_value


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 64, generator=g)
    weight = torch.randn(48, 64, generator=g) * 0.1
    acc = hessian_init(64)
    hessian_update(acc, x)
    return weight, acc


def test_the_accumulator_lives_on_its_device_and_casts_inputs():
    acc = hessian_init(8, device="meta")
    hessian_update(acc, torch.randn(3, 5, 8, dtype=torch.float64))   # inputs moved and cast to it
    assert acc["h"].device.type == "meta" and acc["h"].dtype == torch.float32 and acc["n"] == 15


def test_a_hessian_of_another_dtype_gives_the_same_codes():
    weight, acc = _problem()
    h = hessian_value(acc)
    a = gptq_quantize(weight, h, bits=4, group_size=16, act_order=True)
    b = gptq_quantize(weight, h.double(), bits=4, group_size=16, act_order=True)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale)
    assert a.codes.device == weight.device and a.codes.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    weight, acc = _problem()
    h = hessian_value(acc)
    cpu = gptq_quantize(weight, h, bits=4, group_size=16, act_order=True)
    gpu = gptq_quantize(weight.cuda(), h.cuda(), bits=4, group_size=16, act_order=True)
    assert gpu.codes.is_cuda
    assert float((gpu.codes.cpu() == cpu.codes).float().mean()) > 0.99
