"""Issue 20, part 4: the CLI takes your model and data as `file.py:NAME` references.

A model file and a data file are written into tmp_path as a user would write them (a small MLP
trained on the digits inside its factory; a DataLoader and an accuracy metric). `compress`,
`eval`, `inspect` and `export --onnx` run on the references through the real CLI entry point; the
.slim then loads in a fresh process after the model file is deleted, with the outputs of the
user's own architecture (<= 1e-5, runtime="torch"). Bad references are one line and exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from cli_runner import cli

MODEL = '''
import torch
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def build():
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data[:1200] / 16, dtype=torch.float32)
    y = torch.tensor(digits.target[:1200])
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def not_a_model():
    return {"fc1": 1}


def broken():
    raise ValueError("my factory is broken")
'''

DATA = '''
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

digits = load_digits()
x = torch.tensor(digits.data / 16, dtype=torch.float32)
y = torch.tensor(digits.target)


def accuracy(model):
    with torch.no_grad():
        return (model(x[1200:]).argmax(1) == y[1200:]).float().mean().item()


def data():
    return DataLoader(TensorDataset(x[:1200], y[:1200]), batch_size=100), accuracy


def failing_metric():
    def metric(model):
        raise RuntimeError("metric exploded")
    return data()[0], metric
'''

FRESH = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file
    import slimkit as sk
    model = sk.load(sys.argv[1], runtime="torch")
    x = load_file(sys.argv[2])["x"]
    with torch.no_grad():
        out = model(x)
    print(json.dumps({"type": type(model).__name__, "out": out.tolist()}))
""")


@pytest.fixture()
def refs(tmp_path):
    (tmp_path / "model.py").write_text(MODEL)
    (tmp_path / "data.py").write_text(DATA)
    return f"{tmp_path / 'model.py'}:build", f"{tmp_path / 'data.py'}:data"


def _user_architecture(path):
    spec = importlib.util.spec_from_file_location("test_user_ref_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net()


def test_compress_eval_inspect_export_a_model_of_your_own(monkeypatch, capsys, tmp_path, refs):
    model, data = refs
    out = tmp_path / "x.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", model, "--data", data, "--recipe", "int8",
                            "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["score_name"] == "accuracy" and result["within_budget"] and result["baseline_score"] > 0.85
    assert result["bytes"] == out.stat().st_size and result["ratio"] > 2.5
    assert sk.read_manifest(out).base["kind"] == "graph"

    code, stdout, err = cli(monkeypatch, capsys, "eval", model, "--data", data, "--json")
    assert code == 0, err
    row = json.loads(stdout.strip().splitlines()[-1])
    assert row["score"] == pytest.approx(result["baseline_score"]) and row["ratio"] == pytest.approx(1.0, abs=0.05)
    code, stdout, err = cli(monkeypatch, capsys, "eval", str(out), "--data", data, "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["score"] == pytest.approx(result["score"])

    code, stdout, err = cli(monkeypatch, capsys, "inspect", model, "--data", data, "--recipe", "int8", "--json")
    assert code == 0, err
    report = json.loads(stdout.strip().splitlines()[-1])
    assert [r["name"] for r in report["layers"]] == ["fc1", "fc2"]
    assert report["preflight"]["recipes"][0]["recipe"] == "int8"

    onnx = tmp_path / "x.onnx"
    code, stdout, err = cli(monkeypatch, capsys, "export", model, "--data", data, "--onnx", str(onnx), "--json")
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["max_abs_diff"] < 1e-4 and onnx.is_file()

    # the .slim loads in a fresh process that never saw the class, the model file deleted
    x = torch.rand(16, 64)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    reference = sk.load(out, model=_user_architecture(tmp_path / "model.py"), runtime="torch")
    with torch.no_grad():
        expected = reference(x)
    (tmp_path / "model.py").unlink()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLIMKIT_RUNTIME")}
    run = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "x.safetensors")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    assert fresh["type"] == "GraphModule"
    assert (torch.tensor(fresh["out"]) - expected).abs().max().item() <= 1e-5


def test_over_budget_exits_3_and_a_model_without_data_is_refused(monkeypatch, capsys, tmp_path, refs):
    model, data = refs
    lossy = tmp_path / "lossy.yaml"
    lossy.write_text("stages:\n  - method: lowrank\n    rank: 1\n    mode: svd\n")
    code, stdout, err = cli(monkeypatch, capsys, "compress", model, "--data", data, "--recipe", str(lossy),
                            "--out", str(tmp_path / "lossy.slim"), "--json")
    assert code == 3, err
    assert not json.loads(stdout.strip().splitlines()[-1])["within_budget"]
    assert sum(line.startswith("warning: ") for line in err.splitlines()) == 1

    for args in (("compress", model, "--recipe", "int8", "--out", str(tmp_path / "y.slim")),
                 ("export", model, "--onnx", str(tmp_path / "y.onnx"))):
        code, _, err = cli(monkeypatch, capsys, "-q", *args)
        assert code == 2 and err.count("\n") == 1 and "needs --data" in err, err
    code, _, err = cli(monkeypatch, capsys, "compress", model, "--data", data, "--recipe", "int8",
                       "--out", str(tmp_path / "model.py"), "--force")
    assert code == 2 and "is an input" in err, err


@pytest.mark.parametrize(("ref", "data_ref", "expected"), [
    ("{d}/missing.py:build", None, "no such file"),
    ("{d}/notes.txt:build", None, "not a Python file"),
    ("{d}/model.py:nothing", None, "has no 'nothing' (it defines: Net, broken, build, not_a_model)"),
    ("{d}/model.py:not_a_model", None, "returned a dict, not a torch nn.Module"),
    ("{d}/model.py:broken", None, "your code raised ValueError: my factory is broken"),
    ("no_such_package.models:build", None, "no module named 'no_such_package'"),
    ("{d}/model.py:Net", "{d}/data.py:nothing", "--data {d}/data.py:nothing"),
    ("{d}/model.py:Net", "{d}/data.py:accuracy", "your code raised TypeError"),
    ("{d}/model.py:Net", "{d}/data.py:failing_metric", "your metric raised RuntimeError: metric exploded"),
])
def test_a_bad_reference_is_one_line_exit_2(monkeypatch, capsys, tmp_path, refs, ref, data_ref, expected):
    (tmp_path / "notes.txt").write_text("not python")
    args = ["-q", "eval", ref.format(d=tmp_path)] + (["--data", data_ref.format(d=tmp_path)] if data_ref else [])
    code, _, err = cli(monkeypatch, capsys, *args)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("slimkit: error: ") and "Traceback" not in err, err
    assert expected.format(d=tmp_path) in err, err


def test_help_says_it_runs_your_code(monkeypatch, capsys):
    for command in ("compress", "eval", "export", "search", "inspect"):
        code, stdout, _ = cli(monkeypatch, capsys, command, "--help")
        assert code == 0 and "runs that Python code" in " ".join(stdout.split()), command


def test_search_a_model_of_your_own_writes_best_slim(monkeypatch, capsys, tmp_path, refs):
    model, data = refs
    code, _, err = cli(monkeypatch, capsys, "-q", "search", model, "--max-drop", "1", "--out", str(tmp_path / "s"))
    assert code == 2 and err.count("\n") == 1 and "searching a model of your own needs --data" in err, err

    code, stdout, err = cli(monkeypatch, capsys, "search", model, "--data", data, "--max-drop", "1", "--budget",
                            "3m", "--trials", "2", "--method", "int8", "--out", str(tmp_path / "s"), "--json")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["best"]["ratio"] > 2.5 and (tmp_path / "s" / "best.slim").is_file()

    # each front candidate's reproduce line names your model and data as you did, and it runs
    front = json.loads((tmp_path / "s" / "pareto.json").read_text())["front"]
    commands = [p["command"] for p in front]
    assert commands and all(c.startswith(f"slimkit compress {model} --data {data} --recipe ") for c in commands)
    args = shlex.split(commands[0])[1:]
    code, _, err = cli(monkeypatch, capsys, "-q", *args)
    assert code == 0, err
    assert Path(args[args.index("--out") + 1]).is_file()


@pytest.mark.parametrize("with_data", [False, True])
def test_stream_with_a_model_of_your_own_is_refused_not_ignored(monkeypatch, capsys, tmp_path, refs, with_data):
    model, data = refs
    target = model if not with_data else "builtin:lenet-300-100"
    out = tmp_path / "s.slim"
    code, _, err = cli(monkeypatch, capsys, "-q", "compress", target, "--data", data, "--recipe", "int8",
                       "--out", str(out), "--stream")
    assert code == 2 and err.count("\n") == 1 and "--stream" in err and "drop" in err, err
    assert not out.exists()


def test_python_warnings_print_as_one_clean_line(monkeypatch, capsys):
    import warnings

    from slimkit.cli import main

    monkeypatch.setattr(main, "_run", lambda: warnings.warn("layer \x1b[31mfc1\nlost  points", UserWarning,
                                                            stacklevel=1))
    main.run()
    err = capsys.readouterr().err
    assert err == "warning: layer \\x1b[31mfc1 lost points\n"
