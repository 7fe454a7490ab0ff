"""A tiny random BertModel (MiniLM's shape, 2 layers) and a task of random token batches, shared by tests."""

from __future__ import annotations

import torch

from slimkit.core.task import Task


def tiny_bert():
    """A 2-layer, hidden-32 BertModel without pooler, seeded, eager attention, eval mode."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=16)
    config._attn_implementation = "eager"
    return transformers.BertModel(config, add_pooling_layer=False).eval()


class TokensTask(Task):
    """Random token ids (12 tokens, seeded by the batch size); a constant score."""

    name = "tokens"

    def example_inputs(self, batch_size):
        gen = torch.Generator().manual_seed(batch_size)
        return {"input_ids": torch.randint(0, 50, (batch_size, 12), generator=gen),
                "attention_mask": torch.ones(batch_size, 12, dtype=torch.long)}

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        return [self.example_inputs(16) for _ in range(max(1, n // 16))]
