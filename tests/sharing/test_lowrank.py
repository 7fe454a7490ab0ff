"""Low-rank factorization: math (SVD, activation-aware) and the `lowrank` method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.sharing.api import LowRankConfig, ShareConfigError
from slimkit.sharing.lowrank import (
    rank_for_budget,
    rank_for_energy,
    spectrum,
    svd_factors,
    whitened_factors,
)


def test_svd_factors_are_the_best_rank_r_approximation():
    torch.manual_seed(0)
    w = torch.randn(40, 30)
    a, b = svd_factors(w, 7)
    assert a.shape == (7, 30) and b.shape == (40, 7)
    s = torch.linalg.svdvals(w.double())
    err = torch.linalg.norm((w - b @ a).double()) ** 2
    assert float(err) == pytest.approx(float((s[7:] ** 2).sum()), rel=1e-4)
    full_a, full_b = svd_factors(w, 30)
    assert torch.allclose(full_b @ full_a, w, atol=1e-4)


def test_activation_aware_beats_svd_on_correlated_inputs():
    torch.manual_seed(1)
    w = torch.randn(20, 16)
    mix = torch.randn(16, 16) * torch.logspace(0, -3, 16)  # inputs living near a few directions
    x = torch.randn(2000, 16) @ mix.T
    cov = (x.T @ x / x.shape[0]).double()
    a1, b1 = svd_factors(w, 4)
    a2, b2 = whitened_factors(w, cov, 4, damp=1e-8)
    err_svd = ((x @ (w - b1 @ a1).T) ** 2).mean()
    err_aware = ((x @ (w - b2 @ a2).T) ** 2).mean()
    assert err_aware < 0.8 * err_svd
    assert spectrum(w, cov).shape == (16,)


def test_rank_rules():
    s = torch.tensor([10.0, 5.0, 1.0, 0.1])
    assert rank_for_energy(s, 0.5) == 1
    assert rank_for_energy(s, 0.99) == 2
    assert rank_for_energy(s, 1.0) == 4
    assert rank_for_budget(64, 300, 0.2) == 10
    assert rank_for_budget(10, 10, 0.01) == 1


def test_factorized_model_saves_loads_and_is_smaller(lenet, digits_task, tmp_path):
    base = digits_task.score(lenet)
    model = sk.share_(lenet, LowRankConfig(budget=0.2, targets=["fc1", "fc2"]), data=digits_task)
    assert isinstance(model.fc1, nn.Sequential) and model.fc1[0].out_features == 10
    assert model.fc2[0].out_features == 15 and model.fc2[0].bias is None
    assert isinstance(model.fc3, nn.Linear)
    path = tmp_path / "lr.slim"
    size = sk.save(model, path)
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert size < 50_000
    assert digits_task.score(loaded) >= base - 0.01  # 5x fewer weights in fc1/fc2 at <= 1 pt


def test_energy_rule_keeps_dense_layers_that_would_grow(lenet, digits_task):
    model = sk.share_(lenet, LowRankConfig(energy=0.999999, mode="svd"), data=digits_task)
    assert isinstance(model.fc3, nn.Linear)  # 10 x 100: no rank saves anything


@pytest.mark.parametrize("rank", [0, -3])
def test_non_positive_rank_is_refused(rank):
    with pytest.raises(ShareConfigError, match="rank") as info:
        LowRankConfig(rank=rank)
    assert "\n" not in str(info.value)


def test_rank_above_layer_size_names_the_layer(lenet, digits_task):
    with pytest.raises(ShareConfigError, match=r"rank 65 for fc1 must be in 1\.\.64"):
        sk.share_(lenet, LowRankConfig(rank=65, targets="fc1"), data=digits_task)


def test_conflicting_and_out_of_range_options():
    with pytest.raises(ShareConfigError, match="one of rank, energy, budget"):
        LowRankConfig(rank=3, energy=0.9)
    with pytest.raises(ShareConfigError, match="energy"):
        LowRankConfig(energy=1.5)
    with pytest.raises(ShareConfigError, match="budget"):
        LowRankConfig(budget=0)


def test_pca_mode_needs_data(lenet):
    from slimkit.sharing.apply_lowrank import RankRule, factorize_model

    with pytest.raises(sk.SlimError, match="calibration"):
        factorize_model(lenet, [("fc1", lenet.fc1)], None, rule=RankRule(rank=4), aware=True,
                        samples=64, damp=1e-4, epochs=0, lr=1e-3, seed=0)


@pytest.mark.parametrize("mode", ["svd", "pca"])
def test_convolutions_factorize_and_round_trip(lenet5_trained, digits_task, tmp_path, mode):
    import copy

    model = copy.deepcopy(lenet5_trained)
    model.__dict__["slimkit_base"] = dict(lenet5_trained.__dict__["slimkit_base"])
    x = digits_task.example_inputs(64)["x"]
    with torch.no_grad():
        before = model(x)
    model = sk.share_(model, LowRankConfig(rank=16, targets="conv2", mode=mode), data=digits_task)
    first, second = model.conv2
    assert first.out_channels == 16 and first.kernel_size == (3, 3) and second.kernel_size == (1, 1)
    with torch.no_grad():
        after = model(x)
    assert (after.argmax(1) == before.argmax(1)).float().mean() > 0.9  # rank 16 of 32: close
    path = tmp_path / "c.slim"
    sk.save(model, path)
    with torch.no_grad():
        assert torch.equal(sk.load(path, runtime="torch")(x), after)


def test_full_rank_conv_factorization_is_exact():
    from slimkit.sharing.apply_lowrank import factorize

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    seq = factorize(conv, 5, None, 1e-4)
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(seq(x), conv(x), atol=1e-5)
