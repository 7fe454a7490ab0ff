"""The `minilm-lowrank` bench case: fidelity against rank, and measured speed, for low-rank
factorization of MiniLM's FFN layers (every block's intermediate and output dense layers), by
activation-aware PCA and by plain SVD, at several fractions of the FFN weights kept.

>>> case = run_lowrank_case(CASES["minilm-lowrank"], RunOptions(), deadline=time.monotonic() + 600)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import BASELINE, FULL, QUICK, Candidate, case_result, time_candidates
from bench.machine import machine_info

FFN = r"re:encoder\.layer\.\d+\.(intermediate|output)\.dense$"
VARIANTS = [("pca", 0.5), ("pca", 0.25), ("pca", 0.125), ("svd", 0.5), ("svd", 0.25)]


def run_lowrank_case(spec, opts, deadline: float, progress: Callable[[str], None] = lambda msg: None) -> dict:
    import torch

    import slimkit as sk
    from slimkit.zoo.registry import entry

    start = time.monotonic()
    task = entry("minilm").task()
    base = sk.zoo.load("minilm").eval()
    cands: list[Candidate] = []
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-lowrank-") as tmp:
        path = Path(tmp) / "fp32.slim"
        cands.append(Candidate(BASELINE, "peer", model=base, bytes=sk.save(base, path), score=task.score(base),
                               params=sum(p.numel() for p in base.parameters())))
        for mode, budget in VARIANTS:
            name = f"lowrank {mode} {budget:g} of FFN weights"
            if time.monotonic() > deadline:
                cands.append(Candidate(name, "slimkit", status="skipped", note="no time left"))
                continue
            model = sk.zoo.load("minilm").eval()
            t0 = time.perf_counter()
            sk.share_(model, sk.make_config("lowrank", targets=FFN, budget=budget, mode=mode), data=task)
            made = time.perf_counter() - t0
            out = Path(tmp) / f"{mode}{budget}.slim"
            size = sk.save(model, out)
            score = task.score(model)
            progress(f"[{spec.name}] {name}: fidelity {score:.4f}, {size / 1e6:.1f} MB, {made:.1f} s")
            cands.append(Candidate(name, "slimkit", model=model, bytes=size, score=score, compress_s=made,
                                   params=sum(p.numel() for p in model.parameters())))
        protocol = QUICK if opts.quick else FULL
        with torch.inference_mode():
            time_candidates(cands, task, spec.batch, protocol, opts.threads)
    return case_result(spec.name, cands, score_name="fidelity", batch=spec.batch, command=opts.command,
                       protocol=protocol, threads=opts.threads, wall_s=time.monotonic() - start,
                       info=machine_info(opts.threads), quick=opts.quick, batch_note=" sentences x 40 tokens")
