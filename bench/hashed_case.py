"""The `hashed-vs-dense` bench case: HashedNets' own comparison on digits.

For each training seed, lenet-300-100 with every Linear hashed to 1/8 and 1/64 of its weights
(the `hashed` method, random init, trained on the training split) against a dense MLP of the
same shape family (hidden widths in the 3:1 ratio of 300:100) and a one-hidden-layer MLP, each
with about as many weights, trained from scratch with the zoo's own settings. Rows report test
accuracy as mean +- sd over the seeds and the file size of the seed-0 model; whichever wins is
what the table says.

>>> case = run_hashed_case(CASES["hashed-vs-dense"], RunOptions(), deadline=time.monotonic() + 300)
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import Candidate, Protocol, case_result
from bench.machine import machine_info

SEEDS = 5
RATIOS = ((1 / 8, "1/8"), (1 / 64, "1/64"))
LENET_WEIGHTS = 64 * 300 + 300 * 100 + 100 * 10


def dense_widths(weights: int) -> tuple[int, int]:
    """(h1, h2 = h1/3) whose 64-h1-h2-10 MLP has about `weights` weights."""
    a, b = 1 / 3, 64 + 10 / 3          # h1^2/3 + (64 + 10/3) h1 = weights
    h1 = max(3, round((-b + math.sqrt(b * b + 4 * a * weights)) / (2 * a)))
    return h1, max(1, round(h1 / 3))


def _accuracy_and_bytes(model, task, folder: Path, name: str) -> tuple[float, int, int]:
    import slimkit as sk

    path = folder / f"{name}.slim"
    sk.save(model, path)
    params = sum(p.numel() for p in model.parameters())
    return task.score(sk.load(path)), path.stat().st_size, params


def run_hashed_case(spec, opts, deadline: float, progress: Callable[[str], None] = lambda msg: None) -> dict:
    import slimkit as sk
    from slimkit.core.provenance import task_for
    from slimkit.eval.measure import fp32_safetensors_bytes
    from slimkit.zoo.digits import load_digits
    from slimkit.zoo.lenet import LeNet300100
    from slimkit.zoo.registry import entry
    from slimkit.zoo.train import fit

    start = time.monotonic()
    seeds = 1 if opts.quick else (opts.seeds or SEEDS)
    settings = entry("lenet-300-100").train_settings
    data = load_digits()
    scores: dict[str, list[float]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    with tempfile.TemporaryDirectory(prefix="slimkit-bench-hashed-") as tmp:
        folder = Path(tmp)
        for seed in range(seeds):
            if seed and time.monotonic() > deadline:
                progress(f"[{spec.name}] no time left, stopping at {seed} seed(s)")
                break
            for ratio, label in RATIOS:
                import torch

                torch.manual_seed(seed)
                model = LeNet300100()
                model.__dict__["slimkit_base"] = {"kind": "zoo", "name": "lenet-300-100"}
                task = task_for(model)
                sk.share_(model, sk.make_config("hashed", ratio=ratio, seed=seed, init="random",
                                                finetune_epochs=60, lr=0.002), data=task)
                name = f"hashed {label}"
                acc, size, params = _accuracy_and_bytes(model, task, folder, f"h{seed}{label[2:]}")
                scores.setdefault(name, []).append(acc)
                sizes.setdefault(name, (size, params))
                h1, h2 = dense_widths(round(ratio * LENET_WEIGHTS))
                torch.manual_seed(seed)
                dense = LeNet300100(hidden=(h1, h2))
                fit(dense, data, seed=seed, **settings)
                dname = f"dense {h1}-{h2} (~{label} weights)"
                acc = task.score(dense)
                size = fp32_safetensors_bytes(dense.state_dict())
                params = sum(p.numel() for p in dense.parameters())
                scores.setdefault(dname, []).append(acc)
                sizes.setdefault(dname, (size, params))
                h = max(1, round(ratio * LENET_WEIGHTS / (64 + 10)))   # one hidden layer, same weights
                torch.manual_seed(seed)
                single = torch.nn.Sequential(torch.nn.Linear(64, h), torch.nn.ReLU(), torch.nn.Linear(h, 10))
                fit(single, data, seed=seed, **settings)
                sname = f"dense 64-{h}-10 (~{label} weights)"
                scores.setdefault(sname, []).append(task.score(single))
                sizes.setdefault(sname, (fp32_safetensors_bytes(single.state_dict()),
                                         sum(p.numel() for p in single.parameters())))
            progress(f"[{spec.name}] seed {seed}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in scores.items()))
    cands = []
    for name, accs in scores.items():
        mean = statistics.fmean(accs)
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        size, params = sizes[name]
        cands.append(Candidate(name, "slimkit" if name.startswith("hashed") else "peer", bytes=size,
                               score=mean, params=params,
                               note=f"test accuracy {100 * mean:.2f} +- {100 * sd:.2f}% over {len(accs)} seeds",
                               extra={"accuracies": accs}))
    return case_result(spec.name, cands, score_name="accuracy", batch=1, command=opts.command,
                       protocol=Protocol(rounds=0, repeats_b1=0, repeats_batched=0, warmup=0), threads=1,
                       wall_s=time.monotonic() - start, info=machine_info(1), quick=opts.quick,
                       batch_note=" (no timing: accuracy of hashed vs equally small dense nets, trained per seed)")
