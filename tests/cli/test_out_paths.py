"""`--out` is checked before any work (issue 22): a folder, a missing folder, an input or the recipe
file, an existing file without --force are one-line errors with exit code 2, and nothing is loaded."""

from __future__ import annotations

import pytest

from cli_runner import cli
from slimkit.cli import compress


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if compress gets as far as loading the model."""
    def boom(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(compress, "resolve", boom)
    monkeypatch.setattr(compress, "route", boom)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("slimkit: error:"), err
    return lines[0]


def test_out_is_checked_before_any_work(monkeypatch, capsys, tmp_path, no_work):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nstages:\n  - method: int8\n")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"model bytes")
    (tmp_path / "exists.slim").write_bytes(b"keep")
    cases = [(tmp_path, "is a folder"), (tmp_path / "no" / "x.slim", "does not exist"),
             (recipe, "is an input"), (model, "is an input"), (tmp_path / "exists.slim", "already exists")]
    for out, message in cases:
        code, _, err = cli(monkeypatch, capsys, "compress", str(model), "--recipe", str(recipe), "--out", str(out))
        assert code == 2 and message in one_line(err), (out, err)
    code, _, err = cli(monkeypatch, capsys, "compress", str(model), "--recipe", str(recipe), "--out", str(recipe),
                       "--force")
    assert code == 2 and "is an input" in one_line(err)
    assert recipe.read_text().startswith("name: r") and model.read_bytes() == b"model bytes"


def test_out_through_a_symlink_to_the_input_is_refused(monkeypatch, capsys, tmp_path, no_work):
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"model bytes")
    (tmp_path / "link.slim").symlink_to(model)
    code, _, err = cli(monkeypatch, capsys, "compress", str(model), "--recipe", "int8", "--out",
                       str(tmp_path / "link.slim"), "--force")
    assert code == 2 and "is an input" in one_line(err)


def test_a_file_of_the_input_folder_is_refused(monkeypatch, capsys, tmp_path, no_work):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    code, _, err = cli(monkeypatch, capsys, "compress", str(tmp_path / "hf"), "--recipe", "int8", "--out",
                       str(tmp_path / "hf" / "config.json"), "--force")
    assert code == 2 and "input folder" in one_line(err)


def test_search_and_plot_folders_are_checked_first(monkeypatch, capsys, tmp_path):
    (tmp_path / "file").write_bytes(b"")
    code, _, err = cli(monkeypatch, capsys, "search", "builtin:lenet-300-100", "--max-drop", "1",
                       "--out", str(tmp_path / "file"))
    assert code == 2 and "is a file" in one_line(err)
    code, _, err = cli(monkeypatch, capsys, "inspect", "builtin:lenet-300-100", "--plot", str(tmp_path / "file"))
    assert code == 2 and "is a file" in one_line(err)
