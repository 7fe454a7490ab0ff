"""The hook tracer: coupled groups of models torch.fx cannot trace, cut physically and checked."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import SlimError
from slimkit.surgery.hooktrace import hook_graph
from slimkit.surgery.shrink import prune_groups_, same_output_shape
from slimkit.surgery.trace import Group, Member, trace_groups
from slimkit.zoo.lenet import LeNet5, LeNet300100
from tiny_bert import TokensTask, tiny_bert

X = {"x": torch.rand(4, 64)}


@pytest.fixture(autouse=True)
def _one_thread():
    from slimkit.core.torch_utils import num_threads

    with num_threads(1):
        yield


class Branchy(nn.Module):
    """An MLP whose forward depends on the data (fx cannot trace `if x.sum() > 0`)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 40), nn.Linear(40, 30), nn.Linear(30, 10)

    def forward(self, x):
        if x.sum() > 0:
            x = x * 0.5
        h = torch.nn.functional.gelu(self.fc1(x))
        return self.fc3(torch.relu(self.fc2(h)))


class BranchyCNN(nn.Module):
    """conv -> BN -> ReLU -> pool -> conv -> flatten -> fc, with a data-dependent branch."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6 * 4 * 4, 10)

    def forward(self, x):
        x = x.view(-1, 1, 8, 8)
        h = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        h = self.conv2(h)
        if h.shape[0] > 1 and x.mean() > -1:
            h = nn.functional.dropout(h, 0.1, self.training)
        return self.fc(torch.flatten(torch.relu(h), 1))


class Gated(nn.Module):
    """A gated unit (LLaMA's MLP): gate and up are multiplied channel by channel, so cut together."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(64, 24), nn.Linear(64, 24), nn.Linear(24, 10)

    def forward(self, x):
        if x.sum() == 0:
            return x[:, :10]
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class ResCNN(nn.Module):
    """A ResNet basic block: the stem's channels and the block's output are added, so cut together."""

    def __init__(self, dynamic: bool = True):
        super().__init__()
        self.dynamic = dynamic
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        if self.dynamic and x.mean() < -5:
            x = x.abs()
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.relu(self.bn2(self.conv2(h)) + h)
        return self.fc(nn.functional.avg_pool2d(h, 2).flatten(1))


class ResidualCat(nn.Module):
    """A residual add (inp and res are cut together), a cat along features, an unknown op."""

    def __init__(self, dynamic: bool = True):
        super().__init__()
        self.dynamic = dynamic
        self.inp = nn.Linear(64, 32)
        self.res = nn.Linear(32, 32)
        self.a, self.b = nn.Linear(32, 12), nn.Linear(32, 20)
        self.mix = nn.Linear(32, 16)
        self.odd = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        if self.dynamic and x.max() < 0:
            x = -x
        h = torch.relu(self.inp(x))
        h = h + self.res(h)                               # residual: inp and res are cut together
        h = torch.cat([torch.relu(self.a(h)), torch.relu(self.b(h))], dim=1)
        h = torch.relu(self.mix(h))
        return self.head(torch.cumsum(self.odd(h), dim=1))  # cumsum mixes odd's channels


class ConvView(nn.Module):
    """Reads sizes of an intermediate tensor (`h.view(h.size(0), -1)`): not dataflow, still prunable."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = torch.tanh(self.conv(x.reshape(-1, 1, 8, 8)))
        return self.fc(h.view(h.size(0), -1) * 2.0)


@pytest.mark.parametrize("build", [LeNet300100, LeNet5, lambda: ResidualCat(dynamic=False), ConvView,
                                   lambda: ResCNN(dynamic=False)],
                         ids=["lenet-300-100", "lenet5", "residual-cat", "conv-view", "resnet-block"])
def test_hooks_find_the_same_groups_as_fx(build):
    model = build()
    by_fx, fx_problems = trace_groups(model, X, tracer="fx")
    by_hooks, hook_problems = trace_groups(model, X, tracer="hooks")
    assert [(str(g), g.channels, g.activation) for g in by_hooks] == \
        [(str(g), g.channels, g.activation) for g in by_fx]
    assert set(hook_problems) == set(fx_problems)
    assert by_fx and {g.tracer for g in by_hooks} == {"hooks"} and {g.tracer for g in by_fx} == {"fx"}


def test_residual_add_gate_and_cat_couple_layers():
    groups, problems = trace_groups(ResidualCat(), X)
    assert [str(g) for g in groups] == ["inp[out] <-> res[in] <-> res[out] <-> a[in] <-> b[in]",
                                        "a[out] <-> mix[in]", "b[out] <-> mix[in @12]", "mix[out] <-> odd[in]"]
    assert groups[0].tracer == "hooks" and groups[0].producers() == ["inp", "res"]
    assert problems == {"odd": "reaches cumsum in model (ResidualCat), which the tracer cannot follow",
                        "head": "feeds the model output"}
    groups, _ = trace_groups(Gated(), X)
    assert [str(g) for g in groups] == ["gate[out] <-> up[out] <-> down[in]"]
    groups, _ = trace_groups(ResCNN(), X)
    assert [str(g) for g in groups] == ["conv1[out] <-> bn1[ch] <-> conv2[in] <-> bn2[ch] <-> conv2[out] <-> "
                                        "fc[in x16]"]


def _silence_and_plan(model, groups, every=3):
    """Zero the consumer columns of every `every`-th channel, so removing them changes nothing."""
    plan = []
    with torch.no_grad():
        for g in groups:
            dead = torch.arange(0, g.channels, every)
            for m in g.members:
                if m.role == "in":
                    cols = m.offset + (dead[:, None] * m.block + torch.arange(m.block)).reshape(-1)
                    model.get_submodule(m.module).weight[:, cols] = 0
            plan.append((g, torch.tensor([c for c in range(g.channels) if c % every])))
    return plan


@pytest.mark.parametrize("build", [Branchy, BranchyCNN, ResidualCat, Gated, ResCNN])
def test_cutting_hook_traced_groups_is_exact_and_reloads(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    x = X["x"]
    groups, _ = trace_groups(model, X)
    assert groups and all(g.tracer == "hooks" for g in groups)
    before = sum(p.numel() for p in model.parameters())
    plan = _silence_and_plan(model, groups)
    ref = model(x)
    prune_groups_(model, plan, check=same_output_shape(lambda m: m(x), model))
    assert sum(p.numel() for p in model.parameters()) < before
    assert torch.allclose(model(x), ref, atol=1e-5)
    sk.save(model, tmp_path / "m.slim")
    assert torch.equal(sk.load(tmp_path / "m.slim", model=build().eval())(x), model(x))


def test_cat_groups_cut_together_keep_the_right_columns():
    torch.manual_seed(0)
    model = ResidualCat().eval()
    _, a, b, _ = trace_groups(model, X)[0]
    mix = model.mix.weight.detach().clone()
    prune_groups_(model, [(a, torch.tensor([1, 5])), (b, torch.tensor([0, 19]))])
    assert (model.a.out_features, model.b.out_features, model.mix.in_features) == (2, 2, 4)
    assert torch.equal(model.mix.weight, mix[:, [1, 5, 12, 31]])


def test_prune_api_uses_hooks_when_fx_fails(digits_task):
    from slimkit.pruning.api import NormPruningConfig

    torch.manual_seed(0)
    model = sk.prune_(BranchyCNN(), NormPruningConfig(ratio=0.5, max_drop=100), digits_task)
    assert (model.conv1.out_channels, model.bn1.num_features, model.conv2.out_channels) == (4, 4, 3)
    assert model.fc.in_features == 3 * 16
    assert model(digits_task.example_inputs(2)["x"]).shape == (2, 10)


def test_a_cut_that_changes_the_output_shape_is_undone():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.rand(2, 4)
    ref, last = model(x), model[2]
    wrong = Group("2", 3, [Member("2", "out")])        # the tracer never offers this: it feeds the output
    with pytest.raises(SlimError, match=r"original kept: output shape changed from \[2, 3\] to \[2, 2\]"):
        prune_groups_(model, [(wrong, torch.tensor([0, 1]))], check=same_output_shape(lambda m: m(x), model))
    assert model[2] is last and torch.equal(model(x), ref)
    assert model.__dict__.get("slimkit_edits", []) == []


def test_a_layer_on_the_branch_not_taken_makes_the_group_unsafe():
    class TwoWays(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = nn.Linear(64, 8), nn.Linear(8, 3), nn.Linear(8, 3), nn.Linear(64, 5)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) if x.sum() > 0 else self.c(h)

    groups, problems = trace_groups(TwoWays(), X)
    assert groups == [] and problems["a"].startswith("c did not run on the example input but takes 8 inputs")


def test_values_used_for_control_flow_make_the_group_unprunable():
    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(64, 8), nn.Linear(8, 3)

        def forward(self, x):
            h = self.a(x)
            return self.b(h if h.sum() > 0 else -h)

    groups, problems = trace_groups(Gate(), X)
    assert groups == [] and problems["a"].startswith("reaches sum in model (Gate)")
    nodes, _ = hook_graph(Gate(), X)
    assert [n.target for n in nodes][:3] == ["x", "a", "sum"] and nodes[-1].op == "output"


def test_bert_ffn_groups_are_found_and_cut(tmp_path):
    from slimkit.pruning.api import NormPruningConfig
    from slimkit.pruning.structured import activation_scores

    pytest.importorskip("transformers")
    model, task = tiny_bert(), TokensTask()
    groups, problems = trace_groups(model, task.example_inputs(2))
    assert [str(g) for g in groups] == [f"encoder.layer.{i}.intermediate.dense[out] <-> "
                                        f"encoder.layer.{i}.output.dense[in]" for i in (0, 1)]
    assert "view in encoder.layer.0.attention.self" in problems["encoder.layer.0.attention.self.query"]
    scores = activation_scores(task, 16)(model, groups)     # channels are the last dim of (N, L, C)
    assert [s.shape for s in scores.values()] == [(64,), (64,)]
    x = task.example_inputs(8)
    with torch.no_grad():
        ref = model(**x).last_hidden_state
    sk.prune_(model, NormPruningConfig(ratio=1 / 16, max_drop=100), task)
    ffn = model.encoder.layer[1]
    assert ffn.intermediate.dense.out_features == 60 and ffn.output.dense.in_features == 60
    with torch.no_grad():
        out = model(**x).last_hidden_state
    assert nn.functional.cosine_similarity(out, ref, dim=-1).min() > 0.99
    sk.save(model, tmp_path / "b.slim")
    assert torch.equal(sk.load(tmp_path / "b.slim", model=tiny_bert())(**x).last_hidden_state, out)


def test_preflight_lists_hook_traced_groups(digits_task):
    from slimkit.pipeline.preflight import coupled_groups

    report = coupled_groups(BranchyCNN(), digits_task)
    assert report["error"] is None
    assert [g["text"] for g in report["groups"]] == ["conv1[out] <-> bn1[ch] <-> conv2[in]",
                                                     "conv2[out] <-> fc[in x16]"]
    assert report["unprunable"] == {"fc": "feeds the model output"}


def test_a_torch_layer_with_inner_layers_is_one_op():
    class WithEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.post = nn.Linear(64, 32), nn.Linear(32, 3)
            self.enc = nn.TransformerEncoderLayer(32, 4, 32, batch_first=True)

        def forward(self, x):
            if x.sum() > 0:
                x = x + 1
            return self.post(self.enc(self.inp(x).unsqueeze(1)).squeeze(1))

    _, modules = hook_graph(WithEncoder(), X)
    assert sorted(modules) == ["", "enc", "inp", "post"]      # enc.linear1 etc. ran inside enc
    assert trace_groups(WithEncoder(), X)[1]["inp"] == "reaches enc in model (WithEncoder), which the tracer " \
                                                       "cannot follow"
