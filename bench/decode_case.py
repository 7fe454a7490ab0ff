"""The `decode` bench case: how fast a .slim file decodes back to float weights.

A synthetic stack of Linear layers with MiniLM-like shapes (~75 MB of fp32 weights) is stored
with several codec chains; each row is the best of 3 `load_state_dict` calls (read, validate,
decode every tensor), reported as MB/s of decoded fp32 weights. The issue's target (#5) is
>= 100 MB/s; torch's own `safetensors` load of the fp32 file is the peer.

>>> case = run_decode_case(CASES["decode"], RunOptions(), deadline=time.monotonic() + 300)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import BASELINE, Candidate, Protocol, case_result
from bench.machine import machine_info
from bench.targets import TARGETS, Target

SHAPES = [(1536, 384), (384, 1536), (384, 384), (384, 384), (384, 384), (384, 384)] * 6   # ~6 blocks


def _mb_s(row: dict, rows: dict) -> float | None:
    return (row.get("extra") or {}).get("mb_s")


for _row in ("kmeans 4-bit (entropy)", "pruned 90% + kmeans 4-bit", "pruned 90% (float16 values)"):
    TARGETS.append(Target("decode", _row, ">= 100 MB/s decoded", _mb_s, lambda v: v >= 100, "{:.0f} MB/s", "#5"))


def _model(seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(i, o) for o, i in SHAPES])


def _variants() -> list[tuple[str, Callable]]:
    import slimkit as sk

    def kmeans(m):
        sk.share_(m, sk.make_config("kmeans", bits=4, max_iter=20))

    def pruned(m):
        sk.prune_(m, sk.make_config("magnitude", sparsity=0.9, epochs=0))
        sk.share_(m, sk.make_config("kmeans", bits=4, max_iter=20))

    def sparse(m):
        sk.prune_(m, sk.make_config("magnitude", sparsity=0.9, value_dtype="float16", epochs=0))

    return [("kmeans 4-bit (entropy)", kmeans), ("pruned 90% + kmeans 4-bit", pruned),
            ("pruned 90% (float16 values)", sparse)]


def _time_load(path: Path, loader: Callable) -> tuple[float, int]:
    best, decoded = float("inf"), 0
    for _ in range(3):
        t0 = time.perf_counter()
        state = loader(path)
        best = min(best, time.perf_counter() - t0)
        decoded = sum(t.numel() * 4 for t in state.values() if t.is_floating_point())
    return best, decoded


def run_decode_case(spec, opts, deadline: float, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """The case record: one row per codec chain, decode MB/s in `extra`."""
    import safetensors.torch

    import slimkit as sk

    start = time.monotonic()
    cands: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-decode-") as tmp:
        fp32 = Path(tmp) / "fp32.safetensors"
        safetensors.torch.save_file({k: v.contiguous() for k, v in _model().state_dict().items()}, fp32)
        secs, decoded = _time_load(fp32, safetensors.torch.load_file)
        cands.append(Candidate(BASELINE, "peer", file=str(fp32), bytes=fp32.stat().st_size,
                               note=f"safetensors load_file: {decoded / 1e6 / secs:.0f} MB/s",
                               extra={"mb_s": round(decoded / 1e6 / secs, 1)}))
        for name, apply in _variants():
            if time.monotonic() > deadline:
                cands.append(Candidate(name, "slimkit", status="skipped", note="no time left"))
                continue
            try:
                model = _model()
                t0 = time.perf_counter()
                apply(model)
                path = Path(tmp) / f"{len(cands)}.slim"
                sk.save(model, path)
                made = time.perf_counter() - t0
                secs, decoded = _time_load(path, sk.load_state_dict)
                mb_s = decoded / 1e6 / secs
                progress(f"[{spec.name}] {name}: {path.stat().st_size / 1e6:.1f} MB, decodes at {mb_s:.0f} MB/s")
                cands.append(Candidate(name, "slimkit", file=str(path), bytes=path.stat().st_size,
                                       compress_s=made, note=f"load_state_dict {secs * 1e3:.0f} ms",
                                       extra={"mb_s": round(mb_s, 1), "decoded_bytes": decoded}))
            except Exception as exc:  # noqa: BLE001 - a failure is a row, not a crash
                cands.append(Candidate(name, "slimkit", status="failed", note=f"{type(exc).__name__}: {exc}"[:160]))
        case = case_result(spec.name, cands, score_name="none", batch=1, command=opts.command,
                           protocol=Protocol(rounds=3, repeats_b1=0, repeats_batched=0, warmup=0), threads=1,
                           wall_s=time.monotonic() - start, info=machine_info(1), quick=opts.quick,
                           batch_note=" (no inference: decoding a .slim file back to fp32 weights, best of 3)")
    return case
