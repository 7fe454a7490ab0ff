"""Streaming post-training compression of checkpoints larger than memory.

Weight-only recipes run tensor by tensor without an architecture (`compress_checkpoint`); GPTQ and
activation-aware low-rank run block by block on a Hugging Face folder, each block read from disk
when it is worked on (`slimkit.stream.layerwise.compress_layerwise`).

>>> from slimkit.stream import compress_checkpoint
>>> compress_checkpoint("model.safetensors.index.json", "int8", "model.slim")
>>> from slimkit.stream.layerwise import compress_layerwise
>>> compress_layerwise("path/to/llama-folder", "int4", "llama-int4.slim")
"""

from slimkit.stream.api import StreamReport, compress_checkpoint
from slimkit.stream.plan import StreamPlan, plan_from_recipe

__all__ = ["StreamPlan", "StreamReport", "compress_checkpoint", "plan_from_recipe"]
