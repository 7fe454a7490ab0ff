"""The fast bf16 layers on the real MiniLM int8 artifact (heavy: run with `pytest -m slow`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import slimkit as sk
from slimkit.nn import bert_fast

pytestmark = pytest.mark.slow


def test_minilm_int8_artifact_runs_fast_layers_with_the_same_fidelity(tmp_path, monkeypatch):
    from slimkit.nn.quant_linear import fast_bf16
    from slimkit.zoo.minilm import minilm_task

    if not fast_bf16():
        pytest.skip("this CPU has no fast bf16: the int8 model computes in fp32 and keeps HF's forward")
    task = minilm_task("other")
    base = sk.zoo.load("minilm")
    q = copy.deepcopy(base)
    q.__dict__["slimkit_base"] = base.__dict__["slimkit_base"]
    q = sk.run_recipe(q, sk.load_recipe("int8"), task)
    path = tmp_path / "minilm-int8.slim"
    sk.save(q, path)
    loaded = sk.load(path)
    assert bert_fast.install_fast_layers(loaded) == 6
    reference = copy.deepcopy(loaded)
    for layer in reference.modules():
        layer.__dict__.pop("forward", None)
    batch = task.example_inputs(32)
    calls: list = []
    real = bert_fast._fast
    monkeypatch.setattr(bert_fast, "_fast", lambda *a: calls.append(1) or real(*a))
    with torch.inference_mode():
        fast = loaded(**batch).last_hidden_state.float()
        assert len(calls) == 6
        ref = reference(**batch).last_hidden_state.float()
    cos = F.cosine_similarity(fast.flatten(0, 1), ref.flatten(0, 1), dim=-1)
    assert cos.min() > 0.995 and cos.mean() > 0.9995
    assert task.score(loaded) >= 0.995
