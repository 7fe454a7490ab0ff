"""Per-layer kernel choice (slimkit.nn.kernels): modes, measured choices, tolerance, memory report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit as sk
from slimkit.nn import kernels, quant_linear
from slimkit.nn.hashed import HashedLinear, build_hashed
from slimkit.nn.kernels import KernelChoice, forget_choices, kernel_mode, runtime_report
from slimkit.nn.quant_linear import Int8Linear, QuantLinear
from slimkit.nn.quant_math import quantize_per_token, rtn_quantize


@pytest.fixture(autouse=True)
def fresh_choices():
    forget_choices()
    yield
    forget_choices()


def _layer(seed: int = 0, n_in: int = 48, n_out: int = 20) -> tuple[nn.Linear, Int8Linear]:
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    return lin, Int8Linear.from_linear(lin)


def _integer_math(q: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    xq, xs = quantize_per_token(x)
    return (xq.double() @ q.qweight.double().t()).mul(xs.double()).mul(q.scale.double()).add(q.bias.double()).float()


def test_modes_compute_their_own_math():
    _, q = _layer()
    x = torch.randn(5, 48)
    with torch.no_grad():
        with kernel_mode("dense"):
            dense = q(x)
        with kernel_mode("compact"):
            compact = q(x)
    assert torch.allclose(dense, F.linear(x, q.dequantized_weight(), q.bias), atol=1e-6)
    assert torch.allclose(compact, _integer_math(q, x), atol=1e-5)
    assert not torch.allclose(dense, compact, atol=1e-4), "the two modes differ by activation rounding"
    with pytest.raises(ValueError, match="kernel mode must be one of auto, compact, dense"):
        kernels.check_mode("fast")


def test_auto_measures_each_bucket_once_and_keeps_the_fastest_correct(monkeypatch):
    monkeypatch.setattr(quant_linear, "fast_int_mm", lambda: True)  # let auto consider _int_mm here
    monkeypatch.setattr(quant_linear, "has_fbgemm", lambda: False)
    _, q = _layer()
    with torch.no_grad():
        y1 = q(torch.randn(1, 48))
        y40 = q(torch.randn(3, 40, 48))        # 120 rows: its own bucket
    choice = q._kernel_choice
    assert set(choice.timings) == {1, 512} and all(set(t) == {"dense", "int"} for t in choice.timings.values())
    for b, name in choice.names.items():
        assert name == min(choice.timings[b], key=choice.timings[b].get)
    assert y1.shape == (1, 20) and y40.shape == (3, 40, 20)
    _, other = _layer(seed=1)                  # same kind and size: reuses the choice, measures nothing
    with torch.no_grad():
        other(torch.randn(1, 48))
    assert other._kernel_choice.timings == {} and other._kernel_choice.names[1] == choice.names[1]
    assert runtime_report(q)["layers"][""]["choices"] == {"rows<=1": choice.names[1],
                                                          "rows<=512": choice.names[512]}


def test_a_fast_wrong_kernel_is_never_chosen():
    x = torch.randn(16, 32)
    w = torch.randn(8, 32)
    right = lambda t: t @ w.t()  # noqa: E731
    wrong = lambda t: torch.zeros(t.shape[0], 8)  # noqa: E731 - instant, and wrong
    choice = KernelChoice(("test", 1), {"wrong": wrong, "right": right})
    out = choice.run(x, lambda: (right(x), 1e-3))
    assert choice.names[64] == "right" and "wrong" not in choice.timings[64]
    assert torch.equal(out, right(x))


def test_gradients_take_the_dense_path():
    lin, q = _layer()
    x = torch.randn(4, 48, requires_grad=True)
    q(x).sum().backward()
    assert torch.allclose(x.grad, q.dequantized_weight().sum(0).expand(4, -1), atol=1e-5)
    assert "_kernel_choice" not in q.__dict__, "no measuring while training"


def test_report_counts_decoded_copies():
    _, q = _layer()
    ql = QuantLinear.from_quantized(rtn_quantize(torch.randn(30, 64), bits=4, granularity="channel"), None, True)
    model = nn.Sequential(nn.Linear(16, 48), q, nn.ReLU(), nn.Linear(20, 64), ql)
    with torch.no_grad(), kernel_mode("compact"):
        model(torch.randn(2, 16))
    assert runtime_report(model)["cache_bytes"] == 0, "compact keeps no decoded weight"
    with torch.no_grad():
        model(torch.randn(2, 16))
    report = runtime_report(model)
    assert report["layers"]["1"]["cache_bytes"] == 48 * 20 * 4
    assert report["layers"]["4"]["cache_bytes"] == 30 * 64 * 4
    assert report["cache_bytes"] == (48 * 20 + 30 * 64) * 4 and report["mode"] == "auto"


def test_quant_linear_compact_equals_cached():
    ql = QuantLinear.from_quantized(rtn_quantize(torch.randn(30, 64), bits=3, granularity="channel"),
                                    torch.randn(30), True)
    x = torch.randn(3, 64)
    with torch.no_grad():
        cached = ql(x)
        with kernel_mode("compact"):
            assert torch.equal(ql(x), cached) and ql._cache.value is None


def test_hashed_layer_builds_once_follows_updates_and_stays_compact_on_request():
    layer = HashedLinear(24, 40, buckets=100, seed=5)
    model = nn.Sequential(layer)
    assert build_hashed(model) == 1
    state = layer.runtime_state()
    assert state["cache_bytes"] == 24 * 40 * 4 and state["choices"] == {"all": "dense"}
    x = torch.randn(3, 24)
    with torch.no_grad():
        built = layer(x)
        assert torch.allclose(built, F.linear(x, layer.virtual_weight(), layer.bias))
        layer.weight.mul_(2)                              # training changes weights in place
        assert torch.allclose(layer(x) - layer.bias, 2 * (built - layer.bias), atol=1e-5)
    out = layer(x)                                        # grad mode: gathered, so the K weights learn
    out.sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad(), kernel_mode("compact"):
        assert torch.allclose(layer(x), out) and layer.runtime_state()["cache_bytes"] == 0
        assert build_hashed(model) == 0


def test_loaded_hashed_model_is_built_at_load(lenet, digits_task, tmp_path):
    model = sk.share_(lenet, sk.HashedConfig(ratio=0.125, finetune_epochs=0), digits_task)
    sk.save(model, tmp_path / "h.slim")
    loaded = sk.load(tmp_path / "h.slim", runtime="torch")
    report = runtime_report(loaded)
    hashed = [n for n, m in loaded.named_modules() if isinstance(m, HashedLinear)]
    assert hashed and all(report["layers"][n]["cache_bytes"] > 0 for n in hashed)
    x = digits_task.example_inputs(8)["x"]
    with torch.no_grad():
        ours = loaded(x)
        with kernel_mode("compact"):
            assert torch.allclose(ours, loaded(x), atol=1e-6)
