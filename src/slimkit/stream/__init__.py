"""Streaming post-training compression of checkpoints larger than memory.

Weight-only recipes run tensor by tensor without an architecture (`compress_checkpoint`); recipes of
one data-dependent stage whose method streams block by block (GPTQ, activation-aware low-rank,
one-shot APoZ) run on a Hugging Face folder, each block read from disk when it is worked on
(`slimkit.stream.layerwise.compress_layerwise`). Which method streams how is said by the method's
own package (`slimkit.core.streaming`); this package only orchestrates.

>>> from slimkit.stream import compress_checkpoint
>>> compress_checkpoint("model.safetensors.index.json", "int8", "model.slim")
>>> from slimkit.stream.layerwise import compress_layerwise
>>> compress_layerwise("path/to/llama-folder", "int4", "llama-int4.slim")
>>> score_streamed("path/to/llama-folder", "llama-int4.slim", max_drop=5)["drop"]   # measured on the file
"""

from slimkit.stream.api import StreamReport, compress_checkpoint
from slimkit.stream.plan import KMeansSpec, QuantSpec, StreamPlan, plan_from_recipe
from slimkit.stream.score import score_streamed

__all__ = ["KMeansSpec", "QuantSpec", "StreamPlan", "StreamReport", "compress_checkpoint", "plan_from_recipe",
           "score_streamed"]
