"""`slimkit search` flags: bad values are one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from cli_runner import cli


@pytest.mark.parametrize("flags, message", [
    (["--max-drop", "-1"], "max_drop (--max-drop) must be a number of points >= 0, got -1.0"),
    (["--max-drop", "0.5", "--budget", "0s"], "budget (--budget) must be a positive duration, got '0s'"),
    (["--max-drop", "0.5", "--budget", "20"], "budget (--budget) needs a unit, got '20': write 20m for minutes"),
    (["--max-drop", "0.5", "--budget", "soon"], "budget (--budget) must be a duration like 90s, 20m or 1h"),
    (["--max-drop", "0.5", "--trials", "0"], "max_trials (--trials) must be a positive integer, got 0"),
    (["--max-drop", "0.5", "--effort", "0"], "effort (--effort) must be in (0, 10], got 0.0"),
    (["--max-drop", "0.5", "--out", "afile.txt"], "--out afile.txt is a file, not a folder"),
    (["--max-drop", "0.5", "--out", "full"], "--out full exists and is not a slimkit search folder"),
    (["--max-drop", "0.5", "--folds", "1"], "certification folds (--folds) must be an integer from 2 to 20, got 1"),
    (["--max-drop", "0.5", "--confidence", "1"],
     "certification confidence (--confidence) must be in [0.5, 1), got 1.0"),
    (["--max-drop", "0.5", "--repeats", "0"],
     "certification repeats (--repeats) must be an integer from 1 to 10, got 0"),
])
def test_bad_flags_are_one_line_errors(monkeypatch, capsys, tmp_path, flags, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    code, out, err = cli(monkeypatch, capsys, "search", "builtin:lenet-300-100", *flags)
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert lines[-1].startswith("slimkit: error:") and message in lines[-1]
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"


def test_unknown_model_is_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(monkeypatch, capsys, "search", "builtin:nope", "--max-drop", "1")
    assert code == 2 and err.strip().splitlines()[-1].startswith("slimkit: error: unknown builtin model 'nope'")
