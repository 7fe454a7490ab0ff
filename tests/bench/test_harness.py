"""The bench harness: interleaved timing, the RESULTS.md writer, unimplemented recipes, the ONNX
Runtime peer. Fast: lenet-300-100 only, no MiniLM."""

from __future__ import annotations

import json
import time

import pytest
import torch

from bench.cases import CASES, slim_candidate
from bench.harness import (
    BASELINE,
    NOT_IMPLEMENTED,
    QUICK,
    Candidate,
    Protocol,
    case_result,
    machine_info,
    time_candidates,
    write_results,
)
from bench.peers import ort_peers, torch_fp32


class _SleepTask:
    """A task whose 'models' are callables that sleep; forward just calls them."""

    def example_inputs(self, batch_size: int) -> dict:
        return {"n": batch_size}

    def forward(self, model, inputs):
        return model(**inputs)


def _sleeper(ms: float):
    def run(n: int) -> None:
        time.sleep(ms / 1e3 * (2 if n > 1 else 1))
    return run


def test_interleaved_timing_gives_a_median_per_candidate():
    cands = [Candidate("fast", "peer", model=_sleeper(0.0)),
             Candidate("slow", "peer", model=_sleeper(3.0)),
             Candidate("broken", "slimkit", status=NOT_IMPLEMENTED)]
    time_candidates(cands, _SleepTask(), batch=8, protocol=Protocol(2, 3, 3, warmup=1), threads=1)
    fast, slow, broken = cands
    for c in (fast, slow):
        assert c.ms_b1 is not None and c.ms_batched is not None
    assert slow.ms_b1 >= 3.0 and slow.ms_batched >= 6.0
    assert fast.ms_b1 < slow.ms_b1 and fast.ms_batched < slow.ms_batched
    assert broken.ms_b1 is None and broken.ms_batched is None


def _case(name: str, rows: list[Candidate]) -> dict:
    return case_result(name, rows, score_name="accuracy", batch=32, command="python -m bench --quick",
                       protocol=QUICK, threads=1, wall_s=1.0, info=machine_info(1))


def test_results_writer_lists_every_candidate(tmp_path):
    rows = [Candidate(BASELINE, "peer", bytes=1000, score=0.98, ms_b1=1.0, ms_batched=4.0),
            Candidate("onnxruntime int8 (per-channel)", "peer", bytes=250, score=0.975, ms_b1=0.5,
                      ms_batched=1.0),
            Candidate("kmeans", "slimkit", bytes=100, score=0.97, ms_b1=2.0, ms_batched=8.0,
                      compress_s=1.5),
            Candidate("hashed", "slimkit", status=NOT_IMPLEMENTED, note="recipe not shipped yet")]
    md, js = write_results([_case("lenet-300-100", rows)], tmp_path)
    text = md.read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    for c in rows:
        assert any(line.startswith(f"| {c.name}") for line in table), c.name
    kmeans = next(line for line in table if line.startswith("| kmeans"))
    assert "10.00x" in kmeans and "-1.00 pt" in kmeans and "0.50x / 0.50x" in kmeans
    hashed = next(line for line in table if line.startswith("| hashed"))
    assert NOT_IMPLEMENTED in hashed
    assert "python -m bench --quick" in text and machine_info(1)["cpu"] in text

    # a second case is merged in, the first one kept
    write_results([_case("lenet5", rows[:1])], tmp_path)
    data = json.loads(js.read_text())
    assert set(data["cases"]) == {"lenet-300-100", "lenet5"}
    assert "## lenet-300-100" in md.read_text() and "## lenet5" in md.read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_unimplemented_recipe_is_reported_not_measured(tmp_path, digits_task):
    spec = CASES["lenet-300-100"]
    missing = slim_candidate(spec, "no-such-recipe", digits_task, tmp_path, 10, threads=1)
    assert missing.status == NOT_IMPLEMENTED and missing.bytes is None and missing.score is None

    recipe = tmp_path / "future.yaml"
    recipe.write_text("stages:\n  - method: method-from-the-future\n")
    future = slim_candidate(spec, str(recipe), digits_task, tmp_path, 10, threads=1)
    assert future.status == NOT_IMPLEMENTED and "not implemented" in future.note
    assert future.bytes is None and future.score is None


def test_ort_peer_matches_torch_accuracy_on_lenet(lenet_trained, digits_task, tmp_path):
    pytest.importorskip("onnxruntime")
    ref = torch_fp32(lenet_trained, digits_task, tmp_path)
    fp32, int8 = ort_peers(lenet_trained, digits_task, tmp_path, threads=1)
    assert fp32.ok and int8.ok, (fp32.note, int8.note)
    assert abs(fp32.score - ref.score) <= 0.01
    assert abs(int8.score - ref.score) <= 0.01
    assert int8.bytes < fp32.bytes
    for c in (ref, fp32, int8):
        assert c.bytes == (tmp_path / c.file.rsplit("/", 1)[-1]).stat().st_size
    x = digits_task.example_inputs(16)
    with torch.no_grad():
        assert torch.allclose(fp32.model(**x), lenet_trained(**x), atol=1e-4)


def test_targets_are_checked_against_measured_rows():
    from bench.targets import check

    rows = [Candidate(BASELINE, "peer", bytes=200_000, score=0.98, params=50_000, nonzeros=50_000),
            Candidate("prune-magnitude", "slimkit", bytes=10_000, score=0.979, params=50_000,
                      nonzeros=2_000),
            Candidate("deep-compression", "slimkit", status=NOT_IMPLEMENTED)]
    verdicts = {(t["row"], t["target"]): t["verdict"] for t in check(_case("lenet-300-100", rows))}
    assert verdicts[("prune-magnitude", ">= 12x fewer nonzero weights")] == "met"
    assert verdicts[("prune-magnitude", "file >= 10x smaller than fp32")] == "met"
    assert verdicts[("prune-magnitude", "accuracy drop <= 0.3 pt")] == "met"
    assert verdicts[("deep-compression", "file >= 50x smaller than fp32")].startswith("not measured")
    assert verdicts[("int8", "accuracy drop <= 0.3 pt")] == "not measured"


def test_cli_rejects_an_unknown_case(capsys):
    from bench.__main__ import main

    assert main(["--only", "no-such-model"]) == 2
    assert "unknown bench case" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_bench_on_lenet_writes_every_row(tmp_path):
    from bench.__main__ import main
    from bench.cases import CASES, recipes_for

    assert main(["--quick", "--only", "lenet-300-100", "--threads", "1", "--budget", "90",
                 "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    data = json.loads((tmp_path / "results.json").read_text())["cases"]["lenet-300-100"]
    names = {row["name"] for row in data["rows"]}
    assert {BASELINE, "torch bf16", "torch dynamic int8", "onnxruntime fp32",
            "onnxruntime int8 (per-channel)"} <= names
    assert {name for name, _ in recipes_for(CASES["lenet-300-100"])} <= names
    for row in data["rows"]:
        assert f"| {row['name']}" in text
        if row["status"] == "ok":
            assert row["bytes"] > 0 and 0.0 <= row["score"] <= 1.0 and row["ms_b1"] > 0


def test_hand_measured_long_runs_are_appended_to_the_results(tmp_path):
    from bench.harness import LONG_RUNS

    md, _ = write_results([_case("lenet5", [Candidate(BASELINE, "peer", bytes=1000, score=0.98)])], tmp_path)
    text = md.read_text()
    assert LONG_RUNS.is_file() and text.rstrip().endswith(LONG_RUNS.read_text(encoding="utf-8").rstrip())
    assert text.index("## lenet5") < text.index("## Long runs")
