"""Tracing coupled layers and physically shrinking them (Linear, Conv, BN, flatten -> fc)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.surgery.shrink import prune_group_, prune_groups_, shrink_conv, shrink_linear, shrink_norm
from slimkit.surgery.trace import trace_groups
from slimkit.zoo.lenet import LeNet5, LeNet300100

X = {"x": torch.rand(4, 64)}


def test_groups_print_readably():
    groups, problems = trace_groups(LeNet300100(), X)
    assert [str(g) for g in groups] == ["fc1[out] <-> fc2[in]", "fc2[out] <-> fc3[in]"]
    assert problems == {"fc3": "feeds the model output"}
    groups, _ = trace_groups(LeNet5(), X)
    assert [str(g) for g in groups][:2] == ["conv1[out] <-> bn1[ch] <-> conv2[in]",
                                            "conv2[out] <-> bn2[ch] <-> fc1[in x4]"]
    assert groups[1].activation == "bn2" and "32 channels" in groups[1].details()


def test_unfollowable_structures_are_reported():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 3)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.a(x)) + x))

    groups, problems = trace_groups(Residual(), X)
    assert groups == [] or all(g.producer not in ("b",) for g in groups)
    assert problems["b"] == "is combined with the model input x, whose channels cannot be removed"

    class Dynamic(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(SlimError, match="cannot trace Dynamic"):
        trace_groups(Dynamic(), X, tracer="fx")
    assert trace_groups(Dynamic(), X) == ([], {})       # the hook tracer runs it: nothing to prune

    class Broken(Dynamic):
        def forward(self, x):
            return x if x.sum() > 0 else x @ x

    with pytest.raises(SlimError, match=r"cannot trace Broken .*torch.fx: .*; hooks: .*mat1 and mat2"):
        trace_groups(Broken(), {"x": -torch.rand(4, 64)})


def test_shrinking_modules_keeps_selected_rows_and_columns():
    lin = nn.Linear(6, 5)
    small = shrink_linear(lin, torch.tensor([0, 3]), torch.tensor([1, 2, 5]))
    assert torch.equal(small.weight, lin.weight[[0, 3]][:, [1, 2, 5]])
    assert torch.equal(small.bias, lin.bias[[0, 3]])
    conv = nn.Conv2d(4, 6, 3, padding=1)
    sc = shrink_conv(conv, torch.tensor([1, 5]), torch.tensor([0, 3]))
    assert sc.weight.shape == (2, 2, 3, 3) and torch.equal(sc.weight, conv.weight[[1, 5]][:, [0, 3]])
    bn = nn.BatchNorm2d(6)
    bn.running_mean.uniform_()
    assert torch.equal(shrink_norm(bn, torch.tensor([2, 4])).running_mean, bn.running_mean[[2, 4]])


def _silence(model, producer, idx, consumer):
    """Make channels `idx` of `producer` contribute nothing downstream, so removing them is exact."""
    with torch.no_grad():
        getattr(model, consumer).weight[:, idx] = 0


@pytest.mark.parametrize("arch", ["lenet-300-100", "lenet5"])
def test_removing_dead_channels_keeps_outputs_and_reloads(arch, tmp_path):
    torch.manual_seed(0)
    model = sk.zoo.registry.entry(arch).build().eval()
    groups, _ = trace_groups(model, X)
    x = X["x"]
    plan = []
    for g in groups:
        consumer = next(m for m in g.members if m.role == "in")
        dead = torch.arange(0, g.channels, 3)
        cols = (dead[:, None] * consumer.block + torch.arange(consumer.block)).reshape(-1)
        _silence(model, g.producer, cols, consumer.module)
        keep = torch.tensor([c for c in range(g.channels) if c not in set(dead.tolist())])
        plan.append((g, keep))
    ref = model(x)
    prune_groups_(model, plan, check=lambda m: m(x))
    assert torch.allclose(model(x), ref, atol=1e-5)
    before = sum(p.numel() for p in sk.zoo.registry.entry(arch).build().parameters())
    assert sum(p.numel() for p in model.parameters()) < before
    sk.save(model, tmp_path / "s.slim")
    assert torch.equal(sk.load(tmp_path / "s.slim")(x), model(x))


def test_failed_check_restores_the_original():
    model = LeNet300100().eval()
    groups, _ = trace_groups(model, X)
    x = X["x"]
    ref = model(x)
    fc1 = model.fc1

    def broken(_m):
        raise RuntimeError("shape mismatch in forward")

    with pytest.raises(SlimError, match="original kept: shape mismatch"):
        prune_groups_(model, [(groups[0], torch.arange(10))], check=broken)
    assert model.fc1 is fc1 and torch.equal(model(x), ref)
    assert model.__dict__.get("slimkit_edits", []) == []


def test_bad_keep_indices_are_refused():
    model = LeNet300100()
    groups, _ = trace_groups(model, X)
    with pytest.raises(SlimError, match="every channel"):
        prune_group_(model, groups[0], torch.tensor([], dtype=torch.long))
    with pytest.raises(SlimError, match="out of range"):
        prune_group_(model, groups[0], torch.tensor([0, 300]))
