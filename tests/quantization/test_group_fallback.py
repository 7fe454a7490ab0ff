"""Group-wise methods on widths their group does not divide: the per-layer fallback
(`slimkit.quantization.groups`), said once per run, stored per layer, loaded back exactly, sized
exactly; and a recipe that cannot apply refused before any measurement."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import slimkit as sk
from slimkit.core.errors import ConfigError
from slimkit.core.task import Task
from slimkit.io.artifact import encode_model
from slimkit.io.sizing import Plan, estimate_stage
from slimkit.nn.quant_math import Granularity
from slimkit.pipeline.preflight import check_recipe, estimate_recipe
from slimkit.pipeline.recipes import Recipe
from slimkit.quantization.convert import quant_report
from slimkit.quantization.groups import MIN_GROUP, fit_group, layout


class _Odd(nn.Module):
    """Widths no usual group divides: a conv over 7 channels (63 = 7*3*3 inputs), then 96, 100, 37
    and 1000 inputs."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(7, 6, 3)
        self.fc0, self.fc1 = nn.Linear(96, 100), nn.Linear(100, 37)
        self.fc2, self.fc3 = nn.Linear(37, 1000), nn.Linear(1000, 10)

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(torch.relu(self.fc0(h)))))))


class _OddTask(Task):
    def example_inputs(self, batch_size):
        return {"x": torch.randn(batch_size, 7, 6, 6, generator=torch.Generator().manual_seed(1))}

    def score(self, model):
        return 0.0

    def calibration(self, n=256):
        gen = torch.Generator().manual_seed(0)
        return [{"x": torch.randn(16, 7, 6, 6, generator=gen)} for _ in range(2)]


# the group each layer gets, per group size asked for: the documented rule (docs/methods.md)
EXPECTED = {
    32: {"conv": "g21", "fc0": "g32", "fc1": "g25", "fc2": "per-channel", "fc3": "g25"},
    64: {"conv": "per-channel", "fc0": "g48", "fc1": "g50", "fc2": "per-channel", "fc3": "g50"},
    128: {"conv": "per-channel", "fc0": "per-channel", "fc1": "per-channel", "fc2": "per-channel", "fc3": "g125"},
}


def _group_of(module: nn.Module) -> str:
    return f"g{module.group_size}" if module.granularity.value == "group" else f"per-{module.granularity.value}"


def test_the_rule():
    assert fit_group(1536, 128) == 128                       # a Llama-style MLP width: as asked
    assert fit_group(1000, 128) == 125 and fit_group(300, 64) == 60
    assert fit_group(37, 32) == 37 and fit_group(64, 128) == 64   # per-channel
    assert fit_group(1000, 8) == 8 and fit_group(27, 8) == 27    # a small group asked for is its own floor
    assert fit_group(68, 64) == 34 and fit_group(68, 32) == 17
    assert all(fit_group(c, g) >= MIN_GROUP or fit_group(c, g) == c for c in range(1, 400) for g in (32, 64, 128))
    assert layout(1000, "channel", 128) == (Granularity.CHANNEL, 1000)
    assert layout(100, "group", 128) == (Granularity.CHANNEL, 100)
    assert layout(100, "group", 32) == (Granularity.GROUP, 25)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_odd_widths_compress_load_back_and_size_exactly(method, group, tmp_path, caplog):
    torch.manual_seed(group)
    task = _OddTask()
    options = {"samples": 32, "block_size": 32} if method == "gptq" else {}
    config = sk.make_config(method, bits=4, symmetric=False, group_size=group, **options)
    recipe = Recipe(f"{method}-g{group}", "", [config], [])
    estimate = estimate_recipe(_Odd(), recipe, task)
    plan = Plan.of(_Odd())
    estimate_stage(plan, config, task)
    check_recipe(_Odd(), recipe, task)                        # nothing to refuse

    model = _Odd()
    with caplog.at_level(logging.WARNING, logger="slimkit"):
        sk.run_recipe(model, recipe, task)
    assert {name: _group_of(getattr(model, name)) for name in EXPECTED[group]} == EXPECTED[group]
    said = [r.getMessage() for r in caplog.records if "does not fit" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f"{method}: group_size={group} does not fit")
    for name, got in EXPECTED[group].items():
        if got != f"g{group}":
            assert f"{got} for " in said[0] and name in said[0]
    report = quant_report(model)["quantized"]
    assert all(report[name].startswith(f"{method} w4") for name in EXPECTED[group])   # gptq: none left to rtn
    assert f"({EXPECTED[group]['fc3']}: groups of {group} do not divide 1000 inputs)" in report["fc3"]

    path = tmp_path / "odd.slim"
    sk.save(model, path)
    # the payload (codes, scales, zero points, biases) exactly; the header as `Plan` estimates it
    assert plan.payload() == sum(a.nbytes for a in encode_model(model)[0].values())
    assert estimate["error"] is None and abs(estimate["bytes"] - path.stat().st_size) <= 0.01 * path.stat().st_size
    loaded = sk.load(path, model=_Odd(), runtime="torch")   # bit-exact: no graph runner
    assert {name: _group_of(getattr(loaded, name)) for name in EXPECTED[group]} == EXPECTED[group]
    x = task.example_inputs(4)
    with torch.no_grad():
        assert torch.equal(model(**x), loaded(**x))


def test_embeddings_fall_back_too(tmp_path, caplog):
    model = nn.Sequential(nn.Embedding(50, 100), nn.Linear(100, 8))
    config = sk.make_config("rtn", bits=4, group_size=32, embedding_bits=4, embedding_group_size=64)
    plan = Plan.of(model)
    estimate_stage(plan, config, None)
    with caplog.at_level(logging.WARNING, logger="slimkit"):
        sk.quantize_(model, config, data=None)
    assert (model[0].group_size, model[1].group_size) == (50, 25)
    assert any("embedding_group_size=64 does not fit 1 layer(s)" in r.getMessage() for r in caplog.records)
    path = tmp_path / "emb.slim"
    sk.save(model, path)
    assert plan.payload() == sum(a.nbytes for a in encode_model(model)[0].values())
    ids = torch.randint(0, 50, (2, 5))
    loaded = sk.load(path, model=nn.Sequential(nn.Embedding(50, 100), nn.Linear(100, 8)), runtime="torch")
    with torch.no_grad():
        assert torch.equal(model(ids), loaded(ids))


def test_streaming_uses_the_same_rule():
    from slimkit.core.streaming import QuantSpec
    from slimkit.stream.checkpoint import Item
    from slimkit.stream.encode import affine_layout

    entry, how, _ = affine_layout(Item("fc3.weight", 0, "float32", (10, 1000), 0, 40_000), QuantSpec(4, group_size=128))
    assert entry.chain[0]["group_size"] == 125 and how.startswith("int4 g125")
    item = Item("fc2.weight", 0, "float32", (1000, 37), 0, 148_000)
    entry, how, _ = affine_layout(item, QuantSpec(4, group_size=32))
    assert entry.chain[0]["group_size"] == 37 and how.startswith("int4 per-row")


@pytest.mark.parametrize(("stage", "said"), [
    ("{method: rtn, bits: 4, group_size: 128, targets: fc9}", "recipe r, stage 1 (rtn): module selector 'fc9'"),
    ("{method: rtn, bits: 1, group_size: 32}", "bits=1 needs symmetric=False"),
    ("{method: nm, n: 2, m: 7}", "recipe r, stage 1 (nm): no selected layer has an input size divisible by 7"),
])
def test_a_recipe_that_cannot_apply_is_refused_before_measuring(monkeypatch, capsys, tmp_path, lenet_trained,
                                                                stage, said):
    """One line (exit 2), and the original is never measured (nor anything compressed or written)."""
    import slimkit.eval.measure as measure
    from cli_runner import cli

    measured = []
    monkeypatch.setattr(measure, "count_params", lambda *a: measured.append(a) or pytest.fail("measured"))
    recipe, out = tmp_path / "r.yaml", tmp_path / "x.slim"
    recipe.write_text(f"stages:\n  - {stage}\n")
    code, _, err = cli(monkeypatch, capsys, "-q", "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                       "--out", str(out))
    assert code == 2 and not measured and not out.exists()
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [ln for ln in lines if ln.startswith("slimkit: error:")] == [lines[-1]]
    assert said in lines[-1]


def test_gptq_without_data_is_refused_before_any_work(lenet):
    with pytest.raises(ConfigError, match=r"recipe int4, stage 1 \(gptq\): gptq needs calibration data"):
        check_recipe(lenet, sk.load_recipe("int4"), None)


def test_check_recipe_names_the_stage():
    model = nn.Sequential(nn.Linear(64, 8))
    with pytest.raises(ConfigError, match=r"recipe r, stage 2 \(rtn\): module selector 'fc9' matches no"):
        check_recipe(model, Recipe("r", "", [sk.make_config("int8"), sk.make_config("rtn", targets="fc9")], []))
    with pytest.raises(ConfigError, match="touches no layer"):
        check_recipe(model, Recipe("r", "", [sk.make_config("int8", linear=False)], []))
