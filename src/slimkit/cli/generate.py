"""`slimkit generate MODEL "prompt" [--max-new-tokens N] [--threads T]`: continue a prompt with a
causal LM (builtin, .slim or Hugging Face folder); the text on stdout, tokens/s on stderr."""

from __future__ import annotations

import sys

import torch
import typer

from slimkit.cli import common
from slimkit.core.text import clean
from slimkit.zoo.generate import check_compiler, check_options, generate, load_causal_lm


def generate_cmd(model: str = typer.Argument(..., help="builtin:NAME, a .slim file or a Hugging Face folder "
                                                       "holding a causal language model"),
                 prompt: str = typer.Argument(..., help="The text to continue."),
                 max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", help="Tokens to generate."),
                 threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
                 temperature: float = typer.Option(0.0, "--temperature",
                                                   help="0: greedy; above 0: sample at this temperature."),
                 seed: int | None = typer.Option(None, "--seed", help="Random seed for sampling."),
                 tokenizer: str | None = typer.Option(None, "--tokenizer",
                                                      help="A folder with the tokenizer, when the model's own "
                                                           "is not found."),
                 compile_step: bool = typer.Option(False, "--compile",
                                                   help="Static KV cache and a torch.compile'd decode step "
                                                        "(needs a C++ compiler; compiling takes a minute or two)."),
                 as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
                 ) -> None:
    """Generate text from a prompt and report prefill and decode tokens/s (batch 1, KV cache)."""
    check_options(prompt, max_new_tokens, temperature, threads or None)
    if compile_step:
        check_compiler()
    if threads:
        torch.set_num_threads(threads)
    with common.status(f"loading {model}"):
        net, tok = load_causal_lm(model, tokenizer)
    out = generate(net, tok, prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                   compile=compile_step)
    speed = (f"prefill {out.prompt_tokens} tokens: {out.prefill_tokens_per_s:.1f} tokens/s; "
             f"decode {out.new_tokens} tokens: {out.decode_tokens_per_s:.1f} tokens/s "
             f"({torch.get_num_threads()} threads)")
    if as_json:
        common.emit_json({"model": model, "text": out.text, "prompt_tokens": out.prompt_tokens,
                          "new_tokens": out.new_tokens, "prefill_tokens_per_s": out.prefill_tokens_per_s,
                          "decode_tokens_per_s": out.decode_tokens_per_s, "threads": torch.get_num_threads(),
                          "compiled": compile_step})
        return
    sys.stdout.write("\n".join(clean(line, None) for line in out.text.split("\n")) + "\n")
    sys.stdout.flush()
    common.info(speed)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
