"""Text for distilling sentence encoders: length-bucketed batches, augmentation, embedded corpora
added to a text task with their held-out part in validation, and bf16 autocast forwards."""

from __future__ import annotations

import random

import pytest
import torch

from slimkit.core.errors import SlimError
from slimkit.distillation import DistillConfig, keep_layers
from slimkit.distillation.api import build_objective
from slimkit.distillation.data import augment_sentence, length_batches, text_source, text_task_source

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def _texts(n: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + f" {i}." for i in range(n)]


def _encode(sentences):
    """A stand-in tokenizer: one token per word, padded to the longest sentence."""
    n = max(len(s.split()) for s in sentences)
    mask = torch.tensor([[1] * len(s.split()) + [0] * (n - len(s.split())) for s in sentences])
    return {"input_ids": mask * 7, "attention_mask": mask}


def test_length_batches_sort_within_buckets_and_keep_every_sentence():
    texts = _texts()
    groups = length_batches(texts, 8, bucket=5)
    assert sorted(s for g in groups for s in g) == sorted(texts)
    assert all(len(g) == 8 for g in groups)
    for start in range(0, len(groups), 5):
        run = [len(s) for g in groups[start:start + 5] for s in g]
        assert run == sorted(run)
    assert length_batches(texts, 8, bucket=1)[0] == texts[:8]


def test_bucketed_batches_pad_less_than_random_ones():
    texts = _texts(640)
    bucketed = text_source(texts, _encode, 32, seed=0).batches(0)
    plain = text_source(texts, _encode, 32, seed=0, bucket=1).batches(0)
    padded = [sum(b["attention_mask"].numel() for b, _ in batches) for batches in (bucketed, plain)]
    real = [sum(int(b["attention_mask"].sum()) for b, _ in batches) for batches in (bucketed, plain)]
    assert real[0] == real[1]
    assert padded[0] < 0.8 * padded[1]


def test_text_source_is_deterministic_and_reshuffles_each_epoch():
    texts = _texts()

    def order(seed: int, epoch: int) -> list[str]:
        seen: list[str] = []
        text_source(texts, lambda s: seen.extend(s) or _encode(s), 16, seed=seed).batches(epoch)
        return seen

    first = order(3, 0)
    assert sorted(first) == sorted(texts)
    assert order(3, 0) == first
    assert order(3, 1) != first and order(4, 0) != first


def test_augmentation_replaces_a_fraction_deterministically():
    texts = _texts()
    seen: list[list[str]] = []
    source = text_source(texts, lambda s: seen.append(list(s)) or _encode(s), 16, seed=0, augment=0.5)
    source.batches(0)
    once = [x for batch in seen for x in batch]
    seen.clear()
    source.batches(0)
    assert once == [x for batch in seen for x in batch]
    changed = len(set(once) - set(texts))
    assert 0.3 * len(texts) < changed < 0.7 * len(texts)
    with pytest.raises(ValueError, match="augment"):
        text_source(texts, _encode, 16, seed=0, augment=1.5)


def test_augment_sentence_variants():
    sentence = "one two three four five six seven eight"
    outs = {augment_sentence(sentence, random.Random(s), ["nine ten eleven twelve"]) for s in range(40)}
    assert sentence not in outs and len(outs) > 5
    assert any(len(o.split()) < 8 for o in outs)                          # words dropped
    assert any(sorted(o.split()) == sorted(sentence.split()) for o in outs)  # a rotation
    assert any("ten" in o or "twelve" in o for o in outs)                 # spliced with another sentence
    assert augment_sentence("too short", random.Random(0)) == "too short"


class _FakeTask:
    """The parts of an EmbeddingTask that `text_task_source` reads."""

    name = "fake"
    tokenizer_path = "unused"
    calib_sentences = ["A calibration sentence of the task."]
    eval_sentences = ["A held-out sentence of the task."]

    def encode(self, sentences):
        return _encode(sentences)

    def reference(self):
        raise AssertionError("not called here")

    def score(self, model):
        return 0.5


def test_text_task_source_adds_corpora_and_their_held_out_part(monkeypatch):
    from slimkit.distillation import data
    from slimkit.zoo import corpus

    made = {}

    class Recorder:
        def __init__(self, tokenizer_path, reference, calib, held_out, name):
            made.update(calib=calib, held_out=held_out, name=name)

        def score(self, model):
            return 0.25

    monkeypatch.setattr(data, "EmbeddingTask", Recorder)
    task = _FakeTask()
    plain = text_task_source(task, batch_size=64)
    assert plain.size == 1 and plain.validate(None) == 0.5 and not made
    source = text_task_source(task, ["libdocs"], batch_size=64)
    libdocs = corpus.sentences("libdocs")
    assert source.size == 1 + len(corpus.split(libdocs, "calib"))
    assert made["held_out"] == task.eval_sentences + corpus.split(libdocs, "eval")
    assert source.validate(None) == 0.25
    for name in ("other", "klingon"):
        with pytest.raises(SlimError, match="corpora"):
            text_task_source(task, [name])


def test_corpora_need_a_text_task():
    from slimkit.distillation.api import _source

    with pytest.raises(SlimError, match="text task"):
        _source([torch.zeros(4, 3)], DistillConfig(corpora=["libdocs"]))


def _tiny_bert():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, attn_implementation="eager")
    return transformers.BertModel(config).eval()


def test_bf16_forwards_give_nearly_the_fp32_loss_and_fp32_gradients():
    teacher = _tiny_bert()
    student = keep_layers(teacher, [0, 3])
    with torch.no_grad():  # a student far enough from its teacher for a loss that is not ~0
        for p in student.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    ids = torch.randint(1, 50, (8, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    losses = {}
    for bf16 in (False, True):
        config = DistillConfig(keep=[0, 3], hidden_weight=1.0, hidden_loss="cosine", attention_weight=1.0, bf16=bf16)
        objective = build_objective(teacher, student, config)
        objective.prepare(student, batch)
        student.zero_grad()
        loss = objective(student, batch, None)
        loss.backward()
        losses[bf16] = loss.item()
        assert loss.dtype == torch.float32
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in student.parameters())
    assert losses[False] > 0.01
    assert abs(losses[True] - losses[False]) < 0.05 * losses[False]


def test_time_schedule_anneals_the_lr_to_the_time_limit_and_stops_there(monkeypatch):
    from slimkit.train import loop

    clock = iter(range(10_000))
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))  # one second per reading
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [({"x": torch.randn(4, 3)}, None) for _ in range(10)]
    lrs: list[float] = []

    def loss_fn(m, inputs, _):
        return m(inputs["x"]).pow(2).mean()

    settings = loop.LoopSettings(epochs=100, lr=0.1, schedule="linear", time_limit=25.0, time_schedule=True)
    result = loop.fit(model, loss_fn, lambda epoch: data, settings,
                      on_epoch=lambda info: lrs.append(info.lr))
    assert 1 <= result.epochs_run < 5                      # stopped by time, long before 100 epochs
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.1 * 0.2   # annealed by time, not by steps
    with pytest.raises(ValueError, match="time_limit"):
        loop.LoopSettings(time_schedule=True)
