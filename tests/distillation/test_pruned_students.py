"""Students from the structured-pruning machinery (any model the pruner can cut, e.g. lenet5)
and smaller zoo models; as functions and as `distill` recipe options."""

from __future__ import annotations

import pytest
import torch

import slimkit as sk
from slimkit.distillation import DistillConfig, distill
from slimkit.distillation.students import fresh_copy, param_count, pruned_student, reinitialise_, zoo_student


@pytest.fixture(scope="module")
def pruned_lenet5(lenet5_trained):
    return pruned_student(lenet5_trained, ratio=0.75, criterion="l2")


def test_pruned_lenet5_keeps_the_teachers_most_important_filters(lenet5_trained, pruned_lenet5):
    s, t = pruned_lenet5, lenet5_trained
    assert (s.conv1.out_channels, s.bn1.num_features, s.conv2.in_channels) == (4, 4, 4)
    assert (s.conv2.out_channels, s.fc1.in_features, s.fc1.out_features, s.fc2.out_features) == (8, 32, 30, 21)
    assert s.fc3.out_features == 10 and t.conv1.out_channels == 16  # teacher untouched
    norms = t.conv1.weight.flatten(1).norm(dim=1)
    kept = [i for i in range(16) if any(torch.equal(t.conv1.weight[i], w) for w in s.conv1.weight)]
    assert sorted(kept) == sorted(norms.topk(4).indices.tolist())  # the 4 largest-L2 filters, as they were
    assert param_count(s) * 10 < param_count(t)


def test_widths_are_kept_exactly_for_every_criterion(lenet, digits_task):
    for criterion in ("l1", "l2", "activation", "taylor"):
        s = pruned_student(lenet, widths=[8, 6], criterion=criterion, data=digits_task)
        assert (s.fc1.out_features, s.fc2.out_features, s.fc3.out_features) == (8, 6, 10), criterion
    act = pruned_student(lenet, widths=[8, 6], criterion="activation")
    assert digits_task.validation_score(act) > 0.1  # weights kept, not redrawn


def test_pruned_lenet5_distilled_beats_the_same_architecture_from_scratch_on_labels(
        lenet5_trained, pruned_lenet5, digits_task, tmp_path):
    # measured (3 epochs, lr 0.01): distilled 88.5 / 90.1 / 88.9% test vs from scratch on labels
    # 78.2 / 82.2 / 82.8% for seeds 0 / 1 / 2 (margins 7-10 pt)
    common = {"epochs": 3, "lr": 1e-2, "batch_size": 32, "weight_decay": 0.0, "seed": 0}
    scratch = reinitialise_(fresh_copy(pruned_lenet5), seed=0)
    kd = distill(lenet5_trained, fresh_copy(pruned_lenet5), digits_task,
                 DistillConfig(alpha=0.9, temperature=2.0, **common))
    labels = distill(lenet5_trained, scratch, digits_task, DistillConfig(alpha=0.0, **common))
    assert digits_task.score(kd) > digits_task.score(labels) + 0.04
    path = tmp_path / "student.slim"
    sk.save(kd, path)
    loaded = sk.load(path, runtime="torch")
    x = digits_task.example_inputs(16)["x"]
    with torch.no_grad():
        assert torch.allclose(loaded(x), kd(x), atol=1e-6)
    assert loaded.conv1.out_channels == 4


def test_recipe_options_derive_pruned_and_zoo_students(lenet, digits_task):
    pruned = DistillConfig(student={"prune": 0.9, "criterion": "l2"}).make_student(lenet, digits_task)
    assert (pruned.fc1.out_features, pruned.fc2.out_features) == (30, 10)
    assert torch.equal(pruned.fc3.bias, lenet.fc3.bias)  # teacher weights by default
    again = DistillConfig(student={"widths": [30, 10]}, init="random", seed=1).make_student(lenet)
    assert again.fc1.out_features == 30 and not torch.equal(again.fc3.bias, lenet.fc3.bias)
    small = DistillConfig(student="builtin:lenet5").make_student(lenet)
    assert type(small).__name__ == "LeNet5" and digits_task.score(small) < 0.3  # fresh weights
    trained = zoo_student("lenet5", init="trained")
    assert digits_task.score(trained) > 0.9


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one"),
    ({"ratio": 0.5, "widths": [4, 4]}, "exactly one"),
    ({"ratio": 1.0}, r"in \(0, 1\)"),
    ({"widths": [8]}, "2 prunable layer group"),
    ({"widths": [8, 400]}, "1..100"),
    ({"ratio": 0.5, "criterion": "apoz"}, "unknown pruning criterion"),
])
def test_bad_pruned_student_options_are_one_line_errors(lenet, kwargs, message):
    with pytest.raises(sk.SlimError, match=message):
        pruned_student(lenet, **kwargs)


def test_bad_student_options_in_a_config_are_one_line_errors(lenet):
    with pytest.raises(sk.SlimError, match="builtin:NAME"):
        DistillConfig(student="lenet5").make_student(lenet)
    with pytest.raises(sk.SlimError, match="zoo student"):
        DistillConfig(student="builtin:lenet5", init="teacher").make_student(lenet)
    with pytest.raises(sk.SlimError, match="zoo student"):
        DistillConfig(student=[8, 6], init="trained").make_student(lenet)
    with pytest.raises(ValueError, match="student\n.*ratio: Extra inputs"):
        DistillConfig(student={"prune": 0.5, "ratio": 0.5})
    with pytest.raises(ValueError, match="exactly one of prune"):
        DistillConfig(student={"criterion": "l1"})
    with pytest.raises(ValueError, match="criterion: Input should be 'l1', 'l2', 'activation' or 'taylor'"):
        DistillConfig(student={"prune": 0.5, "criterion": "apoz"})
