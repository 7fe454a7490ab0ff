"""Adding a method is one file plus its registration: `tests/toy_method.py` registers `toy-half`
(float16 weights) and nothing else in slimkit changes, yet `slimkit compress`, `slimkit inspect` and
`slimkit search` all use it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

import slimkit as sk
from cli_runner import cli
from slimkit.core.methods import METHODS
from slimkit.io.sizing import ESTIMATORS

TOY = Path(__file__).with_name("toy_method.py")


@pytest.fixture()
def toy():
    """Load the toy method's file (registering it), and unregister it afterwards."""
    assert "toy-half" not in sk.methods()
    spec = importlib.util.spec_from_file_location("toy_method_under_test", TOY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        METHODS.pop("toy-half", None)
        ESTIMATORS.pop("toy-half", None)


@pytest.fixture()
def recipe(tmp_path) -> Path:
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump({"description": "float16 weights", "stages": [{"method": "toy-half"}]}))
    return path


def test_registered_by_name_with_its_family(toy):
    assert sk.methods()["toy-half"] is toy.HalfWeightsConfig
    assert "toy-half" in sk.methods(sk.Family.QUANTIZE)
    assert sk.make_config("toy-half", keep_last=True).keep_last is True


def test_compress_writes_a_smaller_file_that_loads_to_the_same_outputs(toy, recipe, tmp_path, monkeypatch, capsys,
                                                                       lenet_trained):
    out = tmp_path / "m.slim"
    code, stdout, err = cli(monkeypatch, capsys, "-q", "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                            "--out", str(out), "--json")
    assert code == 0, err
    row = json.loads(stdout.strip().splitlines()[-1])
    assert row["bytes"] == out.stat().st_size
    assert 1.9 < row["ratio"] < 2.0                       # float16 weights, float32 biases
    assert row["score"] >= row.get("baseline_score", 0.97) - 0.005
    loaded = sk.load(out)
    x = torch.randn(8, 64)
    expected = toy.HalfWeightsConfig().apply(sk.zoo.load("lenet-300-100"), None, None)
    assert torch.equal(loaded(x), expected(x))


def test_inspect_estimates_its_size_exactly(toy, recipe, tmp_path, monkeypatch, capsys, lenet_trained):
    code, stdout, err = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--recipe", str(recipe),
                            "--json")
    assert code == 0, err
    rows = json.loads(stdout.strip().splitlines()[-1])["preflight"]["recipes"]
    [row] = rows                                          # only the recipe asked for
    assert row["error"] is None and row["exact"] is True
    assert row["stages"][0]["touched"] == {"fc1": "float16 weights", "fc2": "float16 weights",
                                           "fc3": "float16 weights"}
    model = sk.zoo.load("lenet-300-100")
    sk.apply_(model, sk.make_config("toy-half"))
    sk.save(model, tmp_path / "real.slim")
    assert abs(row["bytes"] - (tmp_path / "real.slim").stat().st_size) <= 64


def test_search_over_the_toy_method_alone(toy, tmp_path, monkeypatch, capsys, lenet_trained, quick_folds):
    out = tmp_path / "search"
    code, stdout, err = cli(monkeypatch, capsys, "-q", "search", "builtin:lenet-300-100", "--method", "toy-half",
                            "--max-drop", "1", "--trials", "2", "--folds", "2", "--repeats", "1", "--out", str(out),
                            "--budget", "10m", "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["candidates"] == 2 and summary["best"] is not None
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert [stage["method"] for stage in best["stages"]] == ["toy-half"]
    state = json.loads((out / "search.json").read_text())
    assert state["space"] == "registered" and state["methods"] == ["toy-half"]
    assert all(t["params"] and set(t["params"]) == {"toy-half.keep_last"} for t in state["trials"])


def test_search_refuses_a_method_without_a_search_entry(toy, tmp_path, monkeypatch, capsys, lenet_trained):
    code, _, err = cli(monkeypatch, capsys, "-q", "search", "builtin:lenet-300-100", "--method", "recover",
                       "--max-drop", "1", "--trials", "1", "--out", str(tmp_path / "s"))
    assert code == 2
    assert "method 'recover' has no search entry" in err.strip().splitlines()[-1]


def test_installed_plugins_register_through_entry_points(monkeypatch):
    """A package declaring `[project.entry-points."slimkit.plugins"]` gets its module imported by
    `import slimkit` (so the CLI sees its methods); a broken one is a warning, not a crash."""
    from importlib.metadata import EntryPoint

    import slimkit

    good = EntryPoint("toy", "toy_method", slimkit.PLUGIN_GROUP)    # tests/ is on sys.path
    broken = EntryPoint("broken", "no_such_module_anywhere", slimkit.PLUGIN_GROUP)
    monkeypatch.setattr(slimkit, "entry_points", lambda group: [good, broken] if group == slimkit.PLUGIN_GROUP else [])
    monkeypatch.delitem(__import__("sys").modules, "toy_method", raising=False)
    try:
        with pytest.warns(UserWarning, match="slimkit plugin 'broken'"):
            assert slimkit.load_plugins() == ["toy"]
        assert "toy-half" in sk.methods()
    finally:
        METHODS.pop("toy-half", None)
        ESTIMATORS.pop("toy-half", None)
