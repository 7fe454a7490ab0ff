"""`slimkit.zoo.train.fit` trains any classifier taking one tensor, as the bench's dense baselines are."""

from __future__ import annotations

import torch

from slimkit.zoo.digits import load_digits
from slimkit.zoo.train import accuracy, fit


def test_fit_trains_a_plain_sequential():
    data = load_digits()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    before = accuracy(model, data.val)
    fit(model, data, epochs=3, seed=0)
    assert accuracy(model, data.val) > max(0.5, before + 0.2)
