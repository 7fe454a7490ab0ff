"""Issue 20's target matrix through the CLI: three models slimkit has never seen (tests/user_models.py:
a residual CNN with BatchNorm, an MLP with LayerNorm, a 1-D conv + GRU) x int8, magnitude pruning,
a structured prune, k-means, low-rank, distillation into a smaller student and one combined recipe,
each run as `slimkit compress file.py:NAME --data file.py:NAME --recipe R.yaml`, as a user would
write them.

Every run either ends within max_drop (exit 0), says it did not (exit 3, one warning line,
`within_budget` false in the JSON), or is refused in one line (exit 2). Every file written loads
in a fresh process that never imported the model's class, with the outputs of the same file loaded
into the user's own class (max abs diff <= 1e-5).

The whole matrix is slow (`make bench`); the distillation row of the MLP runs in the fast suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from cli_runner import cli
from user_models import ARCHITECTURES

TESTS = Path(__file__).resolve().parents[1]

WRAP = f'''
import sys
sys.path.insert(0, {str(TESTS)!r})
from user_models import accuracy, loader, trained


def cnn():
    return trained("cnn")


def mlp():
    return trained("mlp")


def gru():
    return trained("gru")


def data():
    return loader(), accuracy
'''

RECIPES = {
    "int8": "int8",
    "magnitude": "stages:\n  - method: magnitude\n    sparsity: 0.7\n    scope: global\n",
    "structured": "stages:\n  - method: weight-norm\n    ratio: 0.3\n    epochs: 3\n",
    "kmeans": "stages:\n  - method: kmeans\n    bits: 4\n    finetune_epochs: 2\n",
    "lowrank": "stages:\n  - method: lowrank\n    budget: 0.5\n    finetune_epochs: 3\n",
    "distill": "stages:\n  - method: distill\n    student: {prune: 0.5}\n    epochs: 5\n",
    "combined": "stages:\n  - method: magnitude\n    sparsity: 0.6\n    scope: global\n"
                "  - method: kmeans\n    bits: 5\n",
}

FRESH = textwrap.dedent("""
    import json, sys
    import torch
    from safetensors.torch import load_file
    import slimkit as sk
    model = sk.load(sys.argv[1], runtime="torch")
    x = load_file(sys.argv[2])["x"]
    with torch.no_grad():
        out = model(x)
    print(json.dumps({"type": type(model).__name__, "out": out.tolist(),
                      "user_class_seen": "user_models" in sys.modules}))
""")


def run_case(monkeypatch, capsys, tmp_path: Path, kind: str, name: str) -> None:
    wrap = tmp_path / "wrap.py"
    wrap.write_text(WRAP)
    recipe = RECIPES[name]
    if "\n" in recipe:
        (tmp_path / f"{name}.yaml").write_text(recipe)
        recipe = str(tmp_path / f"{name}.yaml")
    out = tmp_path / f"{kind}-{name}.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", f"{wrap}:{kind}", "--data", f"{wrap}:data",
                            "--recipe", recipe, "--out", str(out), "--json")
    lines = err.splitlines()
    assert "Traceback" not in err and not any(line.startswith(" ") for line in lines), err   # no source lines
    if code == 2:   # refused: one line (after any progress lines), nothing written
        assert [line.startswith("slimkit: error: ") for line in lines].count(True) == 1, err
        assert lines[-1].startswith("slimkit: error: ") and not out.exists()
        return
    assert code in (0, 3), err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["within_budget"] == (code == 0) == (result["drop"] <= result["max_drop"])
    assert sum(line.startswith("warning: the result lost") for line in err.splitlines()) == (code == 3)
    assert result["bytes"] == out.stat().st_size and result["ratio"] > 1.0

    x = torch.rand(16, 64)
    save_file({"x": x}, str(tmp_path / "x.safetensors"))
    reference = sk.load(out, model=ARCHITECTURES[kind](), runtime="torch")
    with torch.no_grad():
        expected = reference(x)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLIMKIT_RUNTIME")}
    env["PYTHONPATH"] = str(Path(sk.__file__).resolve().parents[1])   # slimkit itself, not the tests
    fresh = subprocess.run([sys.executable, "-c", FRESH, str(out), str(tmp_path / "x.safetensors")],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    loaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert loaded["type"] == "GraphModule" and not loaded["user_class_seen"]
    assert (torch.tensor(loaded["out"]) - expected).abs().max().item() <= 1e-5


def test_distillation_of_your_own_model_on_the_command_line(monkeypatch, capsys, tmp_path):
    """--data reaches the distill stage's student builder (it was refused as 'not a zoo model')."""
    run_case(monkeypatch, capsys, tmp_path, "mlp", "distill")
    assert (tmp_path / "mlp-distill.slim").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("kind", list(ARCHITECTURES))
def test_matrix_on_the_command_line(monkeypatch, capsys, tmp_path, kind, name):
    run_case(monkeypatch, capsys, tmp_path, kind, name)
