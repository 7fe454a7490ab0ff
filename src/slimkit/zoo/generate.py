"""Text generation with a causal language model slimkit loads, timed: what `slimkit generate` runs.

`load_causal_lm(ref)` resolves a model reference (`builtin:smollm2`, a `.slim` file, a Hugging Face
folder) to a `*ForCausalLM` and its tokenizer; `generate(model, tokenizer, prompt)` decodes greedily
(or samples, with a temperature and a seed) and times the prompt's forward pass (prefill) apart from
the new tokens (decode), at batch 1 with the KV cache. Compressed layers run their fastest correct
kernel (`slimkit.nn.kernels`): the first call in each shape measures the candidates, so a warm-up
generation runs first unless `warmup=False`.

`compile=True` decodes with a static KV cache and the one-token forward pass compiled by
`torch.compile` (inductor; needs a C++ compiler): Python's per-token overhead (30 decoder layers of
small ops) goes, and the compressed layers run the kernels their eager warm-up settled on
(`slimkit.nn.kernels.settled_kernel`). Compiling costs one to two minutes on 2 cores the first time
(inductor caches it on disk), so it pays for long generations and repeated runs, not for a few tokens.

>>> model, tokenizer = load_causal_lm("builtin:smollm2")                      # doctest: +SKIP
>>> out = generate(model, tokenizer, "The capital of France is", max_new_tokens=8)  # doctest: +SKIP
>>> out.text, out.decode_tokens_per_s                                         # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.core.errors import ConfigError, SlimError
from slimkit.core.provenance import task_for
from slimkit.nn import siblings
from slimkit.zoo.embedding_task import _load_tokenizer
from slimkit.zoo.hf import quiet
from slimkit.zoo.lm_task import CausalLMTask
from slimkit.zoo.resolve import resolve
from slimkit.zoo.token_task import ByteTokenizer

MAX_NEW_TOKENS = 100_000
WARMUP_TOKENS = 8   # enough single-row calls for every layer kind to settle its kernel (slimkit.nn.kernels)


@dataclass(frozen=True)
class Generation:
    """What one `generate` call produced and how fast: token counts and seconds for the prompt's
    forward pass (prefill) and for the new tokens after the first (decode)."""

    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else math.inf

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens per second after the first (the first comes out of the prefill)."""
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else math.nan


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is a Hugging Face causal LM that can `generate()` (a `*ForCausalLM`)."""
    return callable(getattr(model, "generate", None)) and type(model).__name__.endswith(
        ("ForCausalLM", "LMHeadModel"))


def load_causal_lm(ref: str, tokenizer: str | Path | None = None) -> tuple[nn.Module, Any]:
    """The causal LM `ref` names, in eval mode, and its tokenizer: the folder `tokenizer` when given,
    else the model's own (the builtin's, or the Hugging Face folder it came from). One-line SlimError
    when it is not a causal LM or no tokenizer is found."""
    model = resolve(ref)
    if not is_causal_lm(model):
        raise SlimError(f"{ref}: not a causal language model ({type(model).__name__} has no generate())")
    model.eval()
    if tokenizer is not None:
        return model, _load_tokenizer(Path(tokenizer))
    task = task_for(model)
    tok = task.tokenizer() if isinstance(task, CausalLMTask) else None
    if tok is None or isinstance(tok, ByteTokenizer):
        raise SlimError(f"{ref}: no tokenizer found for this model; pass one (a folder with tokenizer.json) "
                        "with --tokenizer")
    return model, tok


def check_options(prompt: str, max_new_tokens: int, temperature: float, threads: int | None) -> None:
    """One-line ConfigErrors (ValueError) for options no generation can use."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("the prompt is empty")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or not 1 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ConfigError(f"max_new_tokens must be an integer in 1..{MAX_NEW_TOKENS}, got {max_new_tokens!r}")
    if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")


def generate(model: nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int = 64, temperature: float = 0.0,
             seed: int | None = None, warmup: bool = True, compile: bool = False) -> Generation:
    """Continue `prompt` by up to `max_new_tokens` tokens (greedy when `temperature` is 0, else sampled
    with `seed`) and time it; see the module docstring."""
    check_options(prompt, max_new_tokens, temperature, None)
    if compile:
        check_compiler()
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.numel() == 0:
        raise ConfigError("the prompt has no tokens")
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and ids.shape[1] + max_new_tokens > limit:
        raise ConfigError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens ({max_new_tokens}) exceed the "
                         f"model's {limit} positions")
    siblings.link(model)   # a model compressed in memory stacks its sibling layers too (slimkit.nn.siblings)
    options = {"do_sample": temperature > 0, "pad_token_id": _pad_id(tokenizer, model),
               **_compiled(compile, ids.shape[1] + max_new_tokens)}
    if temperature > 0:
        options.update(temperature=float(temperature), top_k=0, top_p=1.0)
    with torch.inference_mode(), quiet():
        if warmup or compile:   # compressed layers measure their kernels in the first calls of each shape
            eager = {k: v for k, v in options.items() if k not in COMPILE_OPTIONS}
            model.generate(ids, max_new_tokens=WARMUP_TOKENS, min_new_tokens=WARMUP_TOKENS, **eager)
        if compile:   # traces and compiles the one-token step (static cache shapes) before timing
            model.generate(ids, max_new_tokens=2, min_new_tokens=2, **options)
        if seed is not None:
            torch.manual_seed(seed)
        keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        start = time.perf_counter()
        model(ids, use_cache=True, **keep)   # as generate's own first step: logits of the last position only
        prefill = time.perf_counter() - start
        if seed is not None:
            torch.manual_seed(seed)
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=max_new_tokens, **options)
        total = time.perf_counter() - start
    new = out[0, ids.shape[1]:]
    text = tokenizer.decode(new, skip_special_tokens=True)
    return Generation(text, int(ids.shape[1]), int(new.numel()), prefill, max(0.0, total - prefill))


def _pad_id(tokenizer: Any, model: nn.Module) -> int | None:
    for value in (getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "eos_token_id", None),
                  getattr(getattr(model, "config", None), "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return None


COMPILE_OPTIONS = ("cache_implementation", "compile_config", "max_cache_len")


def check_compiler() -> None:
    """ConfigError unless torch.compile can build CPU kernels here (a C++ compiler on the PATH)."""
    if not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        raise ConfigError("compiled decoding needs a C++ compiler (c++, g++ or clang++) for torch.compile")


def _compiled(enabled: bool, cache_len: int) -> dict:
    """generate() options for a static KV cache of `cache_len` positions with the decode step compiled
    (also on the CPU, which transformers leaves out of its automatic compilation). The cache's length
    is in the compiled step's shapes: the two-token compile warm-up sizes it for the whole generation,
    or the timed run would compile again."""
    if not enabled:
        return {}
    from transformers import CompileConfig

    config = CompileConfig(fullgraph=False, dynamic=False, mode="default")
    config._compile_all_devices = True
    return {"cache_implementation": "static", "compile_config": config, "max_cache_len": cache_len}
