"""Tiny models and tasks, and the calibration statistics slimkit computes on them.

`results()` returns every statistic (GPTQ Hessians and codes, APoZ, activation means, observer
scales, low-rank second moments and factors) as tensors. The tests call it in-process on all the
data; run as a script under `torchrun --nproc_per_node 2 calib_worker.py OUT`, each rank
calibrates on half the batches (slimkit all-reduces) and writes OUT/rank<k>.safetensors; keys
starting "one." come from a single batch, so that rank 1 calibrates on nothing.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from slimkit.core.task import Task


def tiny_bert(seed: int = 0, pooler: bool = True) -> nn.Module:
    """A random BertModel of MiniLM's shape, 3 blocks of width 32."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=32)
    config._attn_implementation = "eager"
    return transformers.BertModel(config, add_pooling_layer=pooler).eval()


class TokensTask(Task):
    """`batches` batches of 8 random sequences of 12 tokens, the last ones padded (mask 0)."""

    name = "tokens"

    def __init__(self, batches: int = 4):
        self.batches = batches

    def example_inputs(self, batch_size):
        return self.calibration(batch_size)[0]

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        out = []
        for i in range(self.batches):
            gen = torch.Generator().manual_seed(100 + i)
            mask = torch.ones(8, 12, dtype=torch.long)
            mask[4:, 9:] = 0
            out.append({"input_ids": torch.randint(0, 64, (8, 12), generator=gen), "attention_mask": mask})
        return out


class _Block(nn.Module):
    """A pre-norm transformer-like block: q/k/v share an input, then out, then a 2-layer MLP."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.up, self.down = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x, mask):
        h = self.norm(x)
        att = (self.q(h) @ self.k(h).transpose(1, 2)).masked_fill(~mask[:, None, :], -1e4).softmax(-1)
        x = x + self.out(att @ self.v(h))
        return x + self.down(torch.relu(self.up(x)))


class TinyBlocks(nn.Module):
    """Embedding, a chain of 2 blocks, a head: a transformer's shape without `transformers`."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(64, 16)
        self.layers = nn.ModuleList(_Block() for _ in range(2))
        self.head = nn.Linear(16, 8)

    def forward(self, input_ids, attention_mask):
        x, mask = self.embed(input_ids), attention_mask.bool()
        for layer in self.layers:
            x = layer(x, mask)
        return self.head(x)


class TinyMLP(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 24), nn.Linear(24, 20), nn.Linear(20, 5)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class VectorsTask(Task):
    """`batches` batches of 32 random 16-vectors; every batch holds the same largest |x| (7.5), so
    histogram observers see one common range in any split of the batches."""

    name = "vectors"

    def __init__(self, batches: int = 4):
        self.batches = batches

    def example_inputs(self, batch_size):
        return self.calibration()[0]

    def score(self, model):
        return 1.0

    def calibration(self, n=256):
        out = []
        for i in range(self.batches):
            x = torch.randn(32, 16, generator=torch.Generator().manual_seed(200 + i)).clamp(-5, 5)
            x[i % 32, i % 16] = 7.5
            out.append({"x": x})
        return out


def results(batches: int = 4) -> dict[str, torch.Tensor]:
    """Every calibration statistic on the tiny models from `batches` calibration batches, keyed
    "<what>.<layer>". With fewer batches than ranks some ranks calibrate on nothing."""
    import slimkit as sk
    from slimkit.dist.calibration import hessian_stages
    from slimkit.dist.collectives import world
    from slimkit.nn.quant_linear import QuantLinear
    from slimkit.pruning.importance import activation_mean, apoz
    from slimkit.quantization.api import GPTQConfig
    from slimkit.quantization.gptq import hessian_value
    from slimkit.quantization.static import observe_inputs
    from slimkit.sharing.apply_lowrank import input_second_moments, second_moments_by_block
    from slimkit.sharing.lowrank import whitened_factors

    _rank, size = world()
    out: dict[str, torch.Tensor] = {"world": torch.tensor([size])}

    # GPTQ: Hessians of every Linear of a small transformer (block by block), then the quantized model
    tokens = TokensTask(batches)
    blocks = TinyBlocks()
    names = [n for n, m in blocks.named_modules() if isinstance(m, torch.nn.Linear)]
    for stage, hessians in hessian_stages(blocks, tokens, tokens.calibration(), names):
        for name in stage:
            out[f"hessian.{name}"] = hessian_value(hessians[name])
    quantized = sk.quantize_(TinyBlocks(), GPTQConfig(bits=4, group_size=8), data=tokens)
    for name, module in quantized.named_modules():
        if isinstance(module, QuantLinear):
            for key, value in module.state_dict().items():
                out[f"gptq.{name}.{key}"] = value

    # APoZ and activation means after the ReLUs of an MLP
    vectors, mlp = VectorsTask(batches), TinyMLP()
    sites = {"fc1": "fc1", "fc2": "fc2"}
    for key, value in apoz(mlp, vectors.calibration(), sites).items():
        out[f"apoz.{key}"] = value
    for key, value in activation_mean(mlp, vectors.calibration(), sites).items():
        out[f"mean.{key}"] = value

    # observer scales of every Linear's input, for each observer kind
    for kind in ("minmax", "percentile", "mse", "kl"):
        observers = observe_inputs(mlp, vectors, vectors.calibration(), ["fc1", "fc2", "fc3"], kind, 99.9)
        for name, obs in observers.items():
            out[f"scale.{kind}.{name}"] = torch.tensor([obs.scale()], dtype=torch.float64)

    # activation-aware low-rank: input second moments and the whitened factors (PCA bases)
    layers = [(n, mlp.get_submodule(n)) for n in ("fc1", "fc2", "fc3")]
    for name, cov in input_second_moments(mlp, vectors, layers, samples=128).items():
        out[f"cov.{name}"] = cov
        a, b = whitened_factors(mlp.get_submodule(name).weight, cov, rank=4)
        out[f"lowrank.{name}"] = b @ a
    # the same, one transformer block at a time
    linears = [(n, m) for n, m in blocks.named_modules() if isinstance(m, torch.nn.Linear)]
    for group in second_moments_by_block(blocks, tokens, linears, samples=128):
        for name, cov in group.items():
            out[f"blockcov.{name}"] = cov
    return {k: v.contiguous() for k, v in out.items()}


if __name__ == "__main__":
    from safetensors.torch import save_file

    from slimkit.dist.collectives import init, world

    torch.set_num_threads(1)
    if not init():
        sys.exit("not launched by torchrun")
    stats = {**results(4), **{f"one.{k}": v for k, v in results(1).items()}}
    save_file(stats, f"{sys.argv[1]}/rank{world()[0]}.safetensors")
