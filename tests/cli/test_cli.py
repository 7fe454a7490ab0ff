"""The CLI through its real entry point (`slimkit.cli.main.run`), in process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import slimkit as sk
from cli_runner import cli

EVAL_KEYS = {"bytes", "baseline_bytes", "ratio", "score", "latency_ms"}


def assert_one_line_error(err: str, message: str) -> None:
    """Progress lines may precede it; the error itself is the one last line, no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert [ln for ln in lines if ln.startswith("slimkit: error:")] == [lines[-1]]
    assert message in lines[-1]


def test_eval_builtin_json(monkeypatch, capsys, lenet_trained):
    code, out, _ = cli(monkeypatch, capsys, "--quiet", "eval", "builtin:lenet-300-100", "--json")
    assert code == 0
    row = json.loads(out.strip().splitlines()[-1])
    assert EVAL_KEYS <= set(row) and row["score"] >= 0.97 and 0.99 < row["ratio"] < 1.01


def test_eval_slim_file_uses_the_file_size(monkeypatch, capsys, lenet, tmp_path):
    path = tmp_path / "m.slim"
    sk.save(lenet, path)
    code, out, _ = cli(monkeypatch, capsys, "-q", "eval", str(path), "--json")
    assert code == 0
    assert json.loads(out.strip().splitlines()[-1])["bytes"] == path.stat().st_size


@pytest.mark.parametrize("args, message", [
    (["eval", "builtin:nope"], "unknown builtin model 'nope'"),
    (["eval", "/no/such/file.slim"], "no such model or file"),
    (["inspect", "weights.pt"], None),
    (["compress", "builtin:lenet-300-100", "--recipe", "nope", "--out", "x.slim"], "unknown recipe 'nope'"),
])
def test_user_errors_are_one_line_with_exit_code_2(monkeypatch, capsys, tmp_path, args, message):
    monkeypatch.chdir(tmp_path)
    if args[-1] == "weights.pt":
        (tmp_path / "weights.pt").write_bytes(b"\x80\x04junk")
        message = "pickled checkpoints"
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2
    assert_one_line_error(err, message)


def test_garbage_slim_file_is_refused(monkeypatch, capsys, tmp_path):
    path = tmp_path / "junk.slim"
    path.write_bytes(b"\x00" * 100)
    code, _, err = cli(monkeypatch, capsys, "eval", str(path))
    assert code == 2
    assert_one_line_error(err, "header length")


def test_compress_refuses_to_overwrite(monkeypatch, capsys, tmp_path):
    out = tmp_path / "exists.slim"
    out.write_bytes(b"precious")
    code, _, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", "int8",
                       "--out", str(out))
    assert code == 2 and "already exists" in err
    assert out.read_bytes() == b"precious"


def test_inspect_table_lists_layers(monkeypatch, capsys, lenet_trained):
    code, out, _ = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--json")
    assert code == 0
    layers = json.loads(out.strip().splitlines()[-1])["layers"]
    assert [r["name"] for r in layers] == ["fc1", "fc2", "fc3"]
    assert sum(r["params"] for r in layers) == 50610


def test_console_script_is_installed():
    exe = __import__("shutil").which("slimkit") or str(__import__("pathlib").Path(sys.executable).parent / "slimkit")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for cmd in ("demo", "compress", "eval", "inspect", "recipes"):
        assert cmd in proc.stdout


def test_inspect_apoz_and_plots(monkeypatch, capsys, lenet_trained, tmp_path):
    code, out, _ = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--apoz",
                       "--plot", str(tmp_path / "plots"), "--json")
    assert code == 0
    apoz = json.loads(out.strip().splitlines()[-1])["apoz"]
    assert [r["layer"] for r in apoz] == ["fc1", "fc2"]
    assert all(0.0 <= r["apoz_mean"] <= 1.0 and len(r["apoz"]) == r["channels"] for r in apoz)
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["apoz.png", "hist-fc1_weight.png", "hist-fc2_weight.png", "hist-fc3_weight.png"]
    assert all((tmp_path / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_recipe_for_another_model_warns_and_fails_cleanly(monkeypatch, capsys, tmp_path, lenet5_trained):
    out = tmp_path / "x.slim"
    code, _, err = cli(monkeypatch, capsys, "-q", "compress", "builtin:lenet5", "--recipe", "distill-l3",
                       "--out", str(out))
    assert code == 2
    assert "recipe distill-l3 was made for minilm, not lenet5" in err
    assert_one_line_error(err, "recipe distill-l3, stage 1 (distill): LeNet5 has no list of layers to keep from")
    assert not out.exists()


def test_missing_option_is_a_usage_error_with_exit_code_2(monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100")
    assert code == 2
    assert "Missing option '--recipe'" in err and "internal error" not in err and "Traceback" not in err
