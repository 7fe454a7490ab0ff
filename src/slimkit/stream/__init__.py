"""Streaming post-training compression of checkpoints larger than memory, without an architecture.

>>> from slimkit.stream import compress_checkpoint
>>> compress_checkpoint("model.safetensors.index.json", "int8", "model.slim")
"""

from slimkit.stream.api import StreamReport, compress_checkpoint
from slimkit.stream.plan import StreamPlan, plan_from_recipe

__all__ = ["StreamPlan", "StreamReport", "compress_checkpoint", "plan_from_recipe"]
