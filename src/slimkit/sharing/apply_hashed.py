"""HashedNets on a model: each selected Linear becomes a `HashedLinear` with K real parameters,
initialised by projecting the dense weights onto the buckets, then the model is trained."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from slimkit.core.task import Task
from slimkit.nn.hashed import HashedLinear
from slimkit.nn.hashing import MAX_SEED, project
from slimkit.sharing.errors import ShareConfigError
from slimkit.sharing.train import fine_tune
from slimkit.surgery import replace_module


def buckets_for(name: str, layer: nn.Linear, ratio: float | None, buckets: int | None) -> int:
    """K for one layer: `buckets` as given, else ceil(ratio x in x out). Too many is an error."""
    size = layer.in_features * layer.out_features
    k = buckets if buckets is not None else math.ceil((ratio or 0.125) * size)
    if not 1 <= k <= size:
        raise ShareConfigError(f"hashed: buckets {k} for {name} must be in 1..{size} "
                               f"(the layer's {layer.out_features} x {layer.in_features} weights)")
    return k


def hash_model(model: nn.Module, layers: list[tuple[str, nn.Module]], task: Task | None, *,
               ratio: float | None, buckets: int | None, seed: int, init: str, epochs: int,
               lr: float, distill: bool = False) -> dict[str, int]:
    """Replace `layers` by HashedLinear in place and train; returns {layer: buckets}.

    With `distill`, training also matches the original (dense) model's softened outputs.
    """
    teacher = copy.deepcopy(model).eval() if distill and epochs > 0 else None
    out: dict[str, int] = {}
    for i, (name, layer) in enumerate(layers):
        if not isinstance(layer, nn.Linear):
            continue
        k = buckets_for(name, layer, ratio, buckets)
        hashed = HashedLinear(layer.in_features, layer.out_features, k, (seed + i) % (MAX_SEED + 1),
                              bias=layer.bias is not None)
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        bound = layer.in_features ** -0.5
        with torch.no_grad():  # deterministic, whatever the global RNG state
            hashed.weight.uniform_(-bound, bound, generator=gen)
            if hashed.bias is not None:
                hashed.bias.uniform_(-bound, bound, generator=gen)
        if init == "project":
            index, sign = hashed.hashes(torch.device("cpu"))
            real = project(layer.weight.detach().cpu().numpy(), index.numpy(), sign.numpy(), k)
            with torch.no_grad():
                hashed.weight.copy_(torch.from_numpy(real))
                if layer.bias is not None:
                    hashed.bias.copy_(layer.bias)
        replace_module(model, name, hashed)
        out[name] = k
    if epochs > 0 and out:
        fine_tune(model, task, list(model.parameters()), epochs, lr=lr, seed=seed, teacher=teacher,
                  keep_best=init != "random")
    model.__dict__["slimkit_buckets"] = {**model.__dict__.get("slimkit_buckets", {}), **out}
    return out
