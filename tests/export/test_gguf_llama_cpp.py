"""GGUF exports run in llama.cpp itself (`llama-cpp-python`, skipped when it is not installed): the logits
and perplexity llama.cpp computes agree with slimkit's for the same model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import slimkit as sk
from slimkit.export.gguf import export_gguf
from slimkit.export.llama_cpp import decode_speed, open_model, perplexity
from slimkit.nn.kernels import kernel_mode
from slimkit.zoo.lm_task import lm_task

llama_cpp = pytest.importorskip("llama_cpp")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("llama") / "hf"
    transformers.LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def cpp_logits(path, ids: list[int]) -> np.ndarray:
    llm = open_model(path, 64, threads=1, logits_all=True)
    try:
        llm.eval(ids)
        return np.asarray(llm.scores[:len(ids)])
    finally:
        llm.close()


def test_float_export_gives_the_same_logits_in_llama_cpp(tmp_path, folder):
    """Names, Q/K permutation, RoPE and norm metadata: llama.cpp computes what transformers computes."""
    model = sk.resolve(str(folder))
    export_gguf(model, tmp_path / "m.gguf", qtype="f32")
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits[0].numpy()
    got = cpp_logits(tmp_path / "m.gguf", ids[0].tolist())
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_int8_export_keeps_slimkit_logits_in_llama_cpp(tmp_path, folder):
    model = sk.resolve(str(folder))
    sk.quantize_(model, sk.Int8Config())
    sk.save(model, tmp_path / "m.slim")
    model = sk.load(tmp_path / "m.slim")
    export_gguf(model, tmp_path / "m.gguf")
    ids = torch.randint(0, 96, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), kernel_mode("dense"):   # the decoded weights, fp32 activations
        want = model(ids).logits[0].numpy()
    got = cpp_logits(tmp_path / "m.gguf", ids[0].tolist())
    # llama.cpp rounds activations to Q8_0 blocks inside its matmuls: close, not equal
    assert np.abs(got - want).max() < 0.02 * np.abs(want).max()
    assert (got.argmax(-1) == want.argmax(-1)).mean() > 0.9


def test_perplexity_uses_the_tasks_windows(tmp_path, folder):
    model = sk.resolve(str(folder))
    export_gguf(model, tmp_path / "m.gguf", qtype="f32")
    task = lm_task(folder, window=48, stride=32, max_tokens=300)
    want = task.metrics(model)["perplexity"]
    got = perplexity(tmp_path / "m.gguf", task, threads=1)
    assert got["tokens"] == 299
    assert got["perplexity"] == pytest.approx(want, rel=1e-4)


def test_decode_speed_reports_tokens_per_second(tmp_path, folder):
    export_gguf(sk.resolve(str(folder)), tmp_path / "m.gguf", qtype="q8_0")
    speed = decode_speed(tmp_path / "m.gguf", list(range(16)), new_tokens=4, threads=1, repeats=1)
    assert speed["prefill_tok_s"] > 0 and speed["decode_tok_s"] > 0
    assert (speed["prompt_tokens"], speed["new_tokens"]) == (16, 4)


@pytest.mark.slow
def test_smollm2_int8_q8_0_perplexity_within_one_percent(tmp_path):
    """Issue 21's target: llama.cpp's perplexity of the Q8_0 export within 1% of slimkit's for the same file."""
    from slimkit.zoo.smollm2 import smollm2_task

    model = sk.zoo.load("smollm2")
    sk.quantize_(model, sk.Int8Config())
    sk.save(model, tmp_path / "s8.slim")
    model = sk.load(tmp_path / "s8.slim")
    task = smollm2_task()
    mine = task.run(model, None).perplexity
    report = export_gguf(model, tmp_path / "s8.gguf")
    assert set(report["types"]) == {"Q8_0", "F32"} and report["requantized"] == 0
    theirs = perplexity(tmp_path / "s8.gguf", task)["perplexity"]
    assert abs(theirs / mine - 1) < 0.01
