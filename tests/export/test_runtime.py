"""`sk.load(path, runtime=...)`: ONNX Runtime behind the user's own module, where it is correct."""

from __future__ import annotations

import copy
import importlib.util
import inspect
import io
import pickle

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.export import runtime_graph
from slimkit.export.runtime import MARGIN, RuntimeDispatch
from slimkit.export.runtime_graph import FLOAT_TOL, error
from slimkit.io.runtimes import RUNTIME_ENV, runtimes, torch_only
from slimkit.nn.compute_dtype import COMPUTE_ENV
from slimkit.nn.kernels import fast_int_mm, kernel_mode, rel_err
from slimkit.nn.quant_linear import forced_compute_dtype

pytest.importorskip("onnxruntime")

CONFIGS = {
    "int8": lambda: sk.make_config("int8"),
    "kmeans": lambda: sk.make_config("kmeans", bits=4, finetune_epochs=0),
    "magnitude": lambda: sk.MagnitudePruningConfig(sparsity=0.8, scope="global", epochs=0),
}


@pytest.fixture(autouse=True)
def _fp32_compute(monkeypatch):
    """These tests are about the graph runners, which "auto" takes only for a model that computes in
    float32 here (`compute_dtype: auto` is bf16 on AMX / AVX-512 BF16 CPUs)."""
    monkeypatch.setenv(COMPUTE_ENV, "float32")


@pytest.fixture(scope="module")
def artifacts(lenet_trained, digits_task, tmp_path_factory):
    """lenet-300-100 compressed three ways, and lenet5 int8 (.slim paths by name)."""
    folder = tmp_path_factory.mktemp("runtime")
    paths = {}
    for name, config in CONFIGS.items():
        model = copy.deepcopy(lenet_trained)
        model.__dict__["slimkit_base"] = dict(lenet_trained.__dict__["slimkit_base"])
        paths[name] = folder / f"{name}.slim"
        sk.save(sk.apply_(model, config(), digits_task), paths[name])
    lenet5 = sk.apply_(copy.deepcopy(sk.zoo.load("lenet5")), sk.make_config("int8"), digits_task)
    paths["lenet5-int8"] = folder / "lenet5-int8.slim"
    sk.save(lenet5, paths["lenet5-int8"])
    return paths


def _reference(model: nn.Module, runner: str, **inputs: torch.Tensor) -> torch.Tensor:
    """What torch computes for the graph `runner` stands for (runtime_graph's docstring)."""
    with torch.no_grad(), torch_only():
        if runner == "torch":
            return model(**inputs)
        mode = "compact" if runtime_graph.base_name(runner) == "ort-int" else "dense"
        with kernel_mode(mode), forced_compute_dtype("float32"):
            return model(**inputs)


def _tolerance(state: dict, runner: str) -> float:
    """The tolerance the runtime checked `runner` against (0 for torch itself)."""
    if runner == "torch":
        return 0.0
    return next(t for key, t in state["tolerances"].items() if key.endswith(f" {runner}"))


def test_auto_also_tries_a_frozen_torchscript_graph_and_single_thread_sessions(artifacts, digits_task):
    model = sk.load(artifacts["int8"], runtime="auto")
    x = digits_task.example_inputs(8)["x"]
    with torch.no_grad():
        model(x)
    state = sk.runtime_report(model)["runtime"]
    timings = next(iter(state["timings_ms"].values()))
    assert "torch-graph" in timings, state
    if torch.get_num_threads() > 1:  # a small graph: one-thread sessions of both graphs too
        assert "ort-float/1t" in timings, state
        # the integer graph only where torch's int8 layers may run integer kernels themselves
        assert ("ort-int/1t" in timings) == fast_int_mm(), state
    for key, err in state["checks"].items():
        if key.endswith((" torch-graph", " ort-float/1t")):
            assert err <= FLOAT_TOL, state


def test_a_model_torchscript_cannot_trace_keeps_the_other_runners(artifacts, digits_task, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise RuntimeError("cannot trace")

    monkeypatch.setattr(runtime_graph, "TracedGraph", refuse)
    model = sk.load(artifacts["kmeans"], runtime="auto")
    x = digits_task.example_inputs(4)["x"]
    with torch.no_grad():
        y = model(x)
    state = sk.runtime_report(model)["runtime"]
    timings = next(iter(state["timings_ms"].values()))
    assert "torch-graph" not in timings and "ort-float" in timings, state
    assert torch.allclose(y, sk.load(artifacts["kmeans"], runtime="torch")(x), atol=1e-5)


def test_runtimes_are_registered():
    assert {"torch", "auto", "onnxruntime"} <= set(runtimes())


@pytest.mark.parametrize("runtime", ["auto", "onnxruntime"])
@pytest.mark.parametrize("method", [*CONFIGS, "lenet5-int8"])
def test_outputs_equal_torch_within_the_tolerance(method, runtime, artifacts, digits_task):
    model = sk.load(artifacts[method], runtime=runtime)
    plain = sk.load(artifacts[method], runtime="torch")
    for batch in (1, 64):
        x = digits_task.example_inputs(batch)["x"]
        with torch.no_grad():
            y = model(x)
        state = sk.runtime_report(model)["runtime"]
        label = f"x:float32[*,64] threads={torch.get_num_threads()} batch={'1' if batch == 1 else '9-64'}"
        runner = state["choices"][label]
        assert rel_err(y, _reference(plain, runner, x=x)) <= _tolerance(state, runner), state
        assert y.shape == (batch, 10) and y.dtype == torch.float32
    if runtime == "onnxruntime":
        assert set(state["choices"].values()) == {"ort-int" if "int8" in method else "ort-float"}, state
        assert state["timings_ms"] == {}
    else:
        for timings in state["timings_ms"].values():
            assert set(timings) >= {"torch", "ort-float"}
        for label, runner in state["choices"].items():
            timings = state["timings_ms"][label]
            fastest = min(timings, key=timings.get)
            winner = fastest if timings[fastest] < (1 - MARGIN) * timings["torch"] else "torch"
            assert runner == winner, timings
    uses_ort = set(state["choices"].values()) != {"torch"}
    assert (state["why_torch"] is None) == ("torch" not in state["choices"].values()), state
    assert (state["onnx_bytes"] > 0) == uses_ort  # sessions nobody chose are closed
    report = sk.runtime_report(model)
    assert {"mode", "cache_bytes", "layers", "runtime"} <= set(report)


def test_state_dict_and_submodules_are_the_users(artifacts, digits_task):
    plain = sk.load(artifacts["int8"], runtime="torch")
    model = sk.load(artifacts["int8"], runtime="auto")
    assert "forward" not in plain.__dict__ and "slimkit_runtime" not in plain.__dict__
    assert type(model) is type(plain) and list(model.state_dict()) == list(plain.state_dict())
    with torch.inference_mode():  # the export itself runs outside inference mode
        model(digits_task.example_inputs(4)["x"])
    assert sk.runtime_report(model)["runtime"]["choices"] and sk.runtime_report(model)["runtime"]["why_torch"] is None
    assert list(model.state_dict()) == list(plain.state_dict())
    assert model.fc1 is dict(model.named_modules())["fc1"]
    assert inspect.signature(model.forward) == inspect.signature(plain.forward)


def test_grad_and_training_calls_run_torch(artifacts, digits_task):
    model = sk.load(artifacts["int8"], runtime="onnxruntime")
    x = digits_task.example_inputs(8)["x"]
    y = model(x)  # grad enabled, parameters require grad
    assert y.requires_grad
    assert "grad" in sk.runtime_report(model)["runtime"]["why_torch"]
    model.train()
    with torch.no_grad():
        model(x)
    state = sk.runtime_report(model)["runtime"]
    assert "training" in state["why_torch"] and state["choices"] == {}
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model(x)  # grad enabled, but nothing requires it
    assert list(sk.runtime_report(model)["runtime"]["choices"].values()) == ["ort-int"]


def test_hooks_and_torch_only_run_torch(artifacts, digits_task):
    model = sk.load(artifacts["kmeans"], runtime="onnxruntime")
    x = digits_task.example_inputs(8)["x"]
    seen = []
    handle = model.fc2.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)
    assert seen == [(8, 100)] and "hooks" in sk.runtime_report(model)["runtime"]["why_torch"]
    handle.remove()
    with torch.no_grad(), torch_only():
        model(x)
    assert sk.runtime_report(model)["runtime"]["choices"] == {}
    handle = model.register_forward_hook(lambda m, i, o: seen.append(o.shape))  # the model's own: runs anyway
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen == [(8, 100), (8, 10)] and sk.runtime_report(model)["runtime"]["choices"]


def test_changed_weights_drop_the_graph(artifacts, digits_task):
    model = sk.load(artifacts["kmeans"], runtime="onnxruntime")
    x = digits_task.example_inputs(8)["x"]
    with torch.no_grad():
        before = model(x)
        model.fc3.bias.add_(1.0)  # in place: its version counter moves
        after = model(x)
        assert torch.allclose(after, before + 1.0, atol=1e-4)
        model.fc3.bias = nn.Parameter(model.fc3.bias - 2.0)  # replaced
        assert torch.allclose(model(x), before - 1.0, atol=1e-4)
    assert sk.runtime_report(model)["runtime"]["choices"]


def test_repeated_calls_take_the_hot_path_and_every_check_still_holds(artifacts, digits_task, monkeypatch):
    """After the first call of a kind, calls go straight to the chosen session (`_hot`), but training
    mode, hooks, torch_only(), grad and changed weights still send them to torch or drop the graph."""
    model = sk.load(artifacts["kmeans"], runtime="onnxruntime")
    dispatch = model.__dict__["slimkit_runtime"]
    x = digits_task.example_inputs(8)["x"]
    slow_calls = []
    monkeypatch.setattr(dispatch, "_call", lambda a, k, f=dispatch._call: (slow_calls.append(1), f(a, k))[1])
    with torch.no_grad(), torch_only():
        ref = model(x)
    with torch.no_grad():
        first = model(x)                       # measured: the slow path
        assert len(slow_calls) == 2 and len(dispatch._hot) == 1
        again = model(x)                       # hot: no slow path
    assert len(slow_calls) == 2 and torch.equal(first, again) and error([again], [ref]) <= FLOAT_TOL
    seen = []
    handle = model.fc2.register_forward_hook(lambda m, i, o: seen.append(1))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen == [1], "a hook registered after the call went hot still runs"
    handle = model.fc2.register_forward_pre_hook(lambda m, i: seen.append(2))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert seen == [1, 2], "so does a pre-hook"
    model.train()
    with torch.no_grad():
        model(x)
    assert "training" in sk.runtime_report(model)["runtime"]["why_torch"]
    model.eval()
    with torch.no_grad(), torch_only():
        model(x)
    assert "torch_only" in sk.runtime_report(model)["runtime"]["why_torch"]
    y = model(x)                               # grad enabled and the parameters require it
    assert y.requires_grad
    with torch.no_grad():
        model.fc3.bias.add_(1.0)
        assert torch.allclose(model(x), ref + 1.0, atol=1e-4), "an in-place change reaches a hot call"
        model(x)
        model.fc3.bias.data = model.fc3.bias.data + 1.0   # new storage, the version counter kept
        assert torch.allclose(model(x), ref + 2.0, atol=1e-4), "so does a tensor's storage swapped by .data"
        model(x)
    assert sk.runtime_report(model)["runtime"]["choices"] and len(dispatch._hot) == 1


def test_deepcopy_and_pickle_give_the_copy_its_own_dispatcher(artifacts, digits_task):
    model = sk.load(artifacts["int8"], runtime="onnxruntime")  # "auto" might time its way to another runner
    x = digits_task.example_inputs(4)["x"]
    with torch.no_grad():
        y = model(x)
        for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
            dispatch = clone.__dict__["forward"]
            assert isinstance(dispatch, RuntimeDispatch) and dispatch.model is clone
            assert clone.__dict__["slimkit_runtime"] is dispatch and dispatch.choices == {}
            assert rel_err(clone(x), y) <= 1e-5
            assert dispatch.choices
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=False)(x).shape == y.shape


def test_failed_export_falls_back_to_torch_with_the_reason(artifacts, digits_task, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::mystery' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(runtime_graph, "export_onnx", broken)
    model = sk.load(artifacts["int8"], runtime="auto")
    plain = sk.load(artifacts["int8"], runtime="torch")
    x = digits_task.example_inputs(4)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
        assert torch.equal(model(x[:1]), plain(x[:1]))  # never retried
    state = sk.runtime_report(model)["runtime"]
    assert state["why_torch"].startswith("ONNX export failed: RuntimeError: Exporting the operator")
    assert set(state["choices"].values()) <= {"torch"} and state["onnx_bytes"] == 0


def test_a_session_outside_its_tolerance_is_never_used(artifacts, digits_task, monkeypatch):
    monkeypatch.setattr(runtime_graph, "FLOAT_TOL", 0.0)  # no float graph is bit-exact on LeNet
    model = sk.load(artifacts["magnitude"], runtime="onnxruntime")
    plain = sk.load(artifacts["magnitude"], runtime="torch")
    x = digits_task.example_inputs(8)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    state = sk.runtime_report(model)["runtime"]
    assert set(state["choices"].values()) == {"torch"}
    assert "ort-float differs from torch by" in state["why_torch"] and len(state["rejected"]) == 1


def test_each_thread_count_gets_its_own_sessions(artifacts, digits_task):
    model = sk.load(artifacts["kmeans"], runtime="onnxruntime")
    x = digits_task.example_inputs(2)["x"]
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            model(x)
            torch.set_num_threads(1)
            model(x)
    finally:
        torch.set_num_threads(threads)
    labels = sorted(sk.runtime_report(model)["runtime"]["choices"])
    assert labels == sorted({f"x:float32[*,64] threads={n} batch=2-8" for n in (1, threads)})


def test_missing_onnxruntime_falls_back_to_torch(artifacts, digits_task, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    model = sk.load(artifacts["int8"], runtime="onnxruntime")
    with torch.no_grad():
        model(digits_task.example_inputs(2)["x"])
    assert "'onnxruntime' is not installed" in sk.runtime_report(model)["runtime"]["why_torch"]


def test_unknown_runtime_is_a_one_line_error(artifacts, monkeypatch):
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt': choose one of .*auto.*torch") as exc:
        sk.load(artifacts["int8"], runtime="tensorrt")
    assert isinstance(exc.value, sk.SlimError) and "\n" not in str(exc.value)
    monkeypatch.setenv(RUNTIME_ENV, "tvm")
    with pytest.raises(ValueError, match=r"'tvm' \(from \$SLIMKIT_RUNTIME\)"):
        sk.load(artifacts["int8"])
    monkeypatch.setenv(RUNTIME_ENV, "torch")
    assert "forward" not in sk.load(artifacts["int8"]).__dict__


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["auto", "onnxruntime"])
def test_minilm_int8_keeps_its_hugging_face_output(runtime, tmp_path):
    from slimkit.zoo.minilm import minilm_task

    task = minilm_task()
    sk.save(sk.run_recipe(sk.zoo.load("minilm"), sk.load_recipe("int8"), task), tmp_path / "m.slim")
    model = sk.load(tmp_path / "m.slim", runtime=runtime)
    plain = sk.load(tmp_path / "m.slim", runtime="torch")
    for batch in (1, 8):
        inputs = task.example_inputs(batch)
        with torch.no_grad():
            out = model(**inputs)
        state = sk.runtime_report(model)["runtime"]
        assert "failed" not in str(state["why_torch"]), state
        runner = state["choices"][f"input_ids:int64[*,*] attention_mask:int64[*,*] threads={torch.get_num_threads()} "
                                  f"batch={'1' if batch == 1 else '2-8'}"]
        ref = _reference(plain, runner, **inputs)
        assert type(out) is type(ref) and list(out.keys()) == ["last_hidden_state", "pooler_output"]
        assert error(list(out.values()), list(ref.values())) <= _tolerance(state, runner), state


def test_a_compiled_caller_runs_the_models_own_forward_through_the_dispatcher(artifacts, digits_task):
    """`generate(compile=True)` compiles `model.__call__`, which reaches the dispatcher installed as
    `model.forward`. Under torch.compile the dispatcher calls the class's forward; a bound
    `type(model).forward.__get__(model)` was resolved by dynamo as `model.forward` (the dispatcher
    itself), which recursed until Python's limit (seen on SmolLM2 int8)."""
    import torch._dynamo

    model = sk.load(artifacts["int8"], runtime="auto")
    x = digits_task.data.test.x[:1]
    with torch.no_grad():
        want = model(x)
        torch._dynamo.reset()
        try:
            compiled = torch.compile(model.__call__, backend="eager", fullgraph=False)
            got = compiled(x)
        finally:
            torch._dynamo.reset()
    assert rel_err(got, want) < 1e-2
    assert isinstance(model.__dict__["forward"], RuntimeDispatch), "the dispatcher stays installed"
