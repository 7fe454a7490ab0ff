"""Pareto fronts and the search folder's JSON state."""

from __future__ import annotations

import random

import pytest

from slimkit.autosearch.pareto import STATE, dominated, front, read_state, write_json
from slimkit.core.errors import SlimError


def test_front_keeps_exactly_the_non_dominated_points():
    rng = random.Random(0)
    pts = [{"trial": i, "bytes": rng.randint(1, 50), "val_score": round(rng.random(), 2)} for i in range(200)]
    edge = front(pts, "bytes")
    on = {p["trial"] for p in edge}
    for p in pts:
        beaten = any(dominated(p, q, "bytes") for q in pts)
        twin_on_front = any((q["bytes"], q["val_score"]) == (p["bytes"], p["val_score"]) for q in edge)
        if p["trial"] in on:
            assert not beaten
        else:
            assert beaten or twin_on_front
    assert [p["bytes"] for p in edge] == sorted(p["bytes"] for p in edge)
    assert [p["val_score"] for p in edge] == sorted(p["val_score"] for p in edge)


def test_front_of_simple_points():
    pts = [{"bytes": 5, "val_score": 0.9}, {"bytes": 3, "val_score": 0.8}, {"bytes": 4, "val_score": 0.7},
           {"bytes": 9, "val_score": 0.95}, {"bytes": 5, "val_score": 0.9}, {"bytes": 1, "val_score": None}]
    assert front(pts, "bytes") == [pts[1], pts[0], pts[3]]


def test_state_round_trip_and_bad_state(tmp_path):
    assert read_state(tmp_path) is None
    write_json(tmp_path / STATE, {"version": 1, "trials": [], "model": "m"})
    assert read_state(tmp_path)["model"] == "m"
    (tmp_path / STATE).write_text("{not json")
    with pytest.raises(SlimError, match="cannot read the saved search"):
        read_state(tmp_path)
    write_json(tmp_path / STATE, {"version": 99, "trials": []})
    with pytest.raises(SlimError, match="not a slimkit search state"):
        read_state(tmp_path)
