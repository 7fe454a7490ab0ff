"""The causal-LM task: sliding-window perplexity on held-out text, KL to the original, disjoint text parts."""

from __future__ import annotations

import json

import pytest
import torch

import slimkit as sk
from cli_runner import cli
from slimkit.core.provenance import task_for
from slimkit.zoo.corpus import sentences
from slimkit.zoo.lm_task import CausalLMTask, held_out, lm_task, windows
from tiny_lm import VOCAB, save_causal_lm


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_causal_lm("llama", tmp_path_factory.mktemp("lm-task"))


@pytest.fixture(scope="module")
def task(folder):
    return lm_task(folder, max_tokens=300, kl_tokens=100)


@pytest.mark.parametrize(("n", "window", "stride"), [(10, 4, 3), (100, 16, 8), (100, 16, 15), (5, 64, 48),
                                                     (257, 64, 63)])
def test_windows_score_every_token_once(n, window, stride):
    plan = windows(n, window, stride)
    scored = [t for _, end, first in plan for t in range(first, end)]
    assert scored == list(range(1, n))
    for begin, end, first in plan:
        assert end - begin <= window and first > begin
        assert first == 1 or first - begin >= min(window - stride, window - 1)
    with pytest.raises(ValueError):
        windows(10, 4, 4)


def test_held_out_and_calibration_text_are_disjoint():
    text = sentences()
    calib, evaluation = held_out(text)
    assert len(evaluation) == 512 and set(calib).isdisjoint(evaluation)
    order = {s: i for i, s in enumerate(text)}
    assert [order[s] for s in evaluation] == sorted(order[s] for s in evaluation), "held-out text in corpus order"


def test_random_model_perplexity_near_vocabulary_and_zero_self_kl(folder, task):
    model = sk.resolve(str(folder))
    values = task.metrics(model)
    assert 0.8 * VOCAB < values["perplexity"] < 1.25 * VOCAB, values   # a random model: near uniform predictions
    assert values["ppl_ratio"] == 1.0 and values["kl"] == 0.0
    again = task.metrics(sk.resolve(str(folder)))   # the original loaded again: the same predictions
    assert again == values
    assert task.reference_.count == 299 and task.reference_.logprobs.shape == (100, VOCAB)


def test_a_changed_model_moves_perplexity_and_kl(folder, task):
    model = sk.resolve(str(folder))
    with torch.no_grad():
        for p in model.model.layers.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    values = task.metrics(model)
    assert values["kl"] > 1e-4 and values["ppl_ratio"] != 1.0
    assert abs(values["ppl_ratio"] - task.reference_.perplexity / values["perplexity"]) < 1e-12
    assert task.score(model) == values["ppl_ratio"]


def test_the_original_is_measured_once(folder, monkeypatch):
    """compress measures the original first: its pass is the reference, the model is not run twice."""
    task = lm_task(folder, max_tokens=200, kl_tokens=50)
    runs = []
    original_run = CausalLMTask.run
    monkeypatch.setattr(CausalLMTask, "run", lambda self, *a: runs.append(1) or original_run(self, *a))
    assert task.metrics(sk.resolve(str(folder)))["kl"] == 0.0
    assert len(runs) == 1


def test_calibration_and_examples(task):
    batches = task.calibration(20)
    assert [b["input_ids"].shape for b in batches] == [(8, 64), (8, 64), (4, 64)]   # 128 tokens, cut to 64 positions
    assert all(int(b["input_ids"].max()) < VOCAB for b in batches)
    assert task.example_inputs(3)["input_ids"].shape == (3, 16)


def test_default_task_and_evaluate_report_perplexity(folder, monkeypatch, capsys):
    model = sk.resolve(str(folder))
    task = task_for(model)
    assert isinstance(task, CausalLMTask) and task.score_name == "ppl_ratio"
    task.max_tokens, task.kl_tokens = 200, 50
    m = sk.evaluate(model, task, timing=False)
    assert m.score == 1.0 and m.metrics["kl"] == 0.0 and 0.8 * VOCAB < m.metrics["perplexity"] < 1.25 * VOCAB
    code, out, _ = cli(monkeypatch, capsys, "eval", str(folder), "--json")
    assert code == 0
    row = json.loads(out.strip().splitlines()[-1])
    assert row["score_name"] == "ppl_ratio" and row["score"] == 1.0 and row["kl"] == 0.0
    assert 0.8 * VOCAB < row["perplexity"] < 1.25 * VOCAB
    code, out, _ = cli(monkeypatch, capsys, "eval", str(folder))
    assert code == 0 and "perplexity" in out


def test_compress_prints_perplexity(folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "lm-int8.slim"
    code, text, _ = cli(monkeypatch, capsys, "compress", str(folder), "--recipe", "int8", "--out", str(out))
    assert code == 0 and "perplexity" in text and "ppl_ratio" in text
    code, text, _ = cli(monkeypatch, capsys, "compress", str(folder), "--recipe", "int8", "--out", str(out),
                        "--force", "--json")
    result = json.loads(text.strip().splitlines()[-1])
    assert code == 0 and result["baseline_metrics"]["kl"] == 0.0 and result["metrics"]["kl"] > 0
    assert 0.99 < result["metrics"]["perplexity"] / result["baseline_metrics"]["perplexity"] < 1.01
