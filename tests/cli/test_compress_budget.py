"""`slimkit compress`: a result over max_drop warns and exits with 3; a recipe that touches nothing
is an error (never a 1.0x file); a pickled state dict is compressed like a bare checkpoint; inspect
and compress agree on what a recipe touches."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file
from torch import nn

import slimkit as sk
from cli_runner import cli

LOSSY = "stages:\n  - method: lowrank\n    rank: 2\n    mode: svd\n"


def test_a_result_over_max_drop_warns_and_exits_3(monkeypatch, capsys, tmp_path):
    recipe = tmp_path / "lossy.yaml"
    recipe.write_text(LOSSY)
    out = tmp_path / "lossy.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                            "--out", str(out), "--json")
    assert code == 3, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert not result["within_budget"] and result["drop"] > result["max_drop"] == 1.0
    assert result["bytes"] == out.stat().st_size and result["ratio"] > 10
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "more than max_drop 1" in warning[0]

    code, _, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                       "--out", str(out), "--force", "--max-drop", "100")
    assert code == 0 and "warning" not in err
    recipe.write_text(LOSSY + "max_drop: 100\n")
    code, _, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                       "--out", str(out), "--force")
    assert code == 0, err


def _checkpoint(tmp_path, small: bool = False) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)) if small else \
        nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.LayerNorm(128), nn.Linear(128, 10))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    torch.save(state, tmp_path / "model.pt")
    return state


def test_a_pickled_state_dict_is_compressed_tensor_by_tensor(monkeypatch, capsys, tmp_path):
    _checkpoint(tmp_path)
    out = tmp_path / "pt.slim"
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "model.pt"), "--trust-pickle",
                            "--recipe", "int8", "--out", str(out), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stored"] == {"copied": 4, "int8 per-row": 2} and result["ratio"] > 2.5
    assert result["bytes"] == out.stat().st_size
    assert sk.read_manifest(out).info["source"] == str(tmp_path / "model.pt")


def test_a_recipe_that_touches_nothing_is_an_error(monkeypatch, capsys, tmp_path):
    _checkpoint(tmp_path, small=True)          # 32 weights: under the size a bare checkpoint compresses
    for source in ("model.safetensors", "model.pt"):
        out = tmp_path / "none.slim"
        code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / source), "--trust-pickle",
                           "--recipe", "int8", "--out", str(out))
        assert code == 2 and "touches no tensor" in err and not out.exists(), err


def test_inspect_and_compress_agree_on_a_bare_checkpoint(monkeypatch, capsys, tmp_path):
    _checkpoint(tmp_path)
    code, stdout, err = cli(monkeypatch, capsys, "inspect", str(tmp_path / "model.safetensors"), "--json",
                            "--recipe", "int8", "--recipe", "prune-magnitude")
    assert code == 0, err
    rows = {r["recipe"]: r for r in json.loads(stdout.strip().splitlines()[-1])["preflight"]["recipes"]}
    assert rows["int8"]["stages"][0]["basis"] == "2 of 6 tensors: int8 per-row"
    assert "fine-tunes" in rows["prune-magnitude"]["error"]
    code, stdout, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "model.safetensors"), "--recipe", "int8",
                            "--out", str(tmp_path / "st.slim"), "--json")
    assert code == 0, err
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["stored"]["int8 per-row"] == 2
    assert abs(result["bytes"] - rows["int8"]["bytes"]) < 0.05 * result["bytes"]
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "model.safetensors"), "--recipe",
                       "prune-magnitude", "--out", str(tmp_path / "pm.slim"))
    assert code == 2 and "fine-tunes" in err
