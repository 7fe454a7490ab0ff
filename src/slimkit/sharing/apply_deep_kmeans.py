"""Deep k-Means on a model: regularised re-training, vector k-means of conv sub-vectors, centroid
fine-tuning, and the `vq` storage (one index per sub-vector + a K x d codebook per layer).

>>> import slimkit as sk
>>> sk.share_(model, sk.make_config("deep-kmeans", clusters=8, reg_weight=1e-2, reg_epochs=10))
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task
from slimkit.io.artifact import codec_chain, set_codec
from slimkit.sharing.deep_kmeans import spectral_penalty, sub_vectors, top_singular_basis, vector_kmeans
from slimkit.sharing.train import fine_tune


@register_method
class DeepKMeansConfig(MethodConfig):
    """Deep k-Means (Wu et al. 2018): conv kernels (or kernel rows) share K centroid vectors;
    Linear layers named in `targets` share runs of `linear_dim` weights the same way.

    `reg_epochs` > 0 first re-trains the whole model with the spectrally relaxed k-means
    regulariser (weight `reg_weight`), which pulls each layer's sub-vectors towards K directions;
    it is inactive unless `clusters` < the vector length (9 for a 3x3 kernel, 3 for a row).
    Then each conv's sub-vectors are clustered (a layer with at most `clusters` vectors keeps
    them all) and the centroids fine-tuned (`finetune_epochs`).
    """

    method: ClassVar[str] = "deep-kmeans"
    family: ClassVar[Family] = Family.SHARE
    summary: ClassVar[str] = "Deep k-Means: conv kernels share K centroid vectors (+ spectral k-means regulariser)"

    clusters: int = Field(8, ge=2, le=256)
    vector: Literal["kernel", "row"] = "kernel"
    linear_dim: int = Field(4, ge=1, le=64, description="sub-vector length for Linear layers (targets only)")
    reg_weight: float = Field(0.0, ge=0)
    reg_epochs: int = Field(0, ge=0)
    finetune_epochs: int = Field(10, ge=0)
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    encodes: ClassVar[tuple[type[nn.Module], ...]] = (nn.Conv2d, nn.Linear)
    allow_nonfinite: bool = False   # keep layers holding NaN/Inf float (default: refuse, naming the tensor)

    @classmethod
    def example(cls) -> DeepKMeansConfig:
        return cls(clusters=16, targets=["fc1"], finetune_epochs=0)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        kinds = (nn.Conv2d, nn.Linear) if self.targets or filter_fn else (nn.Conv2d,)
        layers = select_modules(model, self.targets, kinds, filter_fn, self.ignore)
        if not layers:
            raise SlimError("deep-kmeans: no Conv2d layers to share (name Linear layers in targets to "
                            "share their weights as vectors of linear_dim inputs)")
        for name, conv in layers:
            _check(name, conv, self)
        if self.reg_epochs and self.reg_weight:
            _regularised_retraining(model, task, layers, self)
        _share(model, task, layers, self)
        return model


def _check(name: str, conv: nn.Conv2d, cfg: DeepKMeansConfig) -> None:
    if codec_chain(conv, "weight"):
        raise SlimError(f"deep-kmeans: {name}.weight is already encoded; apply deep-kmeans first")
    try:
        x = sub_vectors(conv.weight, cfg.vector, cfg.linear_dim)
    except ValueError as exc:
        raise SlimError(f"deep-kmeans: {name}: {exc}") from None
    if cfg.reg_weight and cfg.reg_epochs and cfg.clusters >= x.shape[1]:
        raise SlimError(f"deep-kmeans: the spectral regulariser is zero when clusters ({cfg.clusters}) >= the "
                        f"{cfg.vector} length of {name} ({x.shape[1]}); use fewer clusters or reg_weight: 0")


def _regularised_retraining(model: nn.Module, task: Task | None, layers: list[tuple[str, nn.Module]],
                            cfg: DeepKMeansConfig) -> None:
    def penalty() -> torch.Tensor:
        total = torch.zeros(())
        for _, conv in layers:
            x = sub_vectors(conv.weight, cfg.vector, cfg.linear_dim)
            total = total + spectral_penalty(x, cfg.clusters, top_singular_basis(x, cfg.clusters))
        return cfg.reg_weight * total

    # the regulariser trades task loss for clusterable weights, so the last epoch is kept
    fine_tune(model, task, list(model.parameters()), cfg.reg_epochs, lr=cfg.lr, seed=cfg.seed, penalty=penalty,
              keep_best=False)


class _SharedConv:
    def __init__(self, name: str, conv: nn.Conv2d, cfg: DeepKMeansConfig):
        self.name, self.conv = name, conv
        x = sub_vectors(conv.weight.detach(), cfg.vector)
        # a layer with at most `clusters` vectors keeps them all (its codebook is the layer itself)
        fit = vector_kmeans(x.double().numpy(), min(cfg.clusters, x.shape[0]), seed=cfg.seed)
        self.centroids = torch.tensor(fit.centroids, dtype=conv.weight.dtype)
        self.labels = torch.from_numpy(fit.labels)
        self.dim = x.shape[1]
        self.sse = fit.sse

    def rebuild(self) -> torch.Tensor:
        return self.centroids[self.labels].reshape(self.conv.weight.shape)

    @torch.no_grad()
    def write(self) -> None:
        self.conv.weight.copy_(self.rebuild())


def _share(model: nn.Module, task: Task | None, layers: list[tuple[str, nn.Module]], cfg: DeepKMeansConfig) -> None:
    shared = [_SharedConv(name, conv, cfg) for name, conv in layers]
    for s in shared:
        s.write()
    if cfg.finetune_epochs:
        prefix = {id(m): n for n, m in model.named_modules()}
        biases = [s.conv.bias for s in shared if s.conv.bias is not None]

        def overrides() -> dict[str, Any]:
            return {f"{prefix[id(s.conv)]}.weight": s.rebuild() for s in shared}

        def commit() -> None:
            for s in shared:
                s.write()

        fine_tune(model, task, [s.centroids for s in shared] + biases, cfg.finetune_epochs, lr=cfg.lr,
                  seed=cfg.seed, overrides=overrides, commit=commit)
    for s in shared:
        s.write()
        set_codec(s.conv, "weight", [{"codec": "vq", "dim": s.dim}, {"codec": "entropy"}])
        s.conv.__dict__.setdefault("slim_shared", {})["weight"] = {
            "clusters": cfg.clusters, "vector": cfg.vector, "sse": round(s.sse, 6)}


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
DeepKMeans = DeepKMeansConfig
