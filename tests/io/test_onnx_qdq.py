"""Integer ONNX export of int8 layers and quantized embeddings, run in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import slimkit as sk
from slimkit.export import onnx_qdq
from slimkit.export.onnx import OrtModule, export, export_onnx, float_copy
from slimkit.export.onnx_codes import compact_weights
from slimkit.export.onnx_qdq import quantize_graph
from slimkit.nn.kernels import kernel_mode
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear, QuantLinear
from slimkit.nn.quant_math import rtn_quantize


def _weights(path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.mark.parametrize("signed", [True, False], ids=["s8-weights", "u8-weights"])
@pytest.mark.parametrize("method", ["int8", "int8-static"])
def test_lenet_int8_exports_integer_ops_bit_exact(method, signed, lenet, digits_task, tmp_path, monkeypatch):
    """int8 weights where ORT multiplies u8 x s8 exactly (VNNI, non-x86); else uint8 weights + 128 with
    zero point 128, which avoid the int16 saturation of its AVX2 u8 x s8 kernel. Both decode to the
    same codes; parity is checked on the path this CPU gets."""
    if signed and not onnx_qdq.signed_weights_exact.__wrapped__():
        pytest.skip("this CPU's ONNX Runtime saturates u8 x s8 products (x86 without VNNI)")
    onnx_qdq.signed_weights_exact.cache_clear()
    monkeypatch.setattr(onnx_qdq, "signed_weights_exact", lambda: signed)
    model = sk.apply_(lenet, sk.make_config(method), digits_task)
    sk.save(model, tmp_path / "m.slim")
    model = sk.load(tmp_path / "m.slim")
    ints = export(model, tmp_path / "int.onnx", digits_task)
    flt = export(model, tmp_path / "float.onnx", digits_task, integer=False)
    assert ints["integer_layers"] == 3 and flt["integer_layers"] == 0
    assert ints["max_abs_diff"] <= 1e-4 and ints["cosine"] >= 0.9999, ints
    assert ints["bytes"] < 0.35 * flt["bytes"], (ints, flt)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int.onnx")).graph.node}
    assert "MatMulInteger" in ops and "Gemm" not in ops
    weights = _weights(tmp_path / "int.onnx")
    stored = weights["fc2.qweight_t"]
    assert stored.dtype == (np.int8 if signed else np.uint8)
    codes = stored if signed else stored.astype(np.int16) - 128
    assert np.array_equal(codes, model.fc2.qweight.numpy().T)
    assert not any(w.dtype == np.float32 and w.ndim == 2 for w in weights.values())


def test_lenet5_int8_exports_with_float_convs(lenet5_trained, digits_task, tmp_path):
    import copy

    model = copy.deepcopy(lenet5_trained)
    model.__dict__["slimkit_base"] = dict(lenet5_trained.__dict__["slimkit_base"])
    model = sk.apply_(model, sk.make_config("int8"), digits_task)
    n_int8 = sum(isinstance(m, Int8Linear) for m in model.modules())
    report = export(model, tmp_path / "m.onnx", digits_task)
    assert n_int8 >= 1 and report["integer_layers"] == n_int8
    assert report["cosine"] >= 0.999, report
    ops = [n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node]
    assert "Conv" in ops and ops.count("MatMulInteger") == n_int8


class _Encoder(nn.Module):
    """Token ids -> embedding -> 3-D linears (exported as MatMul, not Gemm) -> 4-bit and plain linears."""

    def __init__(self, emb: nn.Module):
        super().__init__()
        self.emb = emb
        self.q = Int8Linear.from_linear(nn.Linear(32, 48))
        self.k = Int8Linear.from_linear(nn.Linear(32, 48, bias=False))
        self.static = Int8Linear.from_linear(nn.Linear(48, 64), input_scale=0.02)
        w4 = rtn_quantize(torch.randn(40, 64), 4, symmetric=False, granularity="group", group_size=16)
        self.int4 = QuantLinear.from_quantized(w4, torch.randn(40), symmetric=False)
        self.head = nn.Linear(40, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids)
        return self.head(self.int4(self.static(torch.relu(self.q(h) + self.k(h)))))


@pytest.mark.parametrize("emb_args", [dict(bits=8), dict(bits=4, symmetric=False, granularity="group", group_size=8)],
                         ids=["int8-rows", "int4-groups-asym"])
def test_encoder_matmul_and_gather_paths_match_slimkit(emb_args, tmp_path):
    torch.manual_seed(0)
    model = _Encoder(QuantEmbedding.from_embedding(nn.Embedding(50, 32), **emb_args)).eval()
    ids = torch.randint(0, 50, (3, 7))
    path = tmp_path / "e.onnx"
    keys, hf_output = export_onnx(float_copy(model), {"input_ids": ids}, path)
    proto = onnx.load(str(path))
    replaced = quantize_graph(proto, model)
    assert replaced == {"emb": "QuantEmbedding", "q": "Int8Linear", "k": "Int8Linear", "static": "Int8Linear"}
    assert list(compact_weights(proto, model).values()) == ["codes"]  # int4's weight, transposed for MatMul
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("MatMulInteger") == 3 and ops.count("ReduceMax") == 1  # q and k share one quantized input
    ort_model = OrtModule(path, keys, hf_output, threads=1)
    other = torch.randint(0, 50, (5, 11))  # dynamic batch and sequence
    with torch.inference_mode(), kernel_mode("compact"):  # slimkit's integer kernels, as the graph
        for x in (ids, other):
            assert torch.allclose(ort_model(x), model(x), atol=1e-5, rtol=1e-5)
    codes = next(i for i in proto.graph.initializer if i.name == "emb.codes")
    assert codes.data_type == onnx.TensorProto.UINT8


@pytest.mark.parametrize("stages,kinds,ratio", [
    ([("kmeans", dict(bits=4, finetune_epochs=0))], {"codebook"}, 0.3),
    ([("rtn", dict(bits=4, granularity="group", group_size=4, symmetric=False))], {"codes"}, 0.65),
    ([("rtn", dict(bits=3, granularity="tensor"))], {"codes"}, 0.3),
    ([("magnitude", dict(sparsity=0.8, scope="global"))], {"sparse"}, 0.35),
    ([("magnitude", dict(sparsity=0.94, scope="global")), ("kmeans", dict(bits=3, finetune_epochs=0))],
     {"sparse"}, 0.1),
], ids=["kmeans", "rtn4-group-asym", "rtn3-tensor", "magnitude", "deep-compression"])
def test_coded_weights_export_small_and_exact(stages, kinds, ratio, lenet, digits_task, tmp_path):
    model = lenet
    for method, args in stages:
        model = sk.apply_(model, sk.make_config(method, **args), digits_task)
    sk.save(model, tmp_path / "m.slim")
    model = sk.load(tmp_path / "m.slim")
    small = export(model, tmp_path / "small.onnx", digits_task)
    full = export(model, tmp_path / "full.onnx", digits_task, integer=False)
    assert small["coded_weights"] == 3 and full["coded_weights"] == 0
    assert small["max_abs_diff"] <= 1e-4 and small["cosine"] >= 0.9999, small
    assert small["bytes"] < ratio * full["bytes"], (small, full)
    proto = onnx.load(str(tmp_path / "full.onnx"))
    assert set(compact_weights(proto, model).values()) == kinds


def test_coded_float_tensors_are_bit_exact(tmp_path):
    from onnx import helper

    rng = np.random.default_rng(0)
    sparse = np.where(rng.random((40, 30)) < 0.1, rng.standard_normal((40, 30)), 0).astype(np.float32)
    sparse[1:20], sparse[0, 0], sparse[-1, -1] = 0, -0.0, 7.0  # a gap over 255 (uint16 gaps), a negative zero
    few = rng.choice(np.array([-0.5, 0.0, 0.25, 3.0], np.float32), size=(30, 20))
    dense = rng.standard_normal((20, 10)).astype(np.float32)
    weights = {"sparse": sparse, "few": few, "dense": dense}
    nodes = [helper.make_node("MatMul", ["x", "sparse"], ["h1"]), helper.make_node("MatMul", ["h1", "few"], ["h2"]),
             helper.make_node("MatMul", ["h2", "dense"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 40])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 10])],
                              [numpy_helper.from_array(w, k) for k, w in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert compact_weights(proto, nn.Identity()) == {"sparse": "sparse", "few": "codebook"}
    proto.graph.output.extend([helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, weights[k].shape)
                               for k in ("sparse", "few")])
    onnx.checker.check_model(proto)
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    _, got_sparse, got_few = session.run(None, {"x": np.ones((2, 40), np.float32)})
    assert got_sparse.tobytes() == sparse.tobytes() and got_few.tobytes() == few.tobytes()


def test_no_integer_layers_leaves_graph_alone(lenet, digits_task, tmp_path):
    model = sk.apply_(lenet, sk.make_config("int8", targets=["fc2"]), digits_task)
    report = export(model, tmp_path / "m.onnx", digits_task)
    assert report["integer_layers"] == 1 and report["cosine"] >= 0.9999
    assert quantize_graph(onnx.load(str(tmp_path / "m.onnx")), lenet.__class__()) == {}


def test_export_cli_float_flag(lenet, digits_task, tmp_path, monkeypatch, capsys):
    import sys

    from slimkit.cli.main import run

    sk.save(sk.apply_(lenet, sk.make_config("int8"), digits_task), tmp_path / "m.slim")
    sizes = {}
    for name, extra in (("int", []), ("float", ["--float"])):
        out = tmp_path / f"{name}.onnx"
        monkeypatch.setattr(sys, "argv", ["slimkit", "export", str(tmp_path / "m.slim"), "--onnx", str(out), *extra])
        run()  # a failure would exit with code 2
        sizes[name] = out.stat().st_size
        printed = capsys.readouterr().out
        assert ("3 layers as integer ops" in printed) == (name == "int"), printed
        assert "cosine" in printed
    assert sizes["int"] < 0.35 * sizes["float"]


@pytest.mark.slow
def test_minilm_int8_exports_integer_onnx(tmp_path):
    model = sk.apply_(sk.zoo.load("minilm"), sk.make_config("int8"))
    ints = export(model, tmp_path / "int.onnx")
    flt = export(model, tmp_path / "float.onnx", integer=False)
    assert ints["integer_layers"] == 39  # 36 encoder linears + 3 embeddings (the unused pooler is not exported)
    assert ints["cosine"] >= 0.999, ints
    assert ints["bytes"] < 0.3 * flt["bytes"], (ints, flt)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6])
def test_packed_codes_unpack_in_onnx_runtime(bits):
    import onnxruntime as ort
    from onnx import helper

    from slimkit.export.onnx_pack import pack_last_axis, packed_bytes, unpack_last_axis
    from slimkit.export.onnx_qdq import GraphBuilder

    codes = np.random.default_rng(bits).integers(0, 2**bits, size=(5, 13), dtype=np.uint8)  # 13: padded
    packed = pack_last_axis(codes, bits)
    assert packed.shape == (5, packed_bytes(13, bits)) and packed.dtype == np.uint8
    b = GraphBuilder()
    rows = b.op("Gather", [b.const("table", packed), "ids"])  # leading shape known only at run time
    out = unpack_last_axis(b, rows, bits, 13)
    graph = helper.make_graph(b.nodes, "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, None)],
                              [helper.make_tensor_value_info(out, onnx.TensorProto.INT32, None)],
                              list(b.inits.values()))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = np.array([[4, 0], [2, 2]], np.int64)
    assert np.array_equal(session.run(None, {"ids": ids})[0], codes[ids])


@pytest.mark.slow  # ~8-12 s each (transformers import, tiny model build, two exports)
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_hf_folder_int8_exports_integer_onnx(arch, tmp_path):
    import transformers as tf

    from slimkit.zoo.token_task import token_task

    config = {
        "bert": lambda: tf.BertConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, max_position_embeddings=64),
        "gpt2": lambda: tf.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                      bos_token_id=0, eos_token_id=0),
        "llama": lambda: tf.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        bos_token_id=0, eos_token_id=0),
    }[arch]()
    torch.manual_seed(0)
    tf.AutoModel.from_config(config).save_pretrained(tmp_path, safe_serialization=True)
    task = token_task(tmp_path, sentences=[f"Sentence {i} is about compression." for i in range(16)])
    model = sk.apply_(sk.resolve(str(tmp_path)), sk.make_config("int8"), data=task)
    n_int8 = sum(isinstance(m, (Int8Linear, QuantEmbedding)) for m in model.modules())
    ints = export(model, tmp_path / "int.onnx", task)
    flt = export(model, tmp_path / "float.onnx", task, integer=False)
    assert n_int8 - 1 <= ints["integer_layers"] <= n_int8  # BERT's pooler is not in the exported graph
    assert ints["cosine"] >= 0.999 and ints["bytes"] < 0.5 * flt["bytes"], (ints, flt)
