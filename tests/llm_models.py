"""Small models with LLM-like activation outliers, and their tasks, for the LLM-grade methods' tests
(AWQ, SmoothQuant, Wanda, SparseGPT).

- `outlier_mlp()`: LayerNorm -> fc1 -> ReLU -> fc2 -> ReLU -> fc3, on inputs where 4 of 128 channels
  are ~25x larger than the rest, and a LayerNorm weight that keeps them so (as in LLMs, where a few
  hidden channels carry most of the activation magnitude).
- `tiny_llama()`: a 2-layer random Llama (hidden 128, MLP 256, 4 query / 2 key-value heads) whose
  norm weights give 4 hidden channels ~20x the others.

Each task draws calibration batches and held-out batches from disjoint seeds; `output_mse` compares a
model with the float original on held-out inputs.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimkit.core.task import Task
from slimkit.core.torch_utils import num_threads

OUTLIERS = [3, 17, 40, 101]


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models: one thread is fastest, and far faster than two on a machine shared by other jobs."""
    with num_threads(1):
        yield


class OutlierMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(128)
        self.fc1 = nn.Linear(128, 256)
        self.fc2 = nn.Linear(256, 128)
        self.fc3 = nn.Linear(128, 64)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(self.norm(x))))))


def outlier_mlp() -> OutlierMLP:
    torch.manual_seed(0)
    model = OutlierMLP().eval()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.weight[OUTLIERS] *= 25.0
        model.norm.bias.normal_(0, 0.1)
    return model


class MLPTask(Task):
    """Gaussian inputs (128 features), batches of 32 rows; held-out seeds never overlap calibration's."""

    name = "outlier-mlp"

    def _batch(self, seed: int, rows: int = 32) -> dict:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(rows, 128, generator=gen)
        x[:, OUTLIERS] *= 4.0
        return {"x": x}

    def example_inputs(self, batch_size):
        return self._batch(10_000 + batch_size, batch_size)

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        return [self._batch(i) for i in range(max(1, n // 32))]

    def forward(self, model, batch):
        return model(batch["x"])

    def held_out(self) -> list[dict]:
        return [self._batch(50_000 + i) for i in range(8)]


def tiny_llama():
    """A 2-layer LlamaForCausalLM with outlier hidden channels (eager attention, eval mode, seeded)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=False)
    config._attn_implementation = "eager"
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.uniform_(0.5, 1.5)
                norm.weight[OUTLIERS] *= 20.0
    return model


class LlamaTask(Task):
    """Random token sequences of 32 tokens, batches of 8; held-out seeds never overlap calibration's."""

    name = "tiny-llama"

    def _batch(self, seed: int, rows: int = 8) -> dict:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(0, 96, (rows, 32), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def example_inputs(self, batch_size):
        return self._batch(10_000 + batch_size, batch_size)

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        return [self._batch(i) for i in range(max(1, n // 8))]

    def forward(self, model, batch):
        return model(**batch, use_cache=False).logits

    def held_out(self) -> list[dict]:
        return [self._batch(50_000 + i) for i in range(4)]


@torch.no_grad()
def output_mse(model: nn.Module, reference: nn.Module, task) -> float:
    """Mean squared difference of `model`'s and `reference`'s outputs on the task's held-out batches."""
    total, count = 0.0, 0
    for batch in task.held_out():
        a, b = task.forward(model, batch).float(), task.forward(reference, batch).float()
        total += float((a - b).pow(2).sum())
        count += a.numel()
    return total / count


CASES = {"mlp": (outlier_mlp, MLPTask), "llama": (tiny_llama, LlamaTask)}


def case(name: str):
    """(model, float copy, task) of case `name` ("mlp" or "llama")."""
    build, task = CASES[name]
    model = build()
    return model, copy.deepcopy(model), task()
