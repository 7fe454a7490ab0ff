"""slimkit search on MiniLM with a fidelity budget: a Pareto front of at least five points, the best
within the budget on held-out sentences. Slow (minutes): run by `make bench`."""

from __future__ import annotations

import json

import pytest
import torch

import slimkit as sk
from slimkit.autosearch import search
from slimkit.autosearch.pareto import dominated

pytestmark = pytest.mark.slow


def test_minilm_front_has_five_points(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = search("builtin:minilm", max_drop=5.0, out=tmp_path / "m", budget="25m", max_trials=8)
    finally:
        torch.set_num_threads(threads)
    doc = json.loads((tmp_path / "m" / "pareto.json").read_text())
    pts = doc["front"]
    assert len(pts) >= 5, [(p["bytes"], p["val_score"]) for p in pts]
    assert all(not dominated(p, q, "bytes") for p in pts for q in pts if p is not q)
    best = result.best
    assert best is not None and best["drop_pts"] <= 5.0
    assert best["ratio"] >= 3.5                      # at least int8's 3.9x, usually GPTQ 4-bit's ~7x
    assert best["test_score"] >= 0.9                 # fidelity on the evaluation sentences
    model = sk.load(tmp_path / "m" / "best.slim")
    assert (tmp_path / "m" / "best.slim").stat().st_size == best["bytes"]
    assert sum(p.numel() for p in model.parameters()) > 0
