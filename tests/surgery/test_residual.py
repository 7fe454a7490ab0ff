"""Residual networks: every layer adding into one residual stream is cut together (a ResNet stage)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.surgery.shrink import prune_groups_, same_output_shape
from slimkit.surgery.trace import trace_groups

X = torch.rand(2, 3, 8, 8)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else \
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class MiniResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 8, 1))
        self.layer2 = nn.Sequential(Block(8, 16, 2), Block(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture()
def resnet():
    torch.manual_seed(0)
    model = MiniResNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    return model


def test_each_stage_is_one_group_and_both_tracers_agree(resnet):
    by_fx, fx_problems = trace_groups(resnet, X, tracer="fx")
    by_hooks, hook_problems = trace_groups(resnet, X, tracer="hooks")
    assert [str(g) for g in by_hooks] == [str(g) for g in by_fx] and hook_problems == fx_problems
    stages = [g for g in by_hooks if len(g.producers()) > 1]
    assert [g.producers() for g in stages] == [
        ["stem", "layer1.0.conv2", "layer1.1.conv2"], ["layer2.0.conv2", "layer2.0.down.0", "layer2.1.conv2"]]
    assert {"layer2.0.conv1[in]", "layer2.0.down.0[in]", "layer1.1.bn2[ch]"} <= {str(m) for m in stages[0].members}
    assert "fc[in]" in str(stages[1]) and fx_problems == {"fc": "feeds the model output"}
    assert len(by_hooks) == 6     # the two streams and each block's inner conv1 -> conv2


def test_cutting_a_stream_is_exact_when_its_channels_are_unused(resnet, tmp_path):
    groups, _ = trace_groups(resnet, X)
    stream = next(g for g in groups if "fc[in]" in str(g))
    dead = torch.tensor([1, 4, 9])
    readers = [m.module for m in stream.members if m.role == "in"]
    assert readers == ["layer2.1.conv1", "fc"]
    with torch.no_grad():                    # every reader of the stream ignores channels 1, 4, 9
        for name in readers:
            resnet.get_submodule(name).weight[:, dead] = 0
    ref = resnet(X)
    keep = torch.tensor([c for c in range(16) if c not in dead.tolist()])
    prune_groups_(resnet, [(stream, keep)], check=same_output_shape(lambda m: m(X), resnet))
    assert (resnet.layer2[0].down[0].out_channels, resnet.layer2[1].conv1.in_channels, resnet.fc.in_features) == \
        (13, 13, 13)
    assert torch.allclose(resnet(X), ref, atol=1e-5)
    sk.save(resnet, tmp_path / "r.slim")
    assert torch.equal(sk.load(tmp_path / "r.slim", model=MiniResNet().eval())(X), resnet(X))


def test_weight_norm_pruning_halves_a_resnet(resnet):
    from slimkit.pruning.structured import norm_scores

    groups, _ = trace_groups(resnet, X)
    scores = norm_scores(1)(resnet, groups)
    before = sum(p.numel() for p in resnet.parameters())
    plan = [(g, scores[g.producer].argsort()[: g.channels // 2]) for g in groups]
    prune_groups_(resnet, plan, check=same_output_shape(lambda m: m(X), resnet))
    assert sum(p.numel() for p in resnet.parameters()) < 0.3 * before
    assert resnet(X).shape == (2, 10) and resnet.layer1[0].bn2.num_features == 4
