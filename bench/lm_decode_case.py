"""The `lm-decode` bench case (issue #21 parts 4 and 6): SmolLM2-135M decoding at batch 1, slimkit
against its peers, in one run.

Rows: torch fp32 (the model `builtin:smollm2` loads, the baseline), torch bf16 (`model.to(torch.bfloat16)`),
slimkit int8 (the `int8` recipe's method: int8 weights and embeddings), slimkit int4 (round-to-nearest,
asymmetric, groups of 64, embeddings at 8 bits: the layout of the `awq-int4` recipe, without its search:
the RTN reference of issue #21's 4-bit target) and slimkit gptq-int4 (the `gptq-int4` recipe: the same
layout, error-compensated on the task's calibration text),
each saved to a .slim file and loaded back; llama.cpp Q8_0 and Q4_0 (GGUF written by `slimkit export`
from the fp32 model) through `llama-cpp-python` when it is importable, else a skipped row saying so;
torchao is not tried (it needs a newer torch than the pinned 2.13 for its CPU int4 path; see PEERS.md).

Each torch bf16 and slimkit row also has a "compiled" row: the same model decoding through
`generate(compile=True)` (the one-token step compiled by torch.compile; its first call, compile
included, in the note).

For each: decode tokens/s (a 128-token prompt, 64 new tokens, greedy, KV cache; best of `REPS`, after a
warm-up that settles slimkit's kernels), prefill tokens/s, perplexity on the held-out English of the
smollm2 task (and KL to fp32), file bytes. `ms_b1` is the time per decoded token, so `speedup_b1`
against torch fp32 reads as a tokens/s ratio.

>>> case = run_lm_decode_case(CASES["lm-decode"], RunOptions(), deadline=time.monotonic() + 600)
"""

from __future__ import annotations

import gc
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import BASELINE, Candidate, Protocol, case_result
from bench.machine import cpu_flags, machine_info

REPS = 3
NEW_TOKENS = 64
LLAMA_NOTE = ("llama-cpp-python is not importable here (pip builds it from source with cmake, ~40 min on "
              "2 cores: the optional `gguf-check` extra)")
CONFIGS = {"slimkit int8": {"method": "int8", "linear": True, "embeddings": True},
           "slimkit int4 g64": {"method": "rtn", "bits": 4, "symmetric": False, "group_size": 64,
                                "embedding_bits": 8},
           "slimkit gptq-int4": {"recipe": "gptq-int4"}}
COMPILED = ("slimkit int8", "slimkit int4 g64")   # gptq-int4 has the int4 row's layout: the same kernels


def _prompt(tokenizer) -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:128])


def _speed(cand: Candidate, model, tokenizer, prompt: str, compile: bool = False) -> None:
    """Decode and prefill tokens/s of `model`, best of REPS (the first run warms up; with `compile`, the
    one-token step compiled by `torch.compile`, whose first run also compiles: its seconds are kept)."""
    from slimkit.zoo.generate import generate

    best = None
    for i in range(REPS):
        start = time.perf_counter()
        out = generate(model, tokenizer, prompt, max_new_tokens=NEW_TOKENS, warmup=i == 0, compile=compile)
        if compile and i == 0:
            cand.extra["compile_s"] = round(time.perf_counter() - start, 1)
        if best is None or out.decode_s < best.decode_s:
            best = out
    cand.ms_b1 = 1e3 / best.decode_tokens_per_s
    cand.extra.update(decode_tok_s=round(best.decode_tokens_per_s, 2),
                      prefill_tok_s=round(best.prefill_tokens_per_s, 1), text=best.text[:60])


def _score(cand: Candidate, task, model) -> None:
    metrics = task.metrics(model)
    cand.score = metrics["ppl_ratio"]
    cand.extra.update(perplexity=round(metrics["perplexity"], 3), kl=round(metrics["kl"], 5))


def _torch_rows(task, tokenizer, prompt, fp32_bytes, progress) -> list[Candidate]:
    import torch

    from slimkit.zoo import smollm2

    model = smollm2.load().eval()
    rows = []
    for name, cast in ((BASELINE, None), ("torch bf16", torch.bfloat16)):
        if cast is not None:
            model.to(cast)
        cand = Candidate(name, "peer", bytes=fp32_bytes // (2 if cast else 1),
                         note="model.to(torch.bfloat16)" if cast else "transformers eager, fp32")
        if cast is None or cpu_flags().get("BF16"):
            _score(cand, task, model)
        else:  # emulated bf16 took ~13 of the case's 20 minutes for one perplexity pass
            cand.note += "; perplexity not measured: this CPU has no AVX-512 BF16 (emulated, ~13 min)"
        _speed(cand, model, tokenizer, prompt)
        progress(f"[lm-decode] {name}: {cand.extra['decode_tok_s']} tok/s, "
                 f"perplexity {cand.extra.get('perplexity', 'not measured')}")
        rows.append(cand)
    rows.append(_compiled_row("torch bf16", rows[-1], model, tokenizer, prompt, progress))
    return rows


def _compiled_row(name: str, eager: Candidate, model, tokenizer, prompt: str, progress) -> Candidate:
    """`eager`'s model decoding with its one-token step compiled (`generate(compile=True)`): the same
    file and perplexity, its own tokens/s; the compile's seconds in the note."""
    cand = Candidate(f"{name} compiled", eager.kind, file=eager.file, bytes=eager.bytes, score=eager.score)
    try:
        _speed(cand, model, tokenizer, prompt, compile=True)
    except Exception as exc:  # noqa: BLE001 - a compiler that fails here is a row, not a crash
        cand.status, cand.note = "failed", f"{type(exc).__name__}: {exc}"[:160]
        return cand
    cand.extra.update({k: v for k, v in eager.extra.items() if k in ("perplexity", "kl")})
    cand.note = (f"generate(compile=True): the one-token step compiled by torch.compile (first call "
                 f"{cand.extra['compile_s']} s, compile included); perplexity: the eager row's")
    progress(f"[lm-decode] {cand.name}: {cand.extra['decode_tok_s']} tok/s")
    return cand


def _slimkit_rows(name: str, tmp: Path, task, tokenizer, prompt, progress) -> list[Candidate]:
    import slimkit as sk
    from slimkit.nn.kernels import runtime_report
    from slimkit.zoo import smollm2
    from slimkit.zoo.generate import load_causal_lm

    start = time.perf_counter()
    config = CONFIGS[name]
    if "recipe" in config:   # calibrated on the task's calibration text, never its held-out text
        model = sk.run_recipe(smollm2.load().eval(), sk.load_recipe(config["recipe"]), task)
    else:
        model = sk.apply_(smollm2.load().eval(), sk.make_config(**config), None)
    path = tmp / f"{name.split()[-1]}.slim"
    sk.save(model, path)
    made = time.perf_counter() - start
    del model
    gc.collect()
    model, _ = load_causal_lm(str(path))
    cand = Candidate(name, "slimkit", file=str(path), bytes=path.stat().st_size, compress_s=made)
    _speed(cand, model, tokenizer, prompt)
    report = runtime_report(model)
    kernels: dict[str, int] = {}
    for layer in report["layers"].values():
        kernel = layer["choices"].get("rows<=1", "dense")
        kernels[kernel] = kernels.get(kernel, 0) + 1
    cand.note = "batch-1 kernels: " + ", ".join(f"{n} x{c}" for n, c in sorted(kernels.items()))
    cand.extra["cache_mb"] = round(report["cache_bytes"] / 1e6, 1)
    _score(cand, task, model)
    progress(f"[lm-decode] {name}: {cand.extra['decode_tok_s']} tok/s, perplexity {cand.extra['perplexity']}")
    return [cand] + ([_compiled_row(name, cand, model, tokenizer, prompt, progress)] if name in COMPILED else [])


SAME_FILE = "llama.cpp Q8_0 of slimkit int8"   # the int8 row's .slim through `slimkit export --gguf`


def _llama_rows(tmp: Path, task, tokenizer, prompt, progress) -> list[Candidate]:
    """llama.cpp on GGUF files slimkit writes: Q8_0 and Q4_0 of the fp32 model (llama.cpp's own
    quantization, a peer), and Q8_0 of the slimkit int8 row's file (issue #21: llama.cpp's perplexity
    within 1% of slimkit's for the same file; its int8 codes are kept in Q8_0's blocks of 32, each block
    with its row's scale rounded to fp16)."""
    names = ("llama.cpp Q8_0", "llama.cpp Q4_0", SAME_FILE)
    if importlib.util.find_spec("llama_cpp") is None:
        return [Candidate(n, "peer", status="skipped", note=LLAMA_NOTE) for n in names]
    import slimkit as sk
    from slimkit.export import llama_cpp
    from slimkit.export.gguf import export_gguf
    from slimkit.zoo import smollm2

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"][0].tolist()
    sources = {"llama.cpp Q8_0": smollm2.load, "llama.cpp Q4_0": smollm2.load,
               SAME_FILE: lambda: sk.load(tmp / "int8.slim", runtime="torch")}
    rows = []
    for name in names:
        qtype = name.split()[1].lower()
        path = tmp / f"{name.replace(' ', '-').replace('.', '')}.gguf"
        try:
            model = sources[name]().eval()
            written = export_gguf(model, path, qtype=qtype)
            del model
            gc.collect()
            speed = llama_cpp.decode_speed(path, ids, NEW_TOKENS, repeats=REPS)
            ppl = llama_cpp.perplexity(path, task)["perplexity"]
        except Exception as exc:  # noqa: BLE001 - a failure is a row, not a crash
            rows.append(Candidate(name, "peer", status="failed", note=f"{type(exc).__name__}: {exc}"[:160]))
            continue
        ratio = task.reference_pass().perplexity / ppl
        note = "GGUF by slimkit export, llama-cpp-python"
        if name == SAME_FILE:
            note += (f"; tensors: {written['codes_kept']} codes kept, {written['exact']} exact, "
                     f"{written['requantized']} re-quantized")
        rows.append(Candidate(name, "peer", file=str(path), bytes=written["bytes"], score=ratio,
                              ms_b1=1e3 / speed["decode_tok_s"], note=note,
                              extra={"decode_tok_s": round(speed["decode_tok_s"], 2),
                                     "prefill_tok_s": round(speed["prefill_tok_s"], 1), "perplexity": round(ppl, 3)}))
        progress(f"[lm-decode] {name}: {speed['decode_tok_s']:.1f} tok/s, perplexity {ppl:.3f}")
    return rows


def run_lm_decode_case(spec, opts, deadline: float, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The case record: one row per variant, tokens/s and perplexity in `extra` (see the module docstring)."""
    from slimkit.zoo import smollm2
    from slimkit.zoo.generate import load_causal_lm

    start = time.monotonic()
    task = smollm2.smollm2_task()
    _, tokenizer = load_causal_lm("builtin:smollm2")
    prompt = _prompt(tokenizer)
    fp32_bytes = sum(p.stat().st_size for p in smollm2.folder().glob("*.safetensors"))
    cands = _torch_rows(task, tokenizer, prompt, fp32_bytes, progress)
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-lm-") as tmp:
        for name in CONFIGS:
            if time.monotonic() > deadline:
                cands.append(Candidate(name, "slimkit", status="skipped", note="no time left"))
                continue
            try:
                cands += _slimkit_rows(name, Path(tmp), task, tokenizer, prompt, progress)
            except Exception as exc:  # noqa: BLE001 - a failure is a row, not a crash
                cands.append(Candidate(name, "slimkit", status="failed", note=f"{type(exc).__name__}: {exc}"[:160]))
            gc.collect()
        cands += _llama_rows(Path(tmp), task, tokenizer, prompt, progress)
        cands.append(Candidate("torchao int8 / int4 weight-only", "peer", status="skipped",
                               note="torchao is not installed; its CPU int4 layout needs a newer torch than 2.13"))
        return case_result(spec.name, cands, score_name="ppl_ratio", batch=1, command=opts.command,
                           protocol=Protocol(rounds=REPS, repeats_b1=NEW_TOKENS, repeats_batched=0, warmup=1),
                           threads=opts.threads, wall_s=time.monotonic() - start, info=machine_info(opts.threads),
                           quick=opts.quick, batch_note=f" token (128-token prompt, {NEW_TOKENS} new, greedy)")
