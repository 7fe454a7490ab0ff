"""MiniLM checks (heavy: run with `pytest -m slow`)."""

from __future__ import annotations

import copy

import pytest
import torch

import slimkit as sk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    from slimkit.zoo.minilm import minilm_task

    return sk.zoo.load("minilm"), minilm_task()


def _fresh(model):
    q = copy.deepcopy(model)
    q.__dict__["slimkit_base"] = model.__dict__["slimkit_base"]
    return q


def test_minilm_int8_fidelity_size_and_round_trip(minilm, tmp_path):
    from slimkit.nn.quant_linear import Int8Linear

    model, task = minilm
    q = sk.run_recipe(_fresh(model), sk.load_recipe("int8"), task)
    assert sum(isinstance(m, Int8Linear) for m in q.modules()) == 37
    path = tmp_path / "minilm-int8.slim"
    size = sk.save(q, path)
    assert size <= 23_500_000
    loaded = sk.load(path)
    batch = task.example_inputs(4)
    with torch.inference_mode():
        assert torch.equal(q(**batch).last_hidden_state, loaded(**batch).last_hidden_state)
    assert task.score(loaded) >= 0.995


def test_minilm_int4_fidelity_and_size(minilm, tmp_path):
    model, task = minilm
    q = sk.run_recipe(_fresh(model), sk.load_recipe("int4"), task)
    size = sk.save(q, tmp_path / "minilm-int4.slim")
    assert size <= 13_500_000
    assert task.score(q) >= 0.98


def test_minilm_int8_static_fidelity_size_and_round_trip(minilm, tmp_path):
    """Searched static scales keep MiniLM close to dynamic int8 (0.962 with the observer alone)."""
    from slimkit.nn.quant_linear import Int8Linear
    from slimkit.quantization.convert import quant_report

    model, task = minilm
    q = sk.run_recipe(_fresh(model), sk.load_recipe("int8-static"), task)
    linears = [m for m in q.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 37 and sum(m.static for m in linears) >= 25
    dynamic = [v for v in quant_report(q)["quantized"].values() if "dynamic per-token" in v]
    assert len(dynamic) == sum(not m.static for m in linears)
    path = tmp_path / "minilm-int8-static.slim"
    assert sk.save(q, path) <= 23_500_000
    loaded = sk.load(path)
    batch = task.example_inputs(4)
    with torch.inference_mode():
        assert torch.equal(q(**batch).last_hidden_state, loaded(**batch).last_hidden_state)
    assert task.score(loaded) >= 0.99
