"""`slimkit inspect`: the pre-flight tables and their JSON form, through the real entry point."""

from __future__ import annotations

import json

from cli_runner import cli


def test_inspect_json_has_the_preflight(monkeypatch, capsys, lenet_trained):
    code, out, _ = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--json")
    assert code == 0
    doc = json.loads(out.strip().splitlines()[-1])
    assert [r["name"] for r in doc["layers"]] == ["fc1", "fc2", "fc3"]
    pre = doc["preflight"]
    assert [g["text"] for g in pre["groups"]["groups"]] == ["fc1[out] <-> fc2[in]", "fc2[out] <-> fc3[in]"]
    recipes = {r["recipe"]: r for r in pre["recipes"]}
    from slimkit.pipeline.recipes import shipped

    assert set(recipes) == set(shipped())
    assert recipes["int8"]["exact"] and 3.5 < recipes["int8"]["ratio"] < 4.0
    assert recipes["deep-compression"]["bytes"] < recipes["prune-magnitude"]["bytes"] < recipes["int8"]["bytes"]
    assert recipes["int4"]["error"] is None and recipes["int4"]["bytes"] < recipes["int8"]["bytes"]   # groups of 60
    assert all(r["baseline_bytes"] == pre["baseline_bytes"] for r in pre["recipes"])
    assert "estimate" in pre["estimate_note"]


def test_inspect_table_shows_groups_reasons_and_estimates(monkeypatch, capsys, lenet5_trained):
    code, out, _ = cli(monkeypatch, capsys, "inspect", "builtin:lenet5", "--recipe", "int8", "--recipe", "kmeans")
    assert code == 0
    assert "conv2[out] <-> bn2[ch] <-> fc1[in x4]" in out
    assert "fc3: not prunable (feeds the model output)" in out
    assert "int8 weights (weight-only)" in out and "Conv2d is not supported" not in out
    assert "ESTIMATES" in out and "int8" in out and "kmeans" in out and "deep-compression" not in out


def test_inspect_without_preflight(monkeypatch, capsys, lenet_trained):
    code, out, _ = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--json", "--no-preflight")
    assert code == 0 and json.loads(out.strip().splitlines()[-1])["preflight"] is None


def test_inspect_unknown_recipe_is_a_one_line_error(monkeypatch, capsys, lenet_trained):
    code, _, err = cli(monkeypatch, capsys, "-q", "inspect", "builtin:lenet-300-100", "--recipe", "nope")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("slimkit: error: unknown recipe 'nope'")
