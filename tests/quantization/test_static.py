"""Observers and static int8 activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.nn.quant_linear import Int8Linear
from slimkit.quantization.observers import BINS, Observer, ObserverKind
from slimkit.quantization.static import Int8StaticConfig


def _heavy_tailed(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(20000, generator=gen)
    x[:5] = torch.tensor([40.0, -35.0, 30.0, 25.0, -50.0])      # rare outliers
    return x


@pytest.mark.parametrize("kind", list(ObserverKind))
def test_each_observer_picks_a_sensible_range(kind):
    obs = Observer(kind)
    for chunk in _heavy_tailed().split(5000):                   # max grows between updates
        obs.update(chunk)
    t = obs.threshold()
    assert obs.max_ == 50.0
    if kind is ObserverKind.MINMAX:
        assert t == 50.0
    else:
        assert 2.5 < t < 50.0, f"{kind.value} threshold {t}"       # clips the outliers, keeps the bulk
    assert obs.scale() == pytest.approx(t / 127)


def test_mse_observer_lowers_quantization_error_on_heavy_tails():
    x = _heavy_tailed(1)

    def err(kind):
        obs = Observer(kind)
        obs.update(x)
        s = obs.scale()
        return float((torch.clamp(torch.round(x / s), -127, 127) * s - x).pow(2).mean())

    assert err("mse") < err("minmax")


def test_rebinning_keeps_the_mass():
    obs = Observer("percentile")
    obs.update(torch.rand(1000))
    obs.update(torch.rand(1000) * 10)
    assert obs.hist_.sum() == 2000 and obs.hist_.shape == (BINS,)


def test_observer_errors():
    with pytest.raises(ValueError, match="percentile"):
        Observer("percentile", percentile=0)
    with pytest.raises(ValueError, match="empty"):
        Observer().threshold()


def test_static_linear_close_to_float_and_saturates():
    torch.manual_seed(0)
    lin = nn.Linear(32, 8)
    x = torch.randn(16, 32)
    q = Int8Linear.from_linear(lin, input_scale=float(x.abs().max()) / 127)
    assert (q(x) - lin(x)).norm() / lin(x).norm() < 0.02
    assert torch.isfinite(q(1e9 * x)).all()                     # saturates instead of wrapping
    assert "static" in repr(q)


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "kl"])
def test_int8_static_on_lenet(observer, lenet, digits_task, tmp_path):
    base = digits_task.score(lenet)
    model = sk.quantize_(lenet, Int8StaticConfig(observer=observer, samples=128), data=digits_task)
    assert model.fc2.static and model.fc2.input_scale.item() > 0
    assert base - digits_task.score(model) <= 0.005
    path = tmp_path / "s.slim"
    sk.save(model, path)
    loaded = sk.load(path)
    x = digits_task.example_inputs(8)["x"]
    assert torch.equal(model(x), loaded(x)) and loaded.fc2.static


def test_int8_static_recipe_and_bad_data(lenet):
    assert sk.load_recipe("int8-static").stages[0].method == "int8-static"
    with pytest.raises(sk.SlimError, match="calibration"):
        Int8StaticConfig().apply(lenet, None, None)


def _outlier_rows(seed=0):
    """Activations like a transformer's: a gaussian bulk and one channel ~30x larger."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 64, generator=gen)
    x[:, 5] *= 30
    return x


def test_output_search_beats_the_observer_and_reports_dynamic_error():
    from slimkit.quantization.static_search import candidate_errors, choose_threshold, thresholds_for

    x = _outlier_rows()
    lin = nn.Linear(64, 16)
    obs = Observer("percentile", percentile=99.0)
    obs.update(x)
    thresholds = thresholds_for(obs.threshold(), obs.max_)
    errors = candidate_errors(x, lin.weight, thresholds)
    best, ratio = choose_threshold(thresholds, errors)
    assert errors.shape == (len(thresholds) + 1,) and best != thresholds[0]    # clipping channel 5 hurts
    assert float(errors[thresholds.index(best)]) < 0.5 * float(errors[0])
    assert ratio == pytest.approx(float(errors[thresholds.index(best)] / errors[-1]))
    assert ratio > 1.0    # one scale per tensor cannot match per-token scales here


@pytest.mark.parametrize(("fallback", "dynamic"), [(None, False), (1.0, True)])
def test_int8_static_keeps_layers_dynamic_above_the_fallback(fallback, dynamic, lenet, digits_task):
    from slimkit.quantization.convert import quant_report

    model = sk.quantize_(lenet, Int8StaticConfig(samples=64, dynamic_fallback=fallback), data=digits_task)
    report = quant_report(model)["quantized"]
    kept = [n for n in ("fc1", "fc2", "fc3") if not getattr(model, n).static]
    assert bool(kept) == dynamic
    assert all("dynamic per-token" in report[n] for n in kept)
    assert all("output-searched" in report[n] for n in ("fc1", "fc2", "fc3") if n not in kept)
    with pytest.raises(ValueError, match="dynamic_fallback"):
        Int8StaticConfig(dynamic_fallback=0.5)
