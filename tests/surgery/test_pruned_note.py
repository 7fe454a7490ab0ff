"""Shrunk layers say what they were: `print(model)` and .slim files keep a "pruned from" note."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit as sk
from slimkit.core.errors import SlimFormatError
from slimkit.surgery import from_spec, to_spec
from slimkit.surgery.shrink import prune_groups_
from slimkit.surgery.trace import trace_groups
from slimkit.zoo.lenet import LeNet5, LeNet300100

X = {"x": torch.rand(2, 64)}


def _halve(model):
    groups, _ = trace_groups(model, X)
    prune_groups_(model, [(g, torch.arange(g.channels // 2)) for g in groups])
    return model


def test_print_shows_the_sizes_before_pruning(tmp_path):
    model = _halve(LeNet300100())
    assert repr(model.fc1) == "Linear(in_features=64, out_features=150, bias=True, pruned from out_features=300)"
    assert str(model.fc2).endswith("pruned from in_features=300, out_features=100)")
    twice = _halve(copy.deepcopy(model))                     # the note keeps the original sizes
    assert str(twice.fc1).endswith("out_features=75, bias=True, pruned from out_features=300)")
    assert str(model.fc1).endswith("out_features=150, bias=True, pruned from out_features=300)")
    sk.save(twice, tmp_path / "p.slim")
    assert str(sk.load(tmp_path / "p.slim", model=LeNet300100())) == str(twice)


def test_conv_and_batchnorm_notes_round_trip_through_specs():
    model = _halve(LeNet5())
    assert str(model.bn1).startswith("BatchNorm2d(8, ") and str(model.bn1).endswith(", pruned from num_features=16)")
    spec = to_spec(model.conv2)
    assert spec["pruned_from"] == {"in_channels": 16, "out_channels": 32}
    assert str(from_spec(spec)) == str(model.conv2) and "pruned" not in str(LeNet5().conv2)
    with pytest.raises(SlimFormatError, match="'pruned_from' must map sizes to positive integers"):
        from_spec({**spec, "pruned_from": {"out_channels": "many"}})
    with pytest.raises(SlimFormatError, match="does not have"):
        from_spec({**spec, "pruned_from": {"num_features": 3}})
