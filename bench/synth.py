"""Synthetic LLM-like checkpoints for tests and benchmarks, written without holding them in memory.

>>> from bench.synth import llm_like_shapes, write_random_checkpoint
>>> shapes = llm_like_shapes(2 << 30)            # Llama-style names and shapes, about 2 GiB of fp32
>>> write_random_checkpoint("ck.safetensors", shapes)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

CODES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


def llm_like_shapes(target_bytes: int, hidden: int = 2048, intermediate: int = 5632, vocab: int = 32000,
                    itemsize: int = 4) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a Llama-style decoder with as many layers as reach `target_bytes`
    (embeddings, attention q/k/v/o, gated MLP, RMS norms, final norm, untied LM head)."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    tail = {"model.norm.weight": (hidden,), "lm_head.weight": (vocab, hidden)}

    def size() -> int:
        return sum(math.prod(s) for s in [*shapes.values(), *tail.values()]) * itemsize

    layer = 0
    while size() < target_bytes:
        p = f"model.layers.{layer}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
        layer += 1
    return shapes | tail


def write_random_checkpoint(path: str | os.PathLike, shapes: dict[str, tuple[int, ...]],
                            dtype: str = "float32", seed: int = 0, block_rows: int = 256) -> int:
    """Write N(0, 0.02) tensors (norm weights = 1) to a `.safetensors` file, block by block so
    memory stays small; returns the file size."""
    import torch

    itemsize = {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = math.prod(shape) * itemsize
        header[name] = {"dtype": CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(Path(path), "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        for shape in shapes.values():
            rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, math.prod(shape))
            for r0 in range(0, rows, block_rows):
                r = min(block_rows, rows - r0)
                if len(shape) == 1:
                    block = torch.ones(r, cols)
                else:
                    block = torch.randn(r, cols, generator=gen).mul_(0.02)
                block = block.to(getattr(torch, dtype))
                fh.write(block.view(torch.uint8).numpy().tobytes() if dtype == "bfloat16" else block.numpy().tobytes())
    return Path(path).stat().st_size


def write_llama_folder(folder: str | os.PathLike, target_bytes: int, hidden: int = 1024, intermediate: int = 2816,
                       vocab: int = 8000, heads: int = 8, seed: int = 0) -> int:
    """A Hugging Face Llama folder (config.json + model.safetensors of `llm_like_shapes`, fp32) of
    about `target_bytes`, for measuring layer-by-layer compression; returns the checkpoint's size.

    >>> write_llama_folder("llama-600m", 600 << 20)               # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shapes = llm_like_shapes(target_bytes, hidden, intermediate, vocab)
    layers = sum(1 for name in shapes if name.endswith("input_layernorm.weight"))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
              "intermediate_size": intermediate, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": heads, "vocab_size": vocab, "max_position_embeddings": 512,
              "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return write_random_checkpoint(folder / "model.safetensors", shapes, seed=seed)
