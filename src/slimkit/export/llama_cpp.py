"""Check a GGUF export in llama.cpp itself (through `llama-cpp-python`, the optional `gguf-check` extra):
perplexity on the held-out text of a slimkit task, with the task's own windows, and decoding speed.

- `perplexity(path, task)`: the same token stream and sliding windows as `CausalLMTask.run`
  (`slimkit.zoo.lm_task.windows`): each window is evaluated from an empty KV cache and scores the
  tokens the previous window did not reach, so the number is comparable with slimkit's perplexity of
  the model the file was exported from.
- `decode_speed(path, prompt)`: tokens/s at batch 1 for the prompt (prefill) and for greedy decoding of
  `new_tokens` tokens after it.

>>> task = sk.zoo.task("smollm2")                                   # doctest: +SKIP
>>> perplexity("smollm2-q8_0.gguf", task)["perplexity"]            # doctest: +SKIP
18.25
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from slimkit.core.errors import SlimError
from slimkit.core.optional import require
from slimkit.zoo.lm_task import CausalLMTask, windows


def open_model(path: str | os.PathLike, n_ctx: int, threads: int = 2, logits_all: bool = False) -> Any:
    """`llama_cpp.Llama` on the GGUF file `path`, quiet, on `threads` threads."""
    require("llama_cpp", "gguf-check", "checking a GGUF file in llama.cpp")
    import llama_cpp

    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=threads,
                               n_threads_batch=threads, logits_all=logits_all, verbose=False)
    except ValueError as exc:   # llama.cpp could not load the file
        raise SlimError(f"llama.cpp cannot load {path}: {exc}") from None


def perplexity(path: str | os.PathLike, task: CausalLMTask, threads: int = 2) -> dict[str, float]:
    """{"perplexity", "tokens", "seconds"} of the GGUF at `path` on `task`'s held-out stream and windows."""
    ids = task.eval_ids().tolist()
    window = task._length(task.window)
    stride = min(task.stride, window - 1) if window > 1 else 1
    llm = open_model(path, window, threads, logits_all=True)
    nll, count, start = 0.0, 0, time.perf_counter()
    try:
        for begin, end, first in windows(len(ids), window, stride):
            llm.reset()
            llm.eval(ids[begin:end])
            logits = np.asarray(llm.scores[first - 1 - begin:end - 1 - begin], dtype=np.float64)
            top = logits.max(-1, keepdims=True)
            logz = top[:, 0] + np.log(np.exp(logits - top).sum(-1))
            targets = np.asarray(ids[first:end])
            nll += float((logz - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
    finally:
        llm.close()
    return {"perplexity": math.exp(nll / max(1, count)), "tokens": count, "seconds": time.perf_counter() - start}


def last_logits(llm: Any) -> np.ndarray:
    """The logits after the last token `llm.eval` took (a view of llama.cpp's buffer; `Llama.scores` holds
    them only with logits_all, and `Llama.eval_logits` copies every row to Python lists)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def decode_speed(path: str | os.PathLike, prompt: list[int], new_tokens: int = 64, threads: int = 2,
                 repeats: int = 3) -> dict[str, float]:
    """Batch-1 tokens/s of llama.cpp on `path`: prefill of `prompt`, then `new_tokens` greedy decoding
    steps (one token per call, as a chat does); the best of `repeats` runs."""
    llm = open_model(path, len(prompt) + new_tokens + 1, threads)
    best_prefill = best_decode = math.inf
    try:
        for _ in range(repeats):
            llm.reset()
            start = time.perf_counter()
            llm.eval(prompt)
            prefill = time.perf_counter() - start
            start = time.perf_counter()
            for _ in range(new_tokens):
                token = int(np.argmax(last_logits(llm)))
                llm.eval([token])
            best_prefill, best_decode = min(best_prefill, prefill), min(best_decode, time.perf_counter() - start)
    finally:
        llm.close()
    return {"prefill_tok_s": len(prompt) / best_prefill, "decode_tok_s": new_tokens / best_decode,
            "threads": threads, "prompt_tokens": len(prompt), "new_tokens": new_tokens}
