"""Run by test_prune_ddp.py under `torchrun --nproc_per_node 2`: the plain single-process call
`sk.prune_(model, config, task)` for magnitude pruning with fine-tuning (a gradual schedule) and
2:4 pruning with fine-tuning, rank 1 starting from perturbed weights; this rank's weights go to
OUT/<method>-rank<k>.safetensors."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.dist.collectives import init, world
from slimkit.prune.api import MagnitudePruning, NMPruning

torch.set_num_threads(1)
init()
rank, size = world()
if size != 2:
    sys.exit(f"expected 2 processes, found {size}")
task = sk.zoo.entry("lenet-300-100").task()
configs = {"magnitude": MagnitudePruning(sparsity=0.9, scope="global", schedule="gradual", steps=2, epochs=1,
                                         lr=2e-3),
           "nm": NMPruning(n=2, m=4, epochs=1, lr=2e-3)}
for name, config in configs.items():
    model = sk.zoo.load("lenet-300-100")
    with torch.no_grad():    # replicas start different on purpose: rank 0's weights must win everywhere
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(rank)), alpha=0.01 * rank)
    model = sk.prune_(model, config, task)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{sys.argv[1]}/{name}-rank{rank}.safetensors")
