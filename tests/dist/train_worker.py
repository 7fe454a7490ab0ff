"""Run by test_prune_ddp.py under `torchrun --nproc_per_node 2`: the plain single-process calls of
the training-time methods (magnitude pruning with a gradual schedule, 2:4 pruning, k-means codebook
fine-tuning, QAT), each fine-tuning for one epoch. Rank 1 starts the pruning runs from perturbed
weights (rank 0's must win everywhere). Per method this rank's weights go to
OUT/<method>-rank<k>.safetensors and the rows it trained on to OUT/<method>-rank<k>.json."""

from __future__ import annotations

import json
import sys

import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.dist.collectives import init, world

torch.set_num_threads(1)
init()
rank, size = world()
if size != 2:
    sys.exit(f"expected 2 processes, found {size}")
task = sk.zoo.entry("lenet-300-100").task()
METHODS = {
    "magnitude": ("magnitude", {"sparsity": 0.9, "scope": "global", "schedule": "gradual", "steps": 2, "epochs": 1,
                                "lr": 2e-3}),
    "nm": ("nm", {"n": 2, "m": 4, "epochs": 1, "lr": 2e-3}),
    "kmeans": ("kmeans", {"bits": 4, "finetune_epochs": 1, "max_iter": 20}),
    "qat": ("qat", {"bits": 4, "epochs": 1}),
}
for name, (method, options) in METHODS.items():
    model = sk.zoo.load("lenet-300-100")
    if method in ("magnitude", "nm"):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(rank)), alpha=0.01 * rank)
    rows = [0]

    def count(module, args, kwargs, rows=rows):
        if module.training and torch.is_grad_enabled():
            rows[0] += next(iter(kwargs.values())).shape[0] if kwargs else args[0].shape[0]

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    model = sk.apply_(model, sk.make_config(method, **options), data=task)
    hook.remove()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{sys.argv[1]}/{name}-rank{rank}.safetensors")
    with open(f"{sys.argv[1]}/{name}-rank{rank}.json", "w") as f:
        json.dump({"rows": rows[0], "train": len(task.data.train)}, f)
