"""Strings from files never reach the terminal raw (issue 22): control characters are escaped and
rich markup in a path or a layer name is printed as it is, never interpreted."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

import slimkit as sk
from cli_runner import cli
from slimkit.cli import common
from slimkit.core.text import clean

ESC = "\x1b"
HOSTILE = "a[/dim]\x1b[2J\x1b]0;pwned\x07b\u202e"   # markup, clear screen, window title, bidi override


def test_clean_escapes_control_and_bidi_characters():
    assert clean("fc1\x1b[31m") == "fc1\\x1b[31m"
    assert clean("a\nb\tc\rd") == "a\\nb\\tc\\rd"
    assert clean("x\x9by\u202ez\x00") == "x\\x9by\\u202ez\\x00"
    assert clean("plain [bold] text, ünïcode") == "plain [bold] text, ünïcode"
    assert len(clean("x" * 10_000)) == 2001


def test_a_one_line_error_escapes_what_came_from_the_user(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "eval", f"builtin:{HOSTILE}")
    assert code == 2
    assert ESC not in err and "\x07" not in err and "\u202e" not in err
    assert err.strip().splitlines()[-1].startswith("slimkit: error: unknown builtin model")
    assert "\\x1b[2J" in err and "[/dim]" in err


def test_fail_keeps_one_line_and_escapes(capsys):
    with pytest.raises(SystemExit) as exc:
        common.fail(f"bad value {HOSTILE}\nsecond line")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ESC not in err and "[/dim]" in err


def test_layer_names_with_escapes_and_markup_print_verbatim(monkeypatch, capsys, tmp_path):
    path = tmp_path / "ck.safetensors"
    save_file({f"fc{HOSTILE}.weight": torch.randn(8, 4), "b[bold]x.bias": torch.randn(8)}, str(path))
    code, out, err = cli(monkeypatch, capsys, "inspect", str(path), "--no-preflight")
    assert code == 0, err
    assert ESC not in out + err and "\u202e" not in out
    assert "b[bold]x" in out and "fca[/dim]\\x1b[2J" in out


def test_a_path_with_markup_does_not_crash_compress(monkeypatch, capsys, tmp_path, lenet_trained):
    recipe = tmp_path / "r[bold].yaml"
    recipe.write_text("models: [lenet5]\nstages:\n  - method: int8\n")
    (tmp_path / "o[").mkdir()                    # "[/dim]" spans a folder: o[ / dim]...
    out_path = tmp_path / "o[/dim]\x1b[2J.slim"
    code, out, err = cli(monkeypatch, capsys, "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                         "--out", str(out_path))
    assert code == 0, err
    assert out_path.is_file()
    assert ESC not in out + err
    assert "warning: recipe r[bold] was made for lenet5" in err
    assert "o[/dim]\\x1b[2J.slim" in out


def test_a_slim_file_named_with_markup_evaluates(monkeypatch, capsys, tmp_path, lenet):
    (tmp_path / "a[").mkdir()
    path = tmp_path / "a[/dim]b[red].slim"
    sk.save(lenet, path)
    code, out, err = cli(monkeypatch, capsys, "eval", str(path))
    assert code == 0, err
    assert "a[/dim]b[red].slim" in out


def test_a_usage_error_escapes_the_bad_value(monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "eval", "builtin:lenet-300-100", "--threads", f"x{ESC}[31m")
    assert code == 2 and ESC not in err


def test_slimkit_warnings_are_escaped(monkeypatch, capsys):
    monkeypatch.setattr("slimkit.cli.main.app", lambda **_: logging.getLogger("slimkit.x").warning(
        "layer %s skipped", HOSTILE))
    code, _, err = cli(monkeypatch, capsys, "eval", "x")
    assert code == 0 and "layer a[/dim]\\x1b[2J" in err and ESC not in err
