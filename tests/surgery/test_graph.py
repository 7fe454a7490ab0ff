"""Graph capture (`slimkit.surgery.graph`): what is captured, what is refused, and hostile JSON."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import SlimFormatError
from slimkit.surgery import from_spec, to_spec
from slimkit.surgery.graph import capture, graph_module
from slimkit.surgery.graph_load import MAX_NODES


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.pool = nn.MaxPool1d(2)
        self.norm = nn.GroupNorm(2, 12)
        self.out = nn.Linear(12 * 3, 3)
        self.spare = nn.Linear(2, 2)          # never called: kept so the tensors still match
        self.register_buffer("shift", torch.full((3,), 0.25))

    def forward(self, x, scale: float = 2.0):
        y, (h, c) = self.lstm(x)
        y = self.norm(self.pool(y.transpose(1, 2)))
        y = y.reshape(y.shape[0], -1)
        y = y.masked_fill(y > 3.0, 3.0)
        z = self.out(y) * scale + self.shift
        return {"z": F.leaky_relu(z, 0.1).clamp(min=float("-inf")), "h": h[..., :2]}


def _roundtrip(model: nn.Module) -> nn.Module:
    data, why = capture(model)
    assert data is not None, why
    net = graph_module(json.loads(json.dumps(data)))
    net.load_state_dict(model.state_dict(), assign=True)
    return net.eval()


def test_captured_graph_computes_what_the_model_computes():
    torch.manual_seed(0)
    model = Gated().eval()
    x = torch.randn(2, 6, 4)
    net = _roundtrip(model)
    want, got = model(x, 3.0), net(x, 3.0)
    assert torch.equal(want["z"], got["z"]) and torch.equal(want["h"], got["h"])
    assert set(net.state_dict()) == set(model.state_dict())
    assert model.training is False and not any(m.training for m in model.modules())


def test_capture_restores_training_modes():
    model = Gated().train()
    model.pool.eval()
    capture(model)
    assert model.training and model.lstm.training and not model.pool.training
    assert not any(k.startswith("_tensor_constant") for k in model.__dict__)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else x


class CustomCall(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.special.expit(self.fc(x))


class ConstantTensor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.mask = torch.ones(4)               # a plain attribute: not saved with the model

    def forward(self, x):
        return self.fc(x) * self.mask


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2)

    def forward(self, x):
        return self.attn(x, x, x)[0]


@pytest.mark.parametrize(("model", "why"), [
    (DataDependent(), "torch.fx cannot trace DataDependent"),
    (CustomCall(), "special_expit, which is not in slimkit's list"),
    (ConstantTensor(), "mask, which is not saved with the model"),
    (Unknown(), "layer attn (MultiheadAttention) cannot be described"),
])
def test_uncapturable_models_say_why(model, why):
    data, reason = capture(model)
    assert data is None and why in reason and "\n" not in reason


@pytest.mark.parametrize("module", [
    nn.GRU(3, 5, 2, batch_first=True, dropout=0.1), nn.LSTM(3, 5, proj_size=2), nn.RNN(3, 4, nonlinearity="relu"),
    nn.Conv2d(2, 4, 3, padding_mode="reflect", padding=1), nn.GroupNorm(2, 4), nn.GELU("tanh"), nn.LeakyReLU(0.2),
    nn.MaxPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool1d(2, count_include_pad=False), nn.AdaptiveAvgPool2d((2, 3)),
    nn.Unflatten(1, (2, 3)), nn.PReLU(4), nn.Softmax(-1), nn.Dropout2d(0.3), nn.Hardtanh(-2.0, 2.0),
])
def test_common_layers_round_trip_through_specs(module):
    spec = json.loads(json.dumps(to_spec(module)))
    rebuilt = from_spec(spec)
    assert type(rebuilt) is type(module) and repr(rebuilt) == repr(module)
    assert to_spec(rebuilt) == spec


# --- hostile graphs ------------------------------------------------------------------------------

def _good() -> dict:
    data, _ = capture(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    return json.loads(json.dumps(data))


def _with_node(node: dict) -> dict:
    data = _good()
    data["nodes"].insert(-1, node)
    return data


def _refused(data: object, match: str) -> None:
    with pytest.raises(SlimFormatError, match=match) as info:
        graph_module(data)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("target", ["builtins.eval", "eval", "torch.load", "os.system", "torch.from_file",
                                    "torch.save", "builtins.__import__", "operator.attrgetter", "exec"])
def test_functions_outside_the_allowlist_are_refused(target):
    _refused(_with_node({"op": "call_function", "name": "bad", "target": target,
                         "args": ["import os; os.system('touch /tmp/pwned')"]}), "is not allowed")


@pytest.mark.parametrize("method", ["__reduce_ex__", "apply_", "numpy", "type", "register_hook", "storage",
                                    "tolist", "share_memory_", "_fix_weakref"])
def test_methods_outside_the_allowlist_are_refused(method):
    _refused(_with_node({"op": "call_method", "name": "bad", "target": method, "args": [{"node": "_0"}]}),
             "is not allowed")


@pytest.mark.parametrize(("node", "match"), [
    ({"op": "call_function", "name": "g", "target": "getattr", "args": [{"node": "_0"}, "__class__"]}, "getattr"),
    ({"op": "call_function", "name": "g", "target": "torch.relu", "kwargs": {"x=1); os.system('id'": 1}},
     "not an identifier"),
    ({"op": "call_function", "name": "g", "target": "torch.relu", "args": [{"node": "later"}]}, "not an earlier"),
    ({"op": "call_function", "name": "x; import os", "target": "torch.relu"}, "not a new identifier"),
    ({"op": "call_function", "name": "g", "target": "torch.relu", "args": [{"code": "1"}]}, "not a value"),
    ({"op": "call_function", "name": "g", "target": "torch.relu", "args": ["x" * 300]}, "longer than"),
    ({"op": "call_function", "name": "g", "target": "torch.relu", "args": [json.loads("[" * 40 + "]" * 40)]},
     "nest deeper"),
    ({"op": "call_module", "name": "m", "target": "nosuch"}, "names no module"),
    ({"op": "get_attr", "name": "a", "target": "0"}, "names no tensor"),
    ({"op": "placeholder", "name": "p", "target": "self"}, "input name"),
    ({"op": "placeholder", "name": "p", "target": "a=os.system('id')"}, "input name"),
    ({"op": "output", "name": "out2", "args": [None]}, "only it, must be the output"),
])
def test_malformed_nodes_are_refused(node, match):
    _refused(_with_node(node), match)


@pytest.mark.parametrize(("path", "match"), [
    ('0"); import os; os.system("id"); ("', "invalid module or tensor path"),
    ("__class__", "invalid module or tensor path"),
    ("forward", "invalid module or tensor path"),
    ("0.weight.x", "lies inside a layer"),
])
def test_module_paths_are_checked(path, match):
    data = _good()
    data["modules"][path] = {"type": "ReLU"}
    _refused(data, match)


def test_huge_graphs_and_bad_tables_are_refused():
    data = _good()
    data["nodes"] = [{"op": "placeholder", "name": f"p{i}", "target": f"p{i}"} for i in range(MAX_NODES + 1)]
    _refused(data, "'nodes' must be a list of 1 to")
    bad = copy.deepcopy(_good())
    bad["tensors"]["t"] = {"shape": [2**40] * 3, "dtype": "float32", "param": True}
    _refused(bad, "invalid shape")
    bad["tensors"]["t"] = {"shape": [2], "dtype": "object", "param": True}
    _refused(bad, "invalid dtype")
    _refused({**_good(), "v": 2}, "version")
    _refused({**_good(), "eval": "x"}, "must be an object")
    _refused([], "must be an object")
    bad = _good()
    bad["modules"]["0"] = {"type": "GRU", "input": 2, "hidden": 2, "layers": 10**9, "bias": True,
                           "batch_first": True, "dropout": 0.0, "bidirectional": False}
    _refused(bad, "layers")


def test_a_sequential_child_name_cannot_smuggle_code_into_forward():
    evil = 'a"); __import__("os"); ("'
    data = _good()
    data["modules"]["s"] = {"type": "Sequential", "children": {evil: {"type": "Linear", "in": 4, "out": 4,
                                                                      "bias": True}}}
    data["nodes"].insert(-1, {"op": "get_attr", "name": "w", "target": f"s.{evil}.weight"})
    _refused(data, "invalid module or tensor path")


class _Code:
    def __init__(self, src: str, glob: dict | None = None):
        self.src, self.globals = src, {"torch": torch, **(glob or {})}


@pytest.mark.parametrize("body", [
    "import os\n    return x",
    "y = os.system('id')\n    return y",
    "y = torch.load('x')\n    return y",
    "y = x.__class__\n    return y",
    "y = x.numpy()\n    return y",
    "y = getattr(x, '__globals__')\n    return y",
    "y = (lambda: 0)()\n    return y",
    "y = self.fc.__dict__\n    return y",
    "y = eval('1')\n    return y",
    "for i in x: pass\n    return x",
    "y = [i for i in x]\n    return y",
    "y = torch.nn.functional\n    return y",
])
def test_the_generated_forward_is_audited(body):
    from slimkit.surgery.graph_audit import audit

    audit(_Code("def forward(self, x):\n    y = torch.relu(x)\n    return y"))
    with pytest.raises(SlimFormatError, match="the generated forward"):
        audit(_Code(f"def forward(self, x):\n    {body}"))
