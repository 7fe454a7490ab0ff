"""A search keeps its time budget and always answers: best.slim is written, certified or marked not
certified with the real reason, on a busy machine too. Tiny budgets (20-30 s) on lenet-300-100."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.autosearch import search
from slimkit.autosearch.certify import Certification

TOLERANCE = 1.1          # the budget is honoured within 10%


@pytest.fixture(autouse=True)
def one_thread():
    """As a search runs beside other work on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _outputs(folder) -> tuple[dict, str]:
    state = json.loads((folder / "search.json").read_text())
    sk.load(folder / "best.slim")          # always written, and it loads
    return state, (folder / "report.html").read_text()


def test_search_beside_a_cpu_burner_keeps_its_budget_and_writes_best(tmp_path, lenet_trained, quick_folds):
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        start = time.monotonic()
        result = search("builtin:lenet-300-100", out=tmp_path / "s", max_drop=40.0, budget="30s", effort=0.1,
                        certification=Certification(folds=2, repeats=1))
        wall = time.monotonic() - start
    finally:
        burner.kill()
        burner.wait()
    assert wall <= 30 * TOLERANCE, wall
    state, page = _outputs(tmp_path / "s")
    assert result.best["bytes"] == (tmp_path / "s" / "best.slim").stat().st_size
    assert state["outcome"] == {"trial": result.best["trial"], "certified": result.certified,
                                "within_budget": result.best["within_budget"], "reason": result.reason}
    assert result.certified or result.reason
    assert ("NOT certified" in page) == (not result.certified)
    if result.certified:
        assert result.best["cv_ucb_pts"] <= 40.0 and result.reason is None


def test_cli_without_time_to_certify_writes_best_and_says_why(monkeypatch, capsys, tmp_path, lenet_trained,
                                                              quick_folds):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()   # 200 fold runs could never fit in 20 s: nothing can be certified
    code, out, err = cli(monkeypatch, capsys, "search", "builtin:lenet-300-100", "--max-drop", "40", "--budget",
                         "20s", "--effort", "0.1", "--folds", "20", "--repeats", "10", "--out", "s")
    wall = time.monotonic() - start
    assert code == 0 and wall <= 20 * TOLERANCE, (code, wall, err)
    state, page = _outputs(tmp_path / "s")
    reason = state["outcome"]["reason"]
    assert state["outcome"]["certified"] is False and state["outcome"]["within_budget"] is True
    assert reason.startswith(("certification was not started: it needed about",
                              "certification ran out of time")), reason
    assert f"warning: best.slim is NOT certified: {reason}" in " ".join(err.split())
    assert "best: s/best.slim" in out and "no candidate kept" not in out + err
    assert f"NOT certified: {reason}" in page.replace("\n", " ")
    assert json.loads((tmp_path / "s" / "pareto.json").read_text())["best"]["reason"] == reason
