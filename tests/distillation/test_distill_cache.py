"""Teacher outputs computed once (`cache_teacher`) and the token-level last-layer loss (`token_weight`)."""

from __future__ import annotations

import pytest
import torch

from slimkit.core.errors import SlimError
from slimkit.distillation import DistillConfig, distill, keep_layers
from slimkit.distillation.api import _source, build_objective
from slimkit.distillation.teacher_cache import cached_text_source

transformers = pytest.importorskip("transformers")

WORDS = {w: i + 1 for i, w in enumerate("alpha beta gamma delta epsilon zeta eta theta iota kappa".split())}


def _tiny_bert() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return transformers.BertModel(config).eval()


def _encode(sentences):
    """A stand-in tokenizer: one token per word, padded with 0 to the longest sentence."""
    ids = [[WORDS[w] for w in s.split()] for s in sentences]
    n = max(len(x) for x in ids)
    return {"input_ids": torch.tensor([x + [0] * (n - len(x)) for x in ids]),
            "attention_mask": torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in ids])}


def _texts(n: int = 40) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    names = list(WORDS)
    return [" ".join(names[int(i)] for i in torch.randint(0, len(names), (int(k),), generator=gen))
            for k in torch.randint(3, 20, (n,), generator=gen)]


def test_cached_batches_carry_the_teachers_token_states():
    teacher, texts = _tiny_bert(), _texts()
    source = cached_text_source(texts, _encode, teacher, batch_size=8, seed=0)
    batches = source.batches(0)
    assert len(batches) == 5 and source.size == 40
    for inputs, target in batches:
        with torch.no_grad():
            states = teacher(**inputs).last_hidden_state
        mask = inputs["attention_mask"].bool()
        assert target.shape == states.shape
        assert torch.allclose(target[mask], states[mask], atol=2e-3)   # stored as float16
        assert not target[~mask].any()                                  # padding is zero
    seen = sorted(tuple(b["input_ids"][i].tolist()) for b, _ in batches for i in range(len(b["input_ids"])))
    assert len(seen) == 40
    first = [b["input_ids"].tolist() for b, _ in batches]
    assert [b["input_ids"].tolist() for b, _ in source.batches(0)] == first   # deterministic
    assert [b["input_ids"].tolist() for b, _ in source.batches(1)] != first   # reshuffled each epoch


def test_cached_and_online_teacher_give_the_same_loss():
    teacher, texts = _tiny_bert(), _texts(16)
    student = keep_layers(teacher, [0, 3])
    with torch.no_grad():  # a student far enough from its teacher for a loss that is not ~0
        for p in student.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    inputs, target = cached_text_source(texts, _encode, teacher, batch_size=16, seed=0).batches(0)[0]
    losses = []
    for cached in (False, True):
        config = DistillConfig(keep=[0, 3], token_weight=1.0, hidden_loss="cosine", cache_teacher=cached)
        losses.append(build_objective(teacher, student, config)(student, inputs, target if cached else None))
    assert losses[0].item() > 0.01
    assert abs(losses[0].item() - losses[1].item()) < 1e-3 * losses[0].item() + 1e-5


def test_augmented_variants_are_added_once_and_labelled():
    teacher, texts = _tiny_bert(), _texts()
    source = cached_text_source(texts, _encode, teacher, batch_size=8, seed=0, augment=0.5)
    assert source.size == 60
    total = sum(len(b["input_ids"]) for b, _ in source.batches(0))
    assert total == 60


class _TextTask:
    """The parts of an EmbeddingTask that distillation on text reads."""

    from slimkit.core.task import Task as _Task

    name = "words"
    tokenizer_path = "unused"
    calib_sentences = _texts(48)
    eval_sentences = _texts(8)

    def encode(self, sentences):
        return _encode(sentences)

    def score(self, model):
        return 0.5


def test_distill_with_cached_teacher_trains_the_student(monkeypatch):
    from slimkit.distillation import api
    from slimkit.distillation.data import text_task_source

    teacher = _tiny_bert()
    student = keep_layers(teacher, [0, 3])
    task = _TextTask()
    calls = {"n": 0}
    forward = teacher.forward

    def counted(*args, **kwargs):
        calls["n"] += 1
        return forward(*args, **kwargs)

    monkeypatch.setattr(teacher, "forward", counted)
    config = DistillConfig(keep=[0, 3], token_weight=1.0, cache_teacher=True, epochs=4, lr=1e-3, batch_size=8)
    monkeypatch.setattr(api, "_source", lambda data, cfg, t=None: text_task_source(
        task, batch_size=8, seed=0, teacher=t if cfg.cache_teacher else None))
    seen = []
    distill(teacher, student, task, config, on_epoch=seen.append)
    assert len(seen) == 4 and seen[-1].loss < seen[0].loss
    assert calls["n"] <= 2  # one pass over the text (one length-sorted batch of 64) + the shape check


def test_cache_refuses_what_it_cannot_serve():
    teacher = _tiny_bert()
    student = keep_layers(teacher, [0, 3])
    with pytest.raises(SlimError, match="cache_teacher"):
        build_objective(teacher, student, DistillConfig(keep=[0, 3], cache_teacher=True, hidden_weight=1.0))
    with pytest.raises(SlimError, match="text task"):
        _source([torch.zeros(4, 3)], DistillConfig(cache_teacher=True))
    with pytest.raises(SlimError, match="no training data"):
        cached_text_source([], _encode, teacher, 8, 0)


def test_bf16_teacher_pass_is_close_to_fp32():
    teacher, texts = _tiny_bert(), _texts(16)
    exact = cached_text_source(texts, _encode, teacher, batch_size=16, seed=0).batches(0)[0]
    fast = cached_text_source(texts, _encode, teacher, batch_size=16, seed=0, bf16=True).batches(0)[0]
    mask = exact[0]["attention_mask"].bool()
    assert torch.equal(exact[0]["input_ids"], fast[0]["input_ids"])
    cos = torch.nn.functional.cosine_similarity(exact[1][mask], fast[1][mask], dim=-1)
    assert cos.min() > 0.99 and not torch.equal(exact[1], fast[1])
