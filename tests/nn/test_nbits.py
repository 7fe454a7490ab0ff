"""Low-bit kernels that read the codes (slimkit.nn.nbits: ONNX Runtime's MatMulNBits) and how the
kernel choice uses them: exact packing, W·A8 agreement, the trial at one row, memory kept honest."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.nn import kernels, nbits
from slimkit.nn import quant_linear as quant_linear_module
from slimkit.nn.kernels import KernelChoice, forget_choices, rel_err, runtime_report
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear, QuantLinear
from slimkit.nn.quant_math import quantize_per_token, rtn_quantize
from slimkit.nn.tied_head import TiedLMHead

LEAN = ("nbits", "pack")   # the kernels reading the codes: MatMulNBits, torch's int4pack / int8pack
needs_ort = pytest.mark.skipif(not nbits.available(), reason="onnxruntime with MatMulNBits is not installed")


@pytest.fixture(autouse=True)
def fresh_choices():
    forget_choices()
    yield
    forget_choices()


def _per_token_error(x: torch.Tensor, weight: torch.Tensor) -> float:
    xq, xs = quantize_per_token(x)
    return rel_err(F.linear(xq.float() * xs, weight), F.linear(x, weight))


@needs_ort
@pytest.mark.parametrize("bits,symmetric,granularity,group", [
    (4, False, "group", 64), (4, True, "group", 32), (3, False, "group", 64), (2, False, "channel", 0),
    (8, True, "channel", 0), (6, False, "group", 64), (5, True, "tensor", 0)])
def test_codes_map_exactly_and_products_stay_within_int8_activation_error(bits, symmetric, granularity, group):
    torch.manual_seed(bits)
    qw = rtn_quantize(torch.randn(40, 192), bits, symmetric, granularity, group or 192)
    layer = QuantLinear.from_quantized(qw, None, symmetric)
    weight = layer.dequantized_weight()
    kernel = nbits.NBitsMatMul(layer.qweight, layer.scale, layer.zero, bits)
    # one-hot rows quantize to int8 exactly, so they read the weight back column by column
    assert torch.allclose(kernel(torch.eye(192)), weight.t(), rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 192)
    assert rel_err(kernel(x), F.linear(x, weight)) <= 2 * _per_token_error(x, weight)


def test_layouts_without_a_block_are_refused():
    assert nbits.block_size(576, 64) == 64 and nbits.block_size(576, 576) == 64
    assert nbits.block_size(1536, 1536) == 128 and nbits.block_size(100, 100) is None
    assert not nbits.supports(10, 64, 4, 64), "too small to gain"
    with pytest.raises(ValueError, match="no MatMulNBits block"):
        nbits.NBitsMatMul(torch.zeros(4, 100, dtype=torch.uint8), torch.ones(4, 1), None, 4)


def test_lean_choice_drops_decoded_copies_and_reopens_their_buckets():
    released: list[set[str]] = []
    w = torch.randn(8, 32)

    def slow(t):
        time.sleep(0.003)
        return t @ w.t()

    choice = KernelChoice(("lean-test",), {"dense": lambda t: t @ w.t(), "lean": slow}, lean=("lean",),
                          decoded=("dense",), release=released.append)
    ref = lambda x: (lambda: (x @ w.t(), 1e-5))  # noqa: E731
    x64 = torch.randn(40, 32)
    choice.run(x64, ref(x64))                       # many rows: measured in a loop, the fast dense wins
    assert choice.names == {64: "dense"} and released[-1] == {"dense"}
    choice.candidates["dense"] = choice.chosen[64] = lambda t: (time.sleep(0.03), t @ w.t())[1]
    x1 = torch.randn(1, 32)
    for _ in range(4 * kernels.TRIAL_SAMPLES):      # one row: timed where it runs, until both have samples
        choice.run(x1, ref(x1))
        if 1 in choice.names:
            break
    assert choice.names == {1: "lean"}, "the lean kernel won one row, so the dense bucket is reopened"
    assert released[-1] == {"lean"} and set(choice.timings[1]) == {"dense", "lean"}
    choice.run(x64, ref(x64))                       # reopened: only lean kernels may run it now
    assert choice.names == {1: "lean", 64: "lean"}


def test_a_per_call_decode_runs_large_batches_of_a_layer_whose_batch_1_reads_codes():
    """Once a lean kernel runs one row, the cached decoded copy is off; a per-call decode (exact, held
    only during the call) still competes for many rows, and never for one."""
    w = torch.randn(8, 32)
    calls: list[str] = []

    def kernel(name, delay):
        return lambda t: (calls.append(name), time.sleep(delay), t @ w.t())[2]

    choice = KernelChoice(("per-call-test",), {"dense": kernel("dense", 0.03), "decode": kernel("decode", 0),
                                               "lean": kernel("lean", 0.01)},
                          lean=("lean",), decoded=("dense",), per_call=("decode",))
    ref = lambda x: (lambda: (x @ w.t(), 1e-5))  # noqa: E731
    x1 = torch.randn(1, 32)
    for _ in range(4 * kernels.TRIAL_SAMPLES):
        choice.run(x1, ref(x1))
        if 1 in choice.names:
            break
    assert choice.names == {1: "lean"} and set(choice.timings[1]) == {"dense", "lean"}
    assert "decode" not in calls, "one row never decodes the whole weight per call"
    x64 = torch.randn(40, 32)
    choice.run(x64, ref(x64))
    assert choice.names == {1: "lean", 64: "decode"} and set(choice.timings[64]) == {"decode", "lean"}


def test_quant_linear_offers_a_per_call_decode_that_is_exact():
    layer = QuantLinear.from_quantized(rtn_quantize(torch.randn(512, 256), 4, False, "group", 64), None, False)
    x = torch.randn(600, 256)
    with torch.no_grad():
        assert torch.equal(layer._decode_call(x), layer._dense(x))
        assert layer._new_choice().per_call == ("decode",)


def _settle(layer: nn.Module, x1: torch.Tensor) -> None:
    with torch.no_grad():
        for _ in range(4 * kernels.TRIAL_SAMPLES):
            layer(x1)


def _slow_dense(monkeypatch, cls) -> None:
    """Make the decoded-weight kernel of `cls` slow, so that the trial picks the lean one for sure
    (and offer the same candidates on every CPU class: no `_int_mm` or fbgemm, which VNNI would add)."""
    dense = cls._dense
    monkeypatch.setattr(quant_linear_module, "fast_int_mm", lambda: False)
    monkeypatch.setattr(quant_linear_module, "has_fbgemm", lambda: False)

    def slow(self, x):
        time.sleep(0.01)
        return dense(self, x)

    monkeypatch.setattr(cls, "_dense", slow)


@needs_ort
def test_int8_linear_runs_codes_at_one_row_and_keeps_no_fp32_copy(monkeypatch):
    _slow_dense(monkeypatch, Int8Linear)
    torch.manual_seed(0)
    lin = nn.Linear(256, 384)
    q = Int8Linear.from_linear(lin)
    x1 = torch.randn(1, 256)
    _settle(q, x1)
    state = q.runtime_state()
    chosen = state["choices"]["rows<=1"]
    assert chosen in LEAN and set(state["choices"]) == {"rows<=1"}
    kernel = q.__dict__[f"_{chosen}_cache"].value
    assert state["cache_bytes"] == kernel.nbytes < 256 * 384 * 4 / 3, "codes read as stored: no fp32 copy"
    with torch.no_grad():
        y, ref = q(x1), F.linear(x1, q.dequantized_weight(), q.bias)
        x = torch.randn(30, 256)
        y30 = q(x)
    assert rel_err(y, ref) <= q._reference(x1)[1]
    after = q.runtime_state()
    # many rows may run the lean kernel or decode per call; neither keeps a decoded fp32 weight
    assert after["choices"]["rows<=64"] in LEAN + ("decode",)
    assert after["cache_bytes"] < 256 * 384 * 4 / 3, "many rows kept no fp32 copy either"
    assert rel_err(y30, F.linear(x, q.dequantized_weight(), q.bias)) <= q._reference(x)[1]


@needs_ort
def test_a_layer_holding_a_kernel_session_copies_without_it():
    """The "auto" runtime exports a deep copy of the model: a layer whose batch-1 kernel is an ONNX
    Runtime session (which cannot be copied) made every such export fail, so MiniLM int8 ran torch."""
    import copy

    torch.manual_seed(0)
    q = Int8Linear.from_linear(nn.Linear(256, 384))
    x1 = torch.randn(1, 256)
    with torch.no_grad():
        y = q._nbits(x1)                       # the MatMulNBits candidate builds its session
    assert q._nbits_cache.value is not None
    twin = copy.deepcopy(q)
    assert twin._nbits_cache.value is None, "the copy rebuilds its own kernel"
    with torch.no_grad():
        assert torch.equal(twin._nbits(x1), y)


@needs_ort
def test_quant_linear_4bit_runs_codes_within_tolerance(monkeypatch):
    _slow_dense(monkeypatch, QuantLinear)
    torch.manual_seed(1)
    layer = QuantLinear.from_quantized(rtn_quantize(torch.randn(320, 256), 4, False, "group", 64),
                                       torch.randn(320), False)
    x1 = torch.randn(1, 1, 256)
    _settle(layer, x1)
    assert layer.runtime_state()["choices"]["rows<=1"] in LEAN
    assert layer._cache.value is None, "the decoded weight was dropped"
    with torch.no_grad():
        y = layer(x1)
    ref, tolerance = layer._reference(x1.reshape(1, 256))
    assert y.shape == (1, 1, 320) and rel_err(y.reshape(1, 320), ref) <= tolerance
    small = QuantLinear.from_quantized(rtn_quantize(torch.randn(20, 64), 4, False, "group", 32), None, False)
    with torch.no_grad():
        small(torch.randn(1, 64))
    assert "_kernel_choice" not in small.__dict__, "small layers keep the cached decode"


@needs_ort
def test_tied_head_multiplies_by_the_embedding_codes(monkeypatch):
    _slow_dense(monkeypatch, TiedLMHead)
    torch.manual_seed(2)
    model = nn.Module()
    model.embed = QuantEmbedding.from_embedding(nn.Embedding(512, 192), bits=8)
    head = TiedLMHead(192, 512, "embed").bind(model)
    x1 = torch.randn(1, 192)
    _settle(head, x1)
    report = runtime_report(model)
    assert report["layers"]["embed"]["cache_bytes"] == 0, "no decoded fp32 table"
    with torch.no_grad():
        y = head(x1)
    table = model.embed.dequantized_weight()
    assert rel_err(y, x1 @ table.t()) <= 2 * _per_token_error(x1, table) + 1e-5


@needs_ort
def test_other_onnx_runtime_sessions_still_build_after_a_low_bit_kernel():
    """The kernels' sessions leave ONNX Runtime's process-wide thread pool alone: with it set, every
    later session that asks for its own threads (sk.load's onnxruntime runtime, the export check) failed."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    codes = torch.randint(0, 16, (64, 128), dtype=torch.uint8)
    kernel = nbits.NBitsMatMul(codes, torch.rand(64, 2) + 0.1, None, 4)
    x = torch.randn(1, 128)
    assert kernel(x).shape == (1, 64)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out = session.run(None, {"x": torch.tensor([[-1.0, 2.0, -3.0, 4.0]]).numpy()})[0]
    assert out.tolist() == [[0.0, 2.0, 0.0, 4.0]]
