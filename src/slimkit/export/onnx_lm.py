"""What exporting a `transformers` language model needs beyond a task: example token ids when it came
without one (a .slim of a Hugging Face folder, whose tokenizer is not stored), and a forward without
the KV cache (the graph maps token ids to logits; the cache is torch's business).

>>> token_examples(model).example_inputs(2)["input_ids"].shape       # doctest: +SKIP
torch.Size([2, 16])
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

SEQUENCE = 16   # tokens per example row: the graph's sequence axis is dynamic


class TokenExamples:
    """Seeded random token ids below the model's vocabulary size, with a full attention mask."""

    def __init__(self, vocab_size: int, positions: int | None = None):
        self.vocab_size = vocab_size
        self.length = min(SEQUENCE, positions) if positions else SEQUENCE

    def example_inputs(self, batch_size: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(batch_size)
        ids = torch.randint(0, self.vocab_size, (batch_size, self.length), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def token_examples(model: nn.Module) -> TokenExamples | None:
    """Example inputs for a `transformers` model (one with a `config.vocab_size`), else None."""
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 2:
        return None
    positions = next((getattr(config, k) for k in ("max_position_embeddings", "n_positions")
                      if isinstance(getattr(config, k, None), int) and getattr(config, k) > 0), None)
    return TokenExamples(vocab, positions)


def no_cache(model: nn.Module) -> dict[str, bool]:
    """`{"use_cache": False}` for a model whose forward takes `use_cache` (a decoder), else {}."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}
