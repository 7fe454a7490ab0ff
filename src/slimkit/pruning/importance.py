"""Channel importance: weight norms (L1/L2) and APoZ from forward hooks.

>>> scores = weight_norm(model.fc1.weight, p=1)           # one score per output neuron
>>> apoz_ = apoz(model, task.calibration(512), {"fc1": "fc1"})   # producer -> activation module
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from slimkit.dist.collectives import reduce_keyed, shard

Hook = Callable[[nn.Module, object, torch.Tensor], None]


@contextlib.contextmanager
def hooked(model: nn.Module, sites: dict[str, str], make_hook: Callable[[str], Hook]) -> Iterator[None]:
    """Run a block in eval mode with `make_hook(key)` on the output of each site module; the
    hooks are removed and the training mode restored afterwards, whatever happens."""
    handles = [model.get_submodule(site).register_forward_hook(make_hook(key)) for key, site in sites.items()]
    was = model.training
    model.eval()
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def _run(model: nn.Module, batches: Iterable, forward: Callable[[nn.Module, object], object] | None) -> None:
    for batch in batches:
        forward(model, batch) if forward is not None else model(**batch)


def weight_norm(weight: torch.Tensor, p: int = 1) -> torch.Tensor:
    """L`p` norm of each output row / filter: the score of Li et al. (2017), "Pruning Filters"."""
    return weight.detach().reshape(weight.shape[0], -1).norm(p=p, dim=1)


def channels_first(module: nn.Module, output: torch.Tensor) -> torch.Tensor:
    """`output` of `module` with its channels in dimension 1: a Linear's are its last dimension
    (N, L, C for token sequences), everything else's (Conv, BatchNorm) dimension 1 already."""
    return output.movedim(-1, 1) if isinstance(module, nn.Linear) and output.dim() > 2 else output


def zero_fraction(activation: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(per-channel count of outputs that a ReLU makes zero, number of outputs per channel).

    Channels are the last dimension for 2-D (N, C) inputs and dimension 1 otherwise.
    """
    a = activation.detach()
    if a.dim() == 2:
        return (a <= 0).sum(0), a.shape[0]
    c = a.shape[1]
    flat = a.transpose(0, 1).reshape(c, -1)
    return (flat <= 0).sum(1), flat.shape[1]


@torch.no_grad()
def apoz(model: nn.Module, batches: Iterable, sites: dict[str, str],
         forward: Callable[[nn.Module, object], object] | None = None) -> dict[str, torch.Tensor]:
    """Average Percentage of Zeros (Hu et al. 2016, Network Trimming) after each ReLU.

    `sites` maps a key (the producer) to the module whose output enters the ReLU; a forward hook
    there counts outputs <= 0 per channel over all `batches` (and spatial positions for convs).
    Under an initialised `torch.distributed` group each rank counts on its share of the batches
    and the counts are summed over ranks, so every rank gets the single-process values.
    """
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(sites, 0)

    def hook(key):
        def fn(module, _inputs, output):
            z, n = zero_fraction(channels_first(module, output))
            zeros[key] = zeros.get(key, 0) + z
            counts[key] += n
        return fn

    with hooked(model, sites, hook):
        _run(model, shard(batches), forward)
    reduce_keyed(list(sites), zeros, counts)  # zero counts and totals summed over ranks
    return {k: zeros[k].double() / max(1, counts[k]) for k in zeros}


def above_mean_std(scores: torch.Tensor, std: float = 1.0) -> torch.Tensor:
    """Channels whose score exceeds mean + `std` standard deviations (Network Trimming's rule)."""
    return scores > scores.mean() + std * scores.std(unbiased=False)


@torch.no_grad()
def activation_mean(model: nn.Module, batches: Iterable, sites: dict[str, str],
                    forward: Callable[[nn.Module, object], object] | None = None) -> dict[str, torch.Tensor]:
    """Mean ReLU(output) per channel of each site module (like `apoz`, which counts zeros)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(sites, 0)

    def hook(key):
        def fn(module, _inputs, output):
            a = channels_first(module, output.detach()).clamp(min=0)
            flat = a if a.dim() == 2 else a.transpose(0, 1).reshape(a.shape[1], -1).T
            sums[key] = sums.get(key, 0) + flat.sum(0)
            counts[key] += flat.shape[0]
        return fn

    with hooked(model, sites, hook):
        _run(model, shard(batches), forward)
    reduce_keyed(list(sites), sums, counts)
    return {k: sums[k].double() / max(1, counts[k]) for k in sums}
