"""Tokens/s of SmolLM2-135M at batch 1 (issue #21 part 4): torch fp32 and bf16 against slimkit artifacts.

A 128-token prompt (this repository's README), 64 new tokens, greedy, KV cache; each model warms up
(its kernels settle: `slimkit.zoo.generate`) and the best of `--reps` runs is kept. Prefill and decode
are timed apart. File bytes are the artifact's size on disk (fp32: the cached safetensors folder).

    python -m bench.decode_tokens int8.slim int4.slim [--threads 2] [--reps 3]
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import torch

from slimkit.zoo import smollm2
from slimkit.zoo.generate import generate, load_causal_lm


def _prompt(tokenizer) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:128]
    return tokenizer.decode(ids)


def _measure(label: str, model, tokenizer, prompt: str, reps: int, size: int) -> None:
    best = None
    for i in range(reps):
        out = generate(model, tokenizer, prompt, max_new_tokens=64, warmup=i == 0)
        if best is None or out.decode_s < best.decode_s:
            best = out
    print(f"{label:28s} prefill {best.prefill_tokens_per_s:7.1f} tok/s  decode {best.decode_tokens_per_s:6.2f} tok/s"
          f"  ({best.prompt_tokens} + {best.new_tokens} tokens)  file {size / 1e6:7.1f} MB  "
          f"text {best.text[:40]!r}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="*", help=".slim files of builtin:smollm2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fp32_bytes = sum(p.stat().st_size for p in smollm2.folder().glob("*.safetensors"))
    model, tok = load_causal_lm("builtin:smollm2")
    prompt = _prompt(tok)
    if not args.skip_torch:
        _measure("torch fp32", model, tok, prompt, args.reps, fp32_bytes)
        model.to(torch.bfloat16)
        _measure("torch bf16", model, tok, prompt, args.reps, fp32_bytes // 2)
    del model
    gc.collect()
    for path in args.artifacts:
        model, _ = load_causal_lm(path)
        _measure(f"slimkit {Path(path).name}", model, tok, prompt, args.reps, Path(path).stat().st_size)
        del model
        gc.collect()


if __name__ == "__main__":
    main()
