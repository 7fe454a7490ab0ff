"""Training-time methods under torchrun with data parallelism (gloo on CPU): prune-and-fine-tune
(magnitude, 2:4), k-means codebook fine-tuning and QAT split every batch across 2 ranks, the
replicas end identical, pruned sparsity is exact; `slimkit compress` under torchrun writes one
artifact. The torchrun tests take 20-60 s on a shared 2-core machine (slow); the check of the
sharded-gradient arithmetic runs in the normal suite."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import slimkit as sk
from slimkit.dist.data_parallel import shard_rows
from slimkit.train.supervised import cross_entropy

WEIGHTS = ("fc1.weight", "fc2.weight", "fc3.weight")


def _torchrun(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    for _attempt in range(2):   # one retry for the rare gloo teardown abort (see tests/distill)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr[:3000] + "\n...\n" + done.stderr[-2000:]
    return done


def test_sharded_losses_average_to_the_batch_mean_gradient(lenet_trained):
    """What DDP computes (mean over ranks of each shard's weighted gradient) equals one process's
    batch-mean gradient, also when the shards differ in size (a batch of 7 on 2 ranks)."""
    task = sk.zoo.entry("lenet-300-100").task()
    inputs, target = task.train_batches(7, seed=0)[0]
    loss_fn = cross_entropy(task)

    def grad(inputs, target, weight) -> torch.Tensor:
        lenet_trained.zero_grad()
        (loss_fn(lenet_trained, inputs, target) * weight).backward()
        return lenet_trained.fc1.weight.grad.clone()

    single = grad(*shard_rows(inputs, target))
    shards = [shard_rows(inputs, target, rank=r, size=2) for r in (0, 1)]
    assert [s[1].shape[0] for s in shards] == [4, 3] and [s[2] for s in shards] == [8 / 7, 6 / 7]
    averaged = sum(grad(*s) for s in shards) / 2
    assert torch.allclose(averaged, single, atol=1e-6) and single.abs().sum() > 0
    empty = shard_rows(inputs, target[:1], rank=1, size=2)       # a rank without rows weighs 0
    assert empty[1].shape[0] == 0 and empty[2] == 0.0
    unlabelled = shard_rows(inputs, None, rank=0, size=2)        # rows counted on the inputs
    assert unlabelled[0]["x"].shape[0] == 4 and unlabelled[1] is None and unlabelled[2] == 8 / 7
    lenet_trained.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_two_process_training_methods_end_identical(lenet_trained, tmp_path):
    _torchrun([str(Path(__file__).with_name("train_worker.py")), str(tmp_path)])
    original = lenet_trained.state_dict()
    for method in ("magnitude", "nm", "kmeans", "qat"):
        a, b = (load_file(tmp_path / f"{method}-rank{r}.safetensors") for r in (0, 1))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), method
        seen = [json.loads((tmp_path / f"{method}-rank{r}.json").read_text()) for r in (0, 1)]
        train = seen[0]["train"]                 # one epoch, every batch split between the two ranks
        assert seen[0]["rows"] + seen[1]["rows"] == train and abs(seen[0]["rows"] - seen[1]["rows"]) <= 60, seen
    # the split batches give the single-process gradient: the same training up to float rounding
    config = sk.make_config("magnitude", sparsity=0.9, scope="global", schedule="gradual", steps=2, epochs=1, lr=2e-3)
    alone = sk.apply_(copy.deepcopy(lenet_trained), config, data=sk.zoo.entry("lenet-300-100").task()).state_dict()
    two = load_file(tmp_path / "magnitude-rank0.safetensors")
    assert all(torch.allclose(two[k], alone[k], rtol=0, atol=1e-5) for k in two)
    for method in ("magnitude", "nm"):
        a = load_file(tmp_path / f"{method}-rank0.safetensors")
        kept = [a[k] != 0 for k in WEIGHTS]
        total = sum(k.numel() for k in kept)
        if method == "magnitude":             # global 90%: exactly round(0.9 * N) zeros over the three layers
            assert sum(int(k.sum()) for k in kept) == total - round(0.9 * total)
        else:                                 # 2:4: exactly 2 nonzeros in every group of 4 inputs
            assert all(k.reshape(-1, 4).sum(1).eq(2).all() for k in kept)
        # fine-tuning ran: surviving weights moved away from the trained ones
        assert not torch.equal(a["fc2.weight"][kept[1]], original["fc2.weight"][kept[1]])


@pytest.mark.slow
def test_compress_prune_magnitude_under_torchrun_writes_once(tmp_path):
    recipe = tmp_path / "prune-quick.yaml"
    recipe.write_text("stages:\n  - method: magnitude\n    sparsity: 0.95\n    scope: global\n"
                      "    schedule: gradual\n    steps: 3\n    epochs: 2\n    lr: 0.002\n"
                      "    value_dtype: float16\n    bias_dtype: float16\n")
    out = tmp_path / "out" / "pruned.slim"
    out.parent.mkdir()
    done = _torchrun(["-m", "slimkit.cli.main", "compress", "builtin:lenet-300-100", "--recipe", str(recipe),
                      "--out", str(out), "--json"])
    assert done.stdout.count('"out"') == 1                     # only rank 0 reports ...
    assert [p.name for p in out.parent.iterdir()] == ["pruned.slim"]   # ... and writes, once
    model = sk.load(out)
    weights = [getattr(model, k.split(".")[0]).weight for k in WEIGHTS]
    total = sum(w.numel() for w in weights)
    assert sum(int(torch.count_nonzero(w)) for w in weights) == total - round(0.95 * total)
