"""`task_from`: data and a metric as users have them, made into the task every entry point uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import slimkit as sk
from slimkit.core.task import has_labels
from slimkit.core.user_task import MetricTask, UserTask, task_from


class Net(nn.Module):
    def __init__(self, out: int = 3):
        super().__init__()
        self.fc = nn.Linear(4, out)

    def forward(self, features):
        return self.fc(features)


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, a, b):
        return self.fc(a + b)


def _data(n: int = 50, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_a_dataloader_of_pairs_gives_labelled_batches_and_a_held_back_fifth():
    x, y = _data(50)
    task = task_from(DataLoader(TensorDataset(x, y), batch_size=8), model=Net())
    assert isinstance(task, UserTask) and task.labelled and has_labels(task)
    assert task.mode == "accuracy" and task.score_name == "accuracy"
    train = sum(len(t) for _, t in task.train_batches(16))
    val = sum(len(t) for _, t in task.val_)
    assert (train, val) == (40, 10)
    calib = torch.cat([b["features"] for b in task.calibration(1000)])
    held = torch.cat([b["features"] for b, _ in task.val_])
    assert len(calib) == 40 and not any((calib == row).all(1).any() for row in held)   # never the validation split
    assert task.example_inputs(7)["features"].shape == (7, 4)


def test_batch_forms_tensor_tuple_dict_and_positional_inputs():
    x, y = _data(20)
    net = Net()
    assert task_from(x, model=net).samples_.size == 20                        # one tensor: one batch
    assert task_from((x, y), model=net).labelled                             # one (inputs, target) batch
    assert not task_from([{"features": x[:10]}, {"features": x[10:]}], model=net).labelled
    two = task_from([((x[:10], x[:10]), y[:10]), ((x[10:], x[10:]), y[10:])], model=TwoInputs())
    assert set(two.calibration()[0]) == {"a", "b"}
    with pytest.raises(sk.SlimError, match="2 input tensor"):
        task_from([((x, x), y)], model=Net())
    with pytest.raises(sk.SlimError, match="batch #0 has 3 items"):
        task_from([(x, y, y)], model=net)
    with pytest.raises(sk.SlimError, match="cannot run on your batches"):
        task_from(torch.randn(5, 7), model=net)


def test_without_labels_the_score_is_fidelity_to_the_model_it_was_made_from():
    x, _ = _data(40)
    net = Net()
    task = task_from(DataLoader(TensorDataset(x), batch_size=10), model=net)
    assert not task.labelled and not has_labels(task) and task.mode == "agreement"
    assert task.validation_score(net) == 1.0
    with pytest.raises(NotImplementedError, match="no class labels"):
        task.train_batches()
    other = Net()
    assert task.validation_score(other) < 1.0
    regression = task_from(DataLoader(TensorDataset(x, torch.randn(40, 1)), batch_size=10), model=Net(out=1))
    assert regression.mode == "cosine" and not regression.labelled


def test_a_metric_replaces_the_score_and_wraps_a_task(digits_task):
    x, y = _data(30)
    calls = []

    def my_metric(model):
        calls.append(model)
        return 0.25

    task = task_from(DataLoader(TensorDataset(x, y), batch_size=10), my_metric, Net())
    assert task.score(Net()) == 0.25 and task.score_name == "my_metric" and calls
    assert 0 <= task.validation_score(Net()) <= 1        # the guard stays on held-back data
    wrapped = task_from(digits_task, metric=lambda m: 0.5)
    assert isinstance(wrapped, MetricTask) and wrapped.score(None) == 0.5 and wrapped.score_name == "metric"
    assert wrapped.data is digits_task.data and has_labels(wrapped)
    assert task_from(digits_task) is digits_task and task_from(None) is None
    with pytest.raises(sk.SlimError, match="must be a callable"):
        task_from(x, metric=0.9, model=Net())
    with pytest.raises(sk.SlimError, match="needs data= too"):
        task_from(None, metric=lambda m: 1.0, model=Net())
    with pytest.raises(sk.SlimError, match="must return a number"):
        task_from(x, metric=lambda m: "good", model=Net()).score(Net())


def test_a_small_batch_list_keeps_a_batch_back_and_variable_shapes_split_by_batch():
    net = nn.Sequential(nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 6))
    batches = [torch.randn(4, 6) for _ in range(6)]
    task = task_from(batches, model=net)
    assert task.held_out and len(task.val_) == 2
    ragged = [torch.randn(3, 2, 2 + i % 2) for i in range(3)]      # not concatenable
    seq = nn.Sequential(nn.Flatten(0), nn.Identity())
    odd = task_from(ragged, model=seq)
    assert odd.samples_ is None and len(odd.val_) == 1 and len(odd.train_) == 2
