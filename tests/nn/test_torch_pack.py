"""torch's own low-bit CPU kernels (slimkit.nn.torch_pack): every code layout maps onto them with the
codes used exactly (the only error is bf16 activations and scales), layers run them when they win,
and a compiled graph calls the kernels eager calls settled on."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.nn import kernels, nbits, torch_pack
from slimkit.nn.kernels import forget_choices, rel_err, settled_kernel
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear, QuantLinear
from slimkit.nn.quant_math import rtn_quantize
from slimkit.nn.tied_head import TiedLMHead

pytestmark = pytest.mark.skipif(not torch_pack.available(), reason="no int4pack / int8pack CPU kernels")
BF16_BOUND = 1e-2   # bf16 activations and scales: ~3e-3 relative on random layers


@pytest.fixture(autouse=True)
def fresh_choices():
    forget_choices()
    yield
    forget_choices()


def _only(monkeypatch, cls, name: str) -> None:
    """Leave the kernel choice of `cls` only torch's kernel: MatMulNBits is out and the decoded-weight
    candidate gives wrong numbers (it fails the reference check; no timing decides)."""
    monkeypatch.setattr(nbits, "supports", lambda *a: False)
    dense = cls._dense
    if cls is Int8Linear:   # its reference is its own dense product: keep that one right
        reference = cls._reference
        monkeypatch.setattr(cls, "_reference", lambda self, x: (dense(self, x), reference(self, x)[1]))
    monkeypatch.setattr(cls, "_dense", lambda self, x: 2 * dense(self, x))


@pytest.mark.parametrize("bits,symmetric,granularity,group", [
    (4, False, "group", 64), (4, True, "group", 32), (3, False, "group", 128), (2, True, "channel", 0),
    (4, False, "tensor", 0), (8, True, "channel", 0), (6, True, "channel", 0)])
def test_codes_map_exactly(bits, symmetric, granularity, group):
    torch.manual_seed(bits)
    w = torch.randn(64, 256)
    layer = QuantLinear.from_quantized(rtn_quantize(w, bits, symmetric, granularity, group), torch.randn(64),
                                       symmetric)
    assert layer._lean_kernels() == () or "pack" in layer._lean_kernels() or bits > 4
    kernel = layer._build_pack()
    x = torch.randn(3, 256)
    exact = F.linear(x, layer.dequantized_weight(), layer.bias)
    assert rel_err(kernel(x), exact) < BF16_BOUND
    if symmetric or bits < 4:   # codes and offsets exact: only bf16 activations and scales differ
        assert rel_err(kernel(x), F.linear(x.bfloat16().float(), layer.dequantized_weight(), layer.bias)) < 5e-3


def test_layouts_the_kernels_refuse():
    assert not torch_pack.supports_int4(100, 256, 4, 64), "output channels must be a multiple of 16"
    assert not torch_pack.supports_int4(64, 80, 4, 80), "no group of 32-256 divides 80"
    assert not torch_pack.supports_int8(8, False, True), "asymmetric 8-bit codes do not fit int8"
    assert not torch_pack.supports_int8(8, True, False), "group-wise scales do not fit the int8 kernel"
    with pytest.raises(ValueError, match="int4pack"):
        torch_pack.Int4PackMatMul(torch.zeros(100, 64, dtype=torch.uint8), torch.ones(100, 1), None, 4)


def test_quant_linear_runs_int4pack_and_drops_the_decoded_copy(monkeypatch):
    _only(monkeypatch, QuantLinear, "pack")
    torch.manual_seed(0)
    layer = QuantLinear.from_quantized(rtn_quantize(torch.randn(320, 256), 4, False, "group", 64), None, False)
    x1 = torch.randn(1, 1, 256)
    with torch.no_grad():
        for _ in range(4 * kernels.TRIAL_SAMPLES):
            y = layer(x1)
    state = layer.runtime_state()
    assert state["choices"] == {"rows<=1": "pack"} and layer._cache.value is None
    assert state["cache_bytes"] == layer._pack_cache.value.nbytes < 320 * 256, "half a byte per weight, plus scales"
    assert rel_err(y.reshape(1, 320), F.linear(x1.reshape(1, 256), layer.dequantized_weight())) < BF16_BOUND


def test_int8_linear_reads_its_own_codes(monkeypatch):
    _only(monkeypatch, Int8Linear, "pack")
    torch.manual_seed(1)
    q = Int8Linear.from_linear(nn.Linear(256, 384))
    x1 = torch.randn(1, 256)
    with torch.no_grad():
        for _ in range(4 * kernels.TRIAL_SAMPLES):
            y = q(x1)
    assert q.runtime_state()["choices"] == {"rows<=1": "pack"}
    assert q.runtime_state()["cache_bytes"] == 384 * 2, "the int8 buffer is shared: only bf16 scales are held"
    assert rel_err(y, F.linear(x1, q.dequantized_weight(), q.bias)) < BF16_BOUND


@pytest.mark.parametrize("bits,group", [(8, 0), (4, 32)])
def test_tied_head_multiplies_by_the_embedding_codes(monkeypatch, bits, group):
    _only(monkeypatch, TiedLMHead, "pack")
    torch.manual_seed(2)
    model = nn.Module()
    gran = "channel" if group == 0 else "group"
    model.embed = QuantEmbedding.from_embedding(nn.Embedding(512, 192), bits=bits, granularity=gran,
                                                group_size=group or 128, symmetric=bits == 8)
    head = TiedLMHead(192, 512, "embed").bind(model)
    x1 = torch.randn(1, 192)
    with torch.no_grad():
        for _ in range(4 * kernels.TRIAL_SAMPLES):
            y = head(x1)
    assert head.runtime_state()["choices"] == {"rows<=1": "pack"}
    assert rel_err(y, x1 @ model.embed.dequantized_weight().t()) < BF16_BOUND


def test_compiled_graph_calls_the_settled_kernel(monkeypatch):
    _only(monkeypatch, QuantLinear, "pack")
    torch.manual_seed(3)
    layer = QuantLinear.from_quantized(rtn_quantize(torch.randn(256, 256), 4, False, "group", 64), None, False)
    x1 = torch.randn(1, 256)
    with torch.no_grad():
        for _ in range(4 * kernels.TRIAL_SAMPLES):
            eager = layer(x1)
        assert settled_kernel(layer, 1) is layer._pack_cache.value and settled_kernel(layer, 30) is None
        try:
            compiled = torch.compile(layer, backend="eager", fullgraph=True)(x1)
        except Exception as exc:  # noqa: BLE001 - dynamo unusable here (no compiler, old Python)
            pytest.skip(f"torch.compile is unavailable: {type(exc).__name__}")
    assert torch.equal(compiled, eager)
