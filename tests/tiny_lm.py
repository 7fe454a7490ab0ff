"""Tiny randomly initialised causal LMs (Llama untied, GPT-2 and Qwen2 tied), saved as Hugging Face folders."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 128
ARCHS = ("llama", "gpt2", "qwen2")
TIED = {"llama": False, "gpt2": True, "qwen2": True}


def config(arch: str):
    import transformers as tf

    common = {"vocab_size": VOCAB, "bos_token_id": 0, "eos_token_id": 1}
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, **common)
    kind = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config}[arch]
    return kind(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=TIED[arch], **common)


def save_causal_lm(arch: str, folder: Path, seed: int = 0) -> Path:
    """`AutoModelForCausalLM.from_config(...).save_pretrained(folder)` (safetensors, no tokenizer)."""
    import transformers as tf

    torch.manual_seed(seed)
    tf.AutoModelForCausalLM.from_config(config(arch)).save_pretrained(folder)
    return folder
