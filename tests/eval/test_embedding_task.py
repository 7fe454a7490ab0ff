"""Embedding fidelity: the original scores 1, a damaged copy less; inputs and calibration are right."""

from __future__ import annotations

import copy
import math
import shutil

import pytest
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.zoo.corpus import sentences, split
from slimkit.zoo.embedding_task import EmbeddingTask, hf_task, last_hidden_state, mean_pool
from slimkit.zoo.minilm import minilm_task, model_path


@pytest.fixture(scope="module")
def full_task():
    return minilm_task()


@pytest.fixture(scope="module")
def task(full_task):
    """MiniLM fidelity on 32 of the held-out sentences (the full 512 is the slow test below)."""
    calls = []

    def reference():
        calls.append(1)
        return full_task.reference()

    small = EmbeddingTask(model_path(), reference, full_task.calib_sentences,
                          full_task.eval_sentences[:32], name="minilm-small")
    small.calls = calls
    return small


@pytest.fixture(scope="module")
def minilm(full_task):
    return full_task.reference()


def test_minilm_task_parts(full_task):
    assert full_task.name == "minilm" and full_task.score_name == "fidelity"
    assert len(full_task.eval_sentences) == 512
    assert not set(full_task.eval_sentences) & set(full_task.calib_sentences)
    assert full_task.eval_sentences == split(sentences(), "eval")
    with pytest.raises(NotImplementedError):
        full_task.train_batches()


def test_self_fidelity_is_one(task, minilm):
    assert abs(task.score(minilm) - 1.0) < 1e-5
    ref = task.reference_embeddings()
    assert ref.shape == (32, 384) and ref.dtype == torch.float32 and torch.isfinite(ref).all()


def test_perturbed_model_scores_lower_and_reference_is_cached(task, minilm):
    noisy = copy.deepcopy(minilm)
    layer = noisy.encoder.layer[2].output.dense
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0)))
    fidelity = task.score(noisy)
    assert 0.5 < fidelity < 0.999
    assert len(task.calls) == 1, "reference embeddings are computed once per task"


def test_score_uses_eval_mode_and_restores_training(task, minilm):
    model = copy.deepcopy(minilm).train()           # dropout on: would make the score noisy
    assert abs(task.score(model) - 1.0) < 1e-5
    assert model.training and all(m.training for m in model.modules())


class _TupleOut(nn.Module):
    def __init__(self, inner: nn.Module, as_tensor: bool = False) -> None:
        super().__init__()
        self.inner, self.as_tensor = inner, as_tensor

    def forward(self, input_ids, attention_mask):
        hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden if self.as_tensor else (hidden, None)


def test_embed_accepts_tuples_and_tensors(task, minilm):
    batch = task.example_inputs(4)
    expected = task.embed(minilm, batch)
    for wrapped in (_TupleOut(minilm), _TupleOut(minilm, as_tensor=True)):
        assert torch.equal(task.embed(wrapped, batch), expected)
    with pytest.raises(TypeError):
        last_hidden_state({"logits": None})


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert torch.equal(mean_pool(hidden, torch.tensor([[1, 1, 0]])), torch.tensor([[2.0, 3.0]]))


def test_example_inputs_are_real_sentences_of_40_tokens(task):
    batch = task.example_inputs(32)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (32, 40)
    assert batch["input_ids"].dtype == torch.int64
    assert (batch["input_ids"][:, 0] == 101).all()                  # [CLS]
    assert batch["attention_mask"].sum(1).min() > 5                   # real words, not padding
    assert len({tuple(row.tolist()) for row in batch["input_ids"]}) == 32
    assert task.example_inputs(3)["input_ids"].shape == (3, 40)
    with pytest.raises(ValueError):
        task.example_inputs(0)


def test_calibration_never_uses_eval_sentences(full_task):
    batches = full_task.calibration(100)
    assert [b["input_ids"].shape[0] for b in batches] == [32, 32, 32, 4]
    assert all(b["input_ids"].shape[1] <= 128 for b in batches)
    tok = full_task.tokenizer_
    decoded = {tok.decode(row[mask.bool()], skip_special_tokens=True)
               for b in batches for row, mask in zip(b["input_ids"], b["attention_mask"], strict=True)}
    held_out = {tok.decode(tok(s, truncation=True, max_length=128)["input_ids"], skip_special_tokens=True)
                for s in full_task.eval_sentences}
    assert len(decoded) == 100 and not decoded & held_out
    assert len(full_task.calibration(10**6)) == math.ceil(len(full_task.calib_sentences) / 32)
    with pytest.raises(ValueError):
        full_task.calibration(0)


def test_constructor_validates():
    with pytest.raises(ValueError):
        EmbeddingTask(model_path(), lambda: nn.Identity(), [], ["x y z"])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert-task")
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(model_path() / name, folder / name)
    return folder


def test_hf_task_on_a_folder(tiny_folder, tmp_path):
    from slimkit.zoo.hf import load_hf_folder

    task = hf_task(tiny_folder, sentences=[f"Sentence number {i} is here." for i in range(40)])
    assert task.name == tiny_folder.name and len(task.eval_sentences) == 20
    model = load_hf_folder(tiny_folder)
    assert abs(task.score(model) - 1.0) < 1e-5
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(-1.0)
    assert task.score(model) < 0.9
    with pytest.raises(SlimError):
        hf_task(tmp_path / "missing")
    with pytest.raises(SlimError):
        hf_task(tiny_folder, sentences=["only one."])
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_folder / name, no_tokenizer / name)
    with pytest.raises(SlimError, match="no tokenizer"):
        hf_task(no_tokenizer).example_inputs(2)


@pytest.mark.slow
def test_full_self_fidelity(full_task, minilm):
    """The whole 512-sentence score: reference + model, ~4-5 s of CPU each."""
    assert abs(full_task.score(minilm) - 1.0) < 1e-5
