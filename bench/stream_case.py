"""The `stream` bench case: int8 of generated LLM-like fp32 checkpoints, compressed without an
architecture by `slimkit.stream` in a child process whose peak RSS is measured (`os.wait4`).

- 2 GiB checkpoint (Llama-style, hidden 2048, 8 layers, 32k vocab): peak RSS, output size and
  throughput against the issue's targets;
- 6 GiB checkpoint (29 layers), only with `SLIMKIT_BENCH_STREAM_6G=1` (generating it takes minutes).

The checkpoints are written to a temporary folder on disk (`SLIMKIT_BENCH_TMP`, default the system's
temporary folder) and removed afterwards. Throughput is the checkpoint's tensor bytes over the time
`compress_checkpoint` took (reading, encoding, writing, fsync), on one thread.

>>> case = run_stream_case(CASES["stream"], RunOptions(), deadline=time.monotonic() + 600)
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import BASELINE, Candidate, Protocol, case_result
from bench.machine import machine_info
from bench.targets import TARGETS, Target

GIB = 1 << 30
CHILD = ("import json, sys; from slimkit.stream.api import compress_checkpoint; "
         "r = compress_checkpoint(sys.argv[1], 'int8', sys.argv[2]); "
         "print(json.dumps({'seconds': r.seconds, 'bytes': r.bytes, 'input_bytes': r.input_bytes}), file=sys.stderr)")


def _extra(key: str) -> Callable[[dict, dict], float | None]:
    return lambda row, rows: (row.get("extra") or {}).get(key)


for _row in ("int8 2 GiB", "int8 6 GiB"):
    TARGETS.extend([
        Target("stream", _row, "peak RSS <= 0.3x checkpoint", _extra("peak_ratio"), lambda v: v <= 0.3,
               "{:.3f}x", "#9"),
        Target("stream", _row, "output <= 0.26x checkpoint", _extra("out_ratio"), lambda v: v <= 0.26,
               "{:.3f}x", "#9"),
        Target("stream", _row, ">= 100 MB/s", _extra("mb_s"), lambda v: v >= 100, "{:.0f} MB/s", "#9"),
    ])


def measure(ck: Path, out: Path) -> dict:
    """Compress `ck` with the int8 recipe in a child process: its peak RSS, time, sizes."""
    from bench.rss import run_measured

    env = dict(os.environ, OMP_NUM_THREADS="1")
    code, peak, wall, last = run_measured([sys.executable, "-c", CHILD, str(ck), str(out)], env)
    if code != 0:
        raise RuntimeError(f"streaming compression failed ({code}): {last}")
    report = json.loads(last)
    size = ck.stat().st_size
    return {"checkpoint_bytes": size, "peak_rss": peak, "peak_ratio": round(peak / size, 4),
            "out_bytes": report["bytes"], "out_ratio": round(report["bytes"] / size, 4),
            "seconds": round(report["seconds"], 2), "wall_s": round(wall, 2),
            "mb_s": round(report["input_bytes"] / 1e6 / report["seconds"], 1)}


def _row(label: str, size: int, folder: Path, progress: Callable[[str], None]) -> tuple[Candidate, Candidate]:
    from bench.synth import llm_like_shapes, write_random_checkpoint

    ck, out = folder / f"{label}.safetensors", folder / f"{label}.slim"
    t0 = time.perf_counter()
    write_random_checkpoint(ck, llm_like_shapes(size))
    progress(f"{label}: wrote {ck.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s; compressing")
    m = measure(ck, out)
    progress(f"{label}: peak RSS {m['peak_rss'] / 1e6:.0f} MB ({m['peak_ratio']:.3f}x), output "
             f"{m['out_ratio']:.3f}x, {m['mb_s']:.0f} MB/s, {m['seconds']:.1f} s")
    note = (f"peak RSS {m['peak_rss'] / 1e6:.0f} MB = {m['peak_ratio']:.3f}x of the checkpoint; "
            f"{m['mb_s']:.0f} MB/s; child wall {m['wall_s']:.0f} s")
    base = Candidate(BASELINE if label.endswith("2gib") else f"fp32 checkpoint {label}", "peer", file=str(ck),
                     bytes=m["checkpoint_bytes"], note="generated fp32 .safetensors (input)")
    row = Candidate(f"int8 {size // GIB} GiB", "slimkit", file=str(out), bytes=m["out_bytes"],
                    compress_s=m["seconds"], note=note, extra=m)
    for path in (ck, out):
        path.unlink()
    return base, row


def run_stream_case(spec, opts, deadline: float, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The case record (same shape as the model cases', rendered by `bench.harness`)."""
    start = time.monotonic()

    def say(msg: str) -> None:
        progress(f"[{spec.name}] {msg}")

    sizes = [("ck-2gib", 2 * GIB)] + ([("ck-6gib", 6 * GIB)] if os.environ.get("SLIMKIT_BENCH_STREAM_6G") else [])
    cands: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-stream-", dir=os.environ.get("SLIMKIT_BENCH_TMP")) as tmp:
        for label, size in sizes:
            try:
                cands += _row(label, size, Path(tmp), say)
            except Exception as exc:  # noqa: BLE001 - a failure is a row, not a crash
                cands.append(Candidate(f"int8 {size // GIB} GiB", "slimkit", status="failed",
                                       note=f"{type(exc).__name__}: {str(exc)[:160]}"))
    if len(sizes) == 1:
        cands.append(Candidate("int8 6 GiB", "slimkit", status="skipped",
                               note="set SLIMKIT_BENCH_STREAM_6G=1 (generating 6 GiB takes minutes)"))
    case = case_result(spec.name, cands, score_name="none", batch=1, command=opts.command,
                       protocol=Protocol(rounds=1, repeats_b1=0, repeats_batched=0, warmup=0), threads=1,
                       wall_s=time.monotonic() - start, info=machine_info(1), quick=opts.quick,
                       batch_note=" (no inference: streaming compression of a bare checkpoint, one thread)")
    for row in case["rows"]:   # each output against its own checkpoint
        if row.get("extra", {}).get("out_ratio"):
            row["ratio"] = round(1 / row["extra"]["out_ratio"], 3)
    return case
