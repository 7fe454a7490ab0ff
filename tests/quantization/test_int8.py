"""int8: integer-matmul Linear, int8 embeddings, the method on the digits models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.nn.kernels import kernel_mode
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear
from slimkit.quantization.api import Int8Config
from slimkit.quantization.convert import quant_report


def test_int8_linear_close_to_float_at_every_batch_size():
    torch.manual_seed(0)
    lin = nn.Linear(96, 40)
    q = Int8Linear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (40, 96)
    for shape in [(1, 96), (3, 96), (2, 7, 96), (64, 96)]:
        x = torch.randn(*shape)
        ref, out = lin(x), q(x)
        assert out.shape == ref.shape
        rel = (out - ref).norm() / ref.norm()
        assert rel < 0.02, f"shape {shape}: relative error {rel:.4f}"


def test_int8_linear_compact_mode_uses_integer_matmul(monkeypatch):
    calls = []
    real = torch._int_mm

    def spy(a, b):
        calls.append((a.dtype, b.dtype))
        return real(a, b)

    monkeypatch.setattr(torch, "_int_mm", spy)
    layer = Int8Linear.from_linear(nn.Linear(16, 8))
    with kernel_mode("compact"):
        layer(torch.randn(1, 16))
    assert calls == [(torch.int8, torch.int8)]
    with kernel_mode("dense"):
        layer(torch.randn(1, 16))
    assert len(calls) == 1, "dense mode multiplies the decoded weight, not integers"


def test_int8_linear_describes_itself_and_keeps_dtype():
    q = Int8Linear.from_linear(nn.Linear(8, 4, bias=False))
    assert "weight_bits=8" in repr(q) and "per-token" in repr(q)
    assert q(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_int8_embedding_rowwise():
    emb = nn.Embedding(50, 24, padding_idx=0)
    q = QuantEmbedding.from_embedding(emb, bits=8)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    ref = emb(ids)
    assert torch.allclose(q(ids), ref, atol=float(emb.weight.detach().abs().max()) / 127)
    assert q.scale.shape == (50, 1) and q.qweight.dtype == torch.uint8
    assert torch.allclose(q.weight, emb.weight, atol=float(emb.weight.detach().abs().max()) / 127)
    assert "bits=8" in repr(q)


def test_int8_on_lenet_keeps_accuracy(lenet, digits_task, tmp_path):
    base = digits_task.score(lenet)
    model = sk.quantize_(lenet, Int8Config(), data=digits_task)
    assert all(isinstance(getattr(model, n), Int8Linear) for n in ("fc1", "fc2", "fc3"))
    drop = base - digits_task.score(model)
    assert drop <= 0.003, f"int8 costs {100 * drop:.2f} pt"
    path = tmp_path / "lenet-int8.slim"
    size = sk.save(model, path)
    loaded = sk.load(path)
    x = digits_task.example_inputs(33)["x"]
    assert torch.equal(model(x), loaded(x))
    assert isinstance(loaded.fc2, Int8Linear)
    # int8 weights + fp32 scales/biases: a bit over a quarter of the fp32 file
    assert size < 0.3 * sk.evaluate(loaded, digits_task, path=path, timing=False).baseline_bytes


def test_int8_on_lenet5_quantizes_convolutions_too(lenet5_trained, digits_task):
    from slimkit.nn.quant_conv import QuantConv2d

    model = copy.deepcopy(lenet5_trained)
    base = digits_task.score(model)
    model = sk.quantize_(model, Int8Config(), data=digits_task)
    report = quant_report(model)
    assert set(report["quantized"]) == {"conv1", "conv2", "fc1", "fc2", "fc3"} and report["skipped"] == {}
    assert "weight-only" in report["quantized"]["conv1"]
    assert isinstance(model.conv2, QuantConv2d) and model.conv2.bits == 8 and model.conv2.scale.dtype == torch.float32
    assert base - digits_task.score(model) <= 0.003
    plain = sk.quantize_(copy.deepcopy(lenet5_trained), Int8Config(conv=False), data=digits_task)
    assert type(plain.conv1) is nn.Conv2d and "conv1" not in quant_report(plain)["skipped"]


def test_targets_and_ignore_select_layers(lenet, digits_task):
    model = sk.quantize_(lenet, Int8Config(targets="re:fc[12]", ignore=["fc2"]), data=digits_task)
    assert isinstance(model.fc1, Int8Linear)
    assert type(model.fc2) is nn.Linear and type(model.fc3) is nn.Linear


def test_int8_recipe_ships():
    recipe = sk.load_recipe("int8")
    assert [s.method for s in recipe.stages] == ["int8"]
    assert recipe.stages[0].embeddings


def test_unknown_option_rejected():
    with pytest.raises(ValueError):
        Int8Config(bits=4)


@pytest.mark.slow
def test_compiled_int8_matches_eager():
    from slimkit.nn.quant_linear import use_compiled_int8

    q = Int8Linear.from_linear(nn.Linear(64, 32))
    x = torch.randn(7, 64)
    eager = q(x)
    try:
        use_compiled_int8(True)
        compiled = q(x)
    finally:
        use_compiled_int8(False)
    assert torch.allclose(eager, compiled, rtol=1e-2, atol=1e-2)
