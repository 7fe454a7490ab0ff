from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.core.errors import SlimError, SlimFormatError
from slimkit.surgery import from_spec, replace_module, set_attr, to_spec


@pytest.mark.parametrize("module", [
    nn.Linear(5, 3), nn.Linear(5, 3, bias=False), nn.Conv2d(3, 8, 3, stride=2, padding=1, groups=1),
    nn.Conv1d(4, 4, 5, groups=2), nn.BatchNorm2d(7), nn.BatchNorm1d(3), nn.LayerNorm(6),
    nn.Embedding(11, 4, padding_idx=0), nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Identity()),
    nn.Flatten(1),
])
def test_spec_round_trip_rebuilds_the_same_structure(module):
    spec = to_spec(module)
    rebuilt = from_spec(spec)
    assert type(rebuilt) is type(module)
    assert to_spec(rebuilt) == spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == \
           {k: v.shape for k, v in module.state_dict().items()}


def test_unknown_module_types_cannot_be_recorded():
    class Custom(nn.Module):
        pass

    with pytest.raises(SlimError, match="cannot record a module of type Custom"):
        to_spec(Custom())
    with pytest.raises(SlimFormatError, match="unknown module type"):
        from_spec({"type": "Custom"})
    with pytest.raises(SlimFormatError, match="invalid"):
        from_spec({"type": "Linear", "in": "x"})


def test_replace_and_set_attr_record_edits():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    replace_module(model, "0", nn.Linear(4, 2))
    set_attr(model, "1", "inplace", True)
    assert model.__dict__["slimkit_edits"] == [
        {"op": "replace", "module": "0"},
        {"op": "setattr", "module": "1", "attr": "inplace", "value": True},
    ]
    assert model(torch.ones(1, 4)).shape == (1, 2)
    with pytest.raises(SlimError, match="no module named 'missing'"):
        replace_module(model, "missing", nn.Identity())
