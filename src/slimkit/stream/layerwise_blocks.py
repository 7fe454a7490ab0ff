"""Two small steps every per-block worker of `slimkit.stream.layerwise` shares (GPTQ, low-rank, APoZ).

>>> inside("model.layers.3.mlp.fc1", ["model.layers.3"])
True
"""

from __future__ import annotations

from torch import nn


def inside(name: str, blocks: list[str]) -> bool:
    """True if module `name` is one of `blocks` or inside one of them."""
    return any(name == b or name.startswith(b + ".") for b in blocks)


def step(chain, block: nn.Module, advance: bool) -> None:
    """Move the block chain past `block`: run it to make the next block's inputs when `advance`, else
    only count it (nothing after this block is calibrated: no need to run it)."""
    if advance:
        chain.advance(block)
    else:
        chain.position += 1
