"""APoZ (Network Trimming) and weight-norm structured pruning: layers physically shrink."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.pruning.api import APoZPruningConfig, NormPruningConfig
from slimkit.pruning.importance import above_mean_std, apoz, weight_norm, zero_fraction
from slimkit.pruning.structured import param_count


def test_zero_fraction_per_channel():
    z, n = zero_fraction(torch.tensor([[1.0, -1.0], [0.0, 2.0]]))
    assert z.tolist() == [1, 1] and n == 2
    conv_out = torch.zeros(2, 3, 2, 2)
    conv_out[:, 1] = 1.0
    z, n = zero_fraction(conv_out)
    assert z.tolist() == [8, 0, 8] and n == 8


def test_apoz_measures_dead_neurons():
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0], [-1, 0], [0, 0]]))
        lin.bias.copy_(torch.tensor([0.0, 0.0, -1.0]))
    model = nn.Sequential(lin, nn.ReLU())
    batches = [{"input": torch.tensor([[1.0, 0], [-1, 0], [2, 0], [3, 0]])}]
    scores = apoz(model, batches, {"fc": "0"}, forward=lambda m, b: m(b["input"]))["fc"]
    assert scores.tolist() == pytest.approx([0.25, 0.75, 1.0])
    assert above_mean_std(scores, 1.0).tolist() == [False, False, True]   # mean .67 + std .31
    assert above_mean_std(scores, 2.0).tolist() == [False, False, False]
    assert weight_norm(lin.weight, 1).tolist() == [1.0, 1.0, 0.0]


def test_apoz_round_shrinks_lenet5_and_reloads(lenet5_trained, digits_task, tmp_path):
    import copy

    model = copy.deepcopy(lenet5_trained)
    before = param_count(model)
    model = sk.prune_(model, APoZPruningConfig(rounds=1, epochs=0, max_drop=100), digits_task)
    assert param_count(model) < before
    assert model.fc1.out_features < 120 and model.fc1.in_features == 4 * model.conv2.out_channels
    assert model.bn2.num_features == model.conv2.out_channels
    x = digits_task.example_inputs(16)["x"]
    sk.save(model, tmp_path / "a.slim")
    assert torch.equal(sk.load(tmp_path / "a.slim")(x), model(x))


def test_round_over_budget_is_undone(lenet, digits_task):
    cfg = NormPruningConfig(ratio=0.95, max_drop=0.0, min_channels=1)
    with pytest.warns(UserWarning, match="round 1 lost .* undone"):
        model = sk.prune_(lenet, cfg, digits_task)
    assert model.fc1.out_features == 300 and model.__dict__["slimkit_trim"]["rounds"] == []


def test_weight_norm_removes_the_requested_fraction(lenet, digits_task):
    model = sk.prune_(lenet, NormPruningConfig(ratio=0.5, norm="l2", max_drop=100), digits_task)
    assert (model.fc1.out_features, model.fc2.in_features) == (150, 150)
    assert (model.fc2.out_features, model.fc3.in_features) == (50, 50)
    assert model(digits_task.example_inputs(2)["x"]).shape == (2, 10)


def test_structured_errors_name_the_problem(lenet, digits_task):
    with pytest.raises(SlimError, match="fc3 feeds the model output"):
        sk.prune_(lenet, NormPruningConfig(targets="fc3"), digits_task)
    with pytest.raises(ValueError, match="ratio must be in"):
        NormPruningConfig(ratio=1.0)
    with pytest.raises(SlimError, match="needs a task"):
        NormPruningConfig().apply(lenet, None, None)


@pytest.mark.slow
def test_recipe_apoz_meets_lenet5_targets(lenet5_trained, digits_task):
    """Issue 4 targets: >= 3.8x fewer parameters, <= 0.5 pt test drop (faster at batch 1 and 32 is
    a bench target, `python -m bench`: tests never assert wall-clock times)."""
    import copy

    base = lenet5_trained
    model = sk.run_recipe(copy.deepcopy(base), sk.load_recipe("apoz"), digits_task)
    assert param_count(base) / param_count(model) >= 3.8
    assert 100 * (digits_task.score(base) - digits_task.score(model)) <= 0.5


def test_taylor_and_activation_criteria_shrink_lenet5(lenet5_trained, digits_task):
    import copy

    from slimkit.pruning.api import StructuredPruningConfig

    for criterion in ("taylor", "activation"):
        model = copy.deepcopy(lenet5_trained)
        sk.prune_(model, StructuredPruningConfig(ratio=0.25, criterion=criterion, max_drop=100), digits_task)
        assert (model.conv2.out_channels, model.fc1.out_features) == (24, 90)
        assert model(digits_task.example_inputs(2)["x"]).shape == (2, 10)


def test_inspect_data(lenet5_trained, digits_task):
    from slimkit.pruning.report import apoz_report, weight_histograms

    rows = apoz_report(lenet5_trained, digits_task, samples=128)
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    assert all(0 <= r["apoz_mean"] <= 1 and len(r["apoz"]) == r["channels"] for r in rows)
    hist = weight_histograms(lenet5_trained)
    assert sum(hist["fc1.weight"]["counts"]) == 120 * 128
