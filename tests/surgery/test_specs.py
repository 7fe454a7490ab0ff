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


QUANT_CONV = {"type": "QuantConv2d", "in": 1, "out": 4, "kernel": [3, 3], "stride": [1, 1], "dilation": [1, 1],
              "groups": 1, "bias": True, "bits": 8, "symmetric": True, "granularity": "channel", "group_size": 9,
              "scale_dtype": "float32"}


@pytest.mark.parametrize("base", [{"type": "Conv2d", "in": 1, "out": 4, "kernel": [3, 3], "stride": [1, 1],
                                   "dilation": [1, 1], "groups": 1, "bias": True}, QUANT_CONV],
                         ids=["Conv2d", "QuantConv2d"])
def test_padding_from_a_file_is_bounded(base):
    """Found by the tree fuzzer: a QuantConv2d padded by 1,048,576 took 1.3 GB per 8x8 forward. Padding
    may be at most max(64, dilation x (kernel - 1)) per side (docs/safety.md)."""
    from slimkit.surgery.specs import MAX_PADDING

    assert MAX_PADDING == 64
    assert from_spec({**base, "padding": [64, 64]}).padding == (64, 64)
    for bad in ([65, 0], [0, 1_048_576]):
        with pytest.raises(SlimFormatError, match="beyond the kernel's reach"):
            from_spec({**base, "padding": bad})
    with pytest.raises(SlimFormatError, match="padding"):
        from_spec({**base, "padding": [-1, 0]})
    wide = {**base, "dilation": [50, 50], "padding": [100, 100]}   # a 3-tap kernel dilated 50 reaches 100
    assert from_spec(wide).padding == (100, 100)


def test_adaptive_pool_sizes_from_a_file_are_bounded():
    from slimkit.surgery.torch_layers import MAX_POOL_OUT

    assert MAX_POOL_OUT == 1024
    assert from_spec({"type": "AdaptiveAvgPool2d", "size": 1024}).output_size == 1024
    for bad in (1025, 0, [4, 10**6]):
        with pytest.raises(SlimFormatError, match="1..1024"):
            from_spec({"type": "AdaptiveAvgPool2d", "size": bad})
