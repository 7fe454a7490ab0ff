"""A tiny random BERT (MiniLM's shape, 3 blocks) and a task feeding it padded token batches."""

from __future__ import annotations

import pytest
import torch

from slimkit.eval.task import Task

transformers = pytest.importorskip("transformers")


def tiny_bert(seed: int = 0, pooler: bool = True):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    config._attn_implementation = "eager"
    return transformers.BertModel(config, add_pooling_layer=pooler).eval()


class TokensTask(Task):
    """Batches of 8 random sequences of 12 tokens, the last ones padded (mask 0)."""

    name = "tokens"

    def __init__(self, batches: int = 4):
        self.batches = batches

    def example_inputs(self, batch_size):
        return self.calibration(batch_size)[0]

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        out = []
        for i in range(self.batches):
            gen = torch.Generator().manual_seed(100 + i)
            mask = torch.ones(8, 12, dtype=torch.long)
            mask[4:, 9:] = 0
            out.append({"input_ids": torch.randint(0, 64, (8, 12), generator=gen), "attention_mask": mask})
        return out


@pytest.fixture()
def make_bert():
    """tiny_bert(seed=0, pooler=True): a fresh tiny random BertModel."""
    return tiny_bert


@pytest.fixture()
def tokens_task():
    return TokensTask()
