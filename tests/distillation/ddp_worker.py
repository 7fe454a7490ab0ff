"""Run by test_distill_ddp.py under `torchrun --nproc_per_node 2`: the plain single-process call,
then this rank's student weights go to OUT/rank<k>.safetensors."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

import slimkit as sk
from slimkit.dist.collectives import world
from slimkit.distillation import DistillConfig, distill, shrink_mlp

torch.set_num_threads(1)
teacher = sk.zoo.load("lenet-300-100")
task = sk.zoo.entry("lenet-300-100").task()
# replicas start from different weights on purpose: DDP broadcasts rank 0's before training
student = shrink_mlp(teacher, (16, 8), seed=int(os.environ["RANK"]))
student = distill(teacher, student, task, DistillConfig(epochs=2, lr=1e-2))
rank, size = world()
if size != 2:
    sys.exit(f"expected 2 processes, found {size}")
state = {k: v.contiguous() for k, v in student.state_dict().items()}
save_file(state, f"{sys.argv[1]}/rank{rank}.safetensors")
