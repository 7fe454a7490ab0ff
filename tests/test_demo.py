from __future__ import annotations

import json

from slimkit.cli.demo_run import PLAN, run_demo


def test_demo_writes_one_row_per_family_with_real_files(tmp_path, monkeypatch, lenet_trained):
    import slimkit.cli.demo_run as demo

    monkeypatch.setattr(demo, "PLAN", [("quantization", "int8"), ("imaginary", "no-such-recipe")])
    rows = run_demo(tmp_path, "lenet-300-100")
    assert [r.method for r in rows] == ["fp32", "int8", "no-such-recipe"]
    base, int8, missing = rows
    assert int8.bytes == (tmp_path / "int8.slim").stat().st_size
    assert 3.0 < int8.ratio < 4.0 and abs(int8.delta_pt) <= 0.3
    assert missing.note == "not yet implemented" and missing.bytes is None and missing.score is None
    table = (tmp_path / "results.md").read_text()
    assert "not yet implemented" in table and "| int8 |" in table
    assert [r["method"] for r in json.loads((tmp_path / "results.json").read_text())] == \
        ["fp32", "int8", "no-such-recipe"]
    assert {family for family, _ in PLAN} >= {"quantization", "pruning", "parameter sharing", "distillation"}
