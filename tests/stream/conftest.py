"""Tiny LLM-like checkpoints made in the test (every dtype a real checkpoint holds)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file


def llm_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).mul(0.05).to(dtype)

    return {
        "model.embed_tokens.weight": randn(96, 64),
        "model.layers.0.self_attn.q_proj.weight": randn(64, 64),
        "model.layers.0.self_attn.o_proj.weight": randn(64, 64, dtype=torch.bfloat16),
        "model.layers.0.mlp.up_proj.weight": randn(160, 64),
        "model.layers.0.mlp.down_proj.weight": randn(64, 160, dtype=torch.float16),
        "model.layers.0.input_layernorm.weight": torch.ones(64),
        "model.layers.0.mlp.up_proj.bias": randn(160),
        "conv.weight": randn(16, 3, 5, 5),
        "position_ids": torch.arange(32),
        "mask": torch.rand(8, 8, generator=g) > 0.5,
        "lm_head.weight": randn(96, 64),
    }


@pytest.fixture()
def tensors() -> dict[str, torch.Tensor]:
    return llm_tensors()


@pytest.fixture()
def ckpt(tmp_path, tensors):
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


def write_sharded(folder, tensors: dict[str, torch.Tensor], shards: int = 2) -> None:
    """Split `tensors` over `shards` files with a model.safetensors.index.json."""
    names = list(tensors)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(folder / fname))
        weight_map |= {k: fname for k in part}
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
