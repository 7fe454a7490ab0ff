"""`sk.load(path, runtime=...)` on calls of every shape: non-tensor and unknown arguments, output
structures (tuples, Hugging Face outputs), sequence lengths, and models that compute below fp32
(split from test_runtime.py, which tests the runners on the zoo's artifacts)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.export.onnx import flatten_output, rebuild_output
from slimkit.export.runtime_graph import FLOAT_TOL, error

pytest.importorskip("onnxruntime")


def test_auto_takes_no_graph_for_a_model_that_computes_in_bf16_here(tmp_path):
    """The graphs compute fp32: their outputs would not be what this model computes (bf16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(64, 300), nn.ReLU(), nn.Linear(300, 8))
    ids = torch.randint(0, 50, (8, 4))
    sk.save(sk.quantize_(model.eval(), sk.make_config("int8", compute_dtype="bfloat16"), data=[ids]),
            tmp_path / "bf16.slim")
    auto = sk.load(tmp_path / "bf16.slim", runtime="auto")
    with torch.no_grad():
        y = auto(ids)
        want = sk.load(tmp_path / "bf16.slim", runtime="torch")(ids)
    state = sk.runtime_report(auto)["runtime"]
    assert set(state["choices"].values()) == {"torch"} and state["timings_ms"] == {}, state
    assert "computes in bfloat16" in state["why_torch"] and state["onnx_bytes"] == 0
    assert y.dtype == torch.bfloat16 and torch.equal(y, want)


def test_fp16_scales_of_coded_layers_do_not_count_as_low_precision_compute():
    """slimkit's coded layers decode fp16 scales to fp32 (a 4-bit MiniLM ran torch at batch 1, 18.5 ms,
    when they counted); a plain layer held in bf16 does compute in bf16."""
    from slimkit.nn.compute_dtype import computes_below_fp32
    from slimkit.nn.quant_math import rtn_quantize
    from slimkit.nn.weight_only import QuantLinear

    coded = QuantLinear.from_quantized(rtn_quantize(torch.randn(32, 64), 4, False, "group", 32), None, False)
    assert coded.scale.dtype == torch.float16
    assert computes_below_fp32(nn.Sequential(coded, nn.ReLU())) is None
    assert computes_below_fp32(nn.Sequential(coded, nn.Linear(32, 2).bfloat16())) == "bfloat16"


class _Toy(nn.Module):
    """Token ids (+ an optional float feature) -> a tuple of two tensors; takes extra options."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.lin = nn.Linear(8, 4)

    def forward(self, ids, extra=None, scale: float = 1.0, **kwargs):
        h = self.emb(ids) * scale
        if extra is not None:
            h = h + extra.unsqueeze(1)
        out = self.lin(h)
        return out, out.mean(1)


def _toy(runtime: str, tmp_path) -> nn.Module:
    torch.manual_seed(0)
    sk.save(_Toy().eval(), tmp_path / "toy.slim")
    return sk.load(tmp_path / "toy.slim", model=_Toy(), runtime=runtime)


def test_non_tensor_and_unknown_arguments_run_torch(tmp_path):
    model = _toy("onnxruntime", tmp_path)
    ids = torch.randint(0, 20, (2, 5))
    with torch.no_grad():
        expected = type(model).forward(model, ids, scale=2.0)
        assert all(torch.equal(a, b) for a, b in zip(model(ids, scale=2.0), expected, strict=True))
        assert "'scale' is a float" in sk.runtime_report(model)["runtime"]["why_torch"]
        model(ids, use_cache=True)
        assert "'use_cache' is not a named parameter" in sk.runtime_report(model)["runtime"]["why_torch"]
        model(ids, extra=torch.zeros(1, 8))  # broadcasts in torch; the batch sizes disagree
        assert "batch" in sk.runtime_report(model)["runtime"]["why_torch"]
        assert sk.runtime_report(model)["runtime"]["choices"] == {}


def test_structure_dtypes_and_sequence_lengths_are_kept(tmp_path):
    model = _toy("onnxruntime", tmp_path)
    with torch.no_grad():
        for shape in ((1, 5), (3, 11), (2, 3)):
            ids = torch.randint(0, 20, shape)
            extra = torch.randn(shape[0], 8)
            out, hot = model(ids, extra=extra), model(ids, extra=extra)  # the second is a hot call
            ref = type(model).forward(model, ids, extra=extra)
            assert type(out) is tuple and len(out) == 2 and type(hot) is tuple
            assert error(list(out), list(ref)) <= FLOAT_TOL and error(list(hot), list(ref)) <= FLOAT_TOL
    state = sk.runtime_report(model)["runtime"]
    threads = torch.get_num_threads()
    assert sorted(state["choices"]) == [f"ids:int64[*,*] extra:float32[*,8] threads={threads} batch=1",
                                        f"ids:int64[*,*] extra:float32[*,8] threads={threads} batch=2-8"]


def test_hugging_face_outputs_are_rebuilt():
    modeling = pytest.importorskip("transformers.modeling_outputs")
    out = modeling.BaseModelOutputWithPooling(last_hidden_state=torch.zeros(2, 3, 4), pooler_output=torch.ones(2, 4))
    tensors, spec = flatten_output(out)
    assert len(tensors) == 2
    back = rebuild_output(spec, [t.double() for t in tensors])
    assert type(back) is type(out) and list(back.keys()) == ["last_hidden_state", "pooler_output"]
    assert back.pooler_output.dtype == torch.float32  # cast back to torch's dtype
    with pytest.raises(TypeError, match="int"):
        flatten_output((torch.zeros(1), 3))


def test_a_compiled_forward_that_builds_modules_compiles_once():
    """Once a runtime watches a model, torch's registration hooks count every module registered in the
    process. A compiled forward that registers modules (Hugging Face decoders slice their ModuleList
    each call) must not leave a guard on that count: SmolLM2's compiled decode step was compiled again
    at every token until dynamo's recompile limit, then ran eager."""
    from torch._dynamo.utils import counters

    from slimkit.export.runtime_guard import Watch

    class Sliced(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])

        def forward(self, x):
            for layer in self.layers[:2]:   # a new ModuleList: two module registrations
                x = layer(x)
            return x

    Watch(nn.Linear(2, 2))   # installs the registration hooks, as the first exported graph does
    model, x = Sliced().eval(), torch.randn(1, 4)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = torch.compile(model, backend="eager")
        with torch.no_grad():
            outs = [compiled(x) for _ in range(4)]
    finally:
        torch._dynamo.reset()
    assert all(torch.equal(o, model(x)) for o in outs)
    assert counters["stats"]["unique_graphs"] == 1, "compiled again at a later call"
