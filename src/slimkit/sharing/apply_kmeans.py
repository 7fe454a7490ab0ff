"""k-means weight sharing on a model: cluster each layer, fine-tune the codebooks, set codecs.

In memory a shared weight stays a dense float tensor whose entries are exactly the centroids,
so forward is exact and the `palette` codec stores it losslessly as indices + codebook.
After magnitude pruning (codec chain `[{"codec": "sparse"}]`) only the nonzeros are clustered,
pruned weights stay exact zeros, and the palette stage is appended after the sparse stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.task import Task
from slimkit.io.artifact import append_codec, codec_chain, set_codec
from slimkit.sharing.kmeans import cluster_1d
from slimkit.sharing.train import fine_tune


@dataclass
class SharedTensor:
    """One clustered tensor: trainable centroids, a label per kept entry, the kept-entry mask."""

    module: nn.Module
    key: str  # full state-dict name, e.g. "fc1.weight"
    attr: str  # "weight" or "bias"
    centroids: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor | None  # None: every entry is clustered

    def rebuild(self) -> torch.Tensor:
        tensor = getattr(self.module, self.attr)
        values = self.centroids[self.labels]
        if self.mask is None:
            return values.reshape(tensor.shape)
        return torch.zeros(tensor.shape, dtype=values.dtype).masked_scatter(self.mask, values)

    @torch.no_grad()
    def write(self) -> None:
        getattr(self.module, self.attr).copy_(self.rebuild())


def _is_sparse(chain: list[dict]) -> bool:
    return any(stage.get("codec") == "sparse" for stage in chain)


def _value_chain(chain: list[dict]) -> list[dict]:
    """The chain k-means builds on: trailing `cast` stages go (the palette stores the values)."""
    while chain and chain[-1].get("codec") == "cast":
        chain = chain[:-1]
    return chain


def cluster_tensor(module: nn.Module, name: str, attr: str, bits: int, init: str, solver: str,
                   max_iter: int, seed: int) -> SharedTensor:
    """Cluster `module.<attr>` (only its nonzeros when it is stored sparse)."""
    chain = _value_chain(codec_chain(module, attr))
    if chain and [s.get("codec") for s in chain] != ["sparse"]:
        codecs = ", ".join(str(s.get("codec")) for s in chain)
        raise SlimError(f"kmeans: {name}.{attr} is already encoded ({codecs}); k-means sharing "
                        "can follow pruning but not quantization or another sharing stage")
    tensor = getattr(module, attr).detach()
    mask = (tensor != 0) if _is_sparse(chain) else None
    values = tensor[mask] if mask is not None else tensor.reshape(-1)
    if values.numel() == 0:
        raise SlimError(f"kmeans: {name}.{attr} has no nonzero weights to cluster")
    fit = cluster_1d(values.double().numpy(), 2**bits, init=init, solver=solver,
                     max_iter=max_iter, seed=seed)
    centroids = torch.tensor(fit.centroids, dtype=torch.float32)
    labels = torch.from_numpy(fit.labels.astype(np.int64))
    return SharedTensor(module, f"{name}.{attr}" if name else attr, attr, centroids, labels, mask)


def set_storage(shared: SharedTensor, bits: int, coding: str, codebook: str = "float32") -> None:
    """Palette (+ an entropy coder or bitpack) after whatever chain is already there (e.g. sparse);
    a float16 codebook adds an exact `cast` stage first (the centroids are already float16 values)."""
    coders = {"auto": {"codec": "entropy"}, "huffman": {"codec": "huffman"}, "ans": {"codec": "ans"}}
    coder = coders.get(str(coding), {"codec": "bitpack", "bits": bits})
    stages = [{"codec": "palette", "bits": bits}, coder]
    if codebook == "float16":
        stages.insert(0, {"codec": "cast", "to": "float16"})
    set_codec(shared.module, shared.attr, _value_chain(codec_chain(shared.module, shared.attr)))
    for stage in stages:
        append_codec(shared.module, shared.attr, stage)


def fits_float16(centroids: torch.Tensor) -> bool:
    """Whether a codebook survives float16: no centroid beyond its range (it would become inf),
    and not all of them below its normal range (subnormals keep too few bits; zeros are fine)."""
    top = float(centroids.detach().abs().max()) if centroids.numel() else 0.0
    fp16 = torch.finfo(torch.float16)
    return top <= fp16.max and (top == 0.0 or top >= fp16.tiny)


def share_kmeans(model: nn.Module, layers: list[tuple[str, nn.Module]], task: Task | None, *,
                 bits: int, bias_bits: int | None, init: str, solver: str, max_iter: int,
                 coding: str, epochs: int, lr: float, seed: int, codebook: str = "float32") -> list[SharedTensor]:
    """Cluster the weights (and biases when `bias_bits`) of `layers`, fine-tune, set codecs."""
    shared: list[SharedTensor] = []
    for name, module in layers:
        shared.append(cluster_tensor(module, name, "weight", bits, init, solver, max_iter, seed))
        if bias_bits is not None and getattr(module, "bias", None) is not None:
            shared.append(cluster_tensor(module, name, "bias", bias_bits, init, solver, max_iter, seed))
    for s in shared:
        s.write()
    if epochs > 0:
        free = [module.bias for _, module in layers
                if getattr(module, "bias", None) is not None and bias_bits is None
                and not codec_chain(module, "bias")]

        def overrides() -> dict[str, torch.Tensor]:
            return {s.key: s.rebuild() for s in shared}

        def commit() -> None:
            for s in shared:
                s.write()

        fine_tune(model, task, [s.centroids for s in shared] + free, epochs, lr=lr, seed=seed,
                  overrides=overrides, commit=commit)
    for s in shared:
        book = codebook if codebook != "float16" or fits_float16(s.centroids) else "float32"
        if book == "float16":
            with torch.no_grad():
                s.centroids.copy_(s.centroids.half().float())
        s.write()
        set_storage(s, bias_bits if s.attr == "bias" and bias_bits is not None else bits, coding, book)
        s.module.__dict__.setdefault("slim_shared", {})[s.attr] = {
            "bits": bias_bits if s.attr == "bias" else bits, "clusters": int(s.centroids.numel())}
    return shared
