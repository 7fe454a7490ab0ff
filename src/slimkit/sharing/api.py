"""Parameter-sharing configs: k-means weight sharing, low-rank factorization, HashedNets.

>>> import slimkit as sk
>>> from slimkit.sharing.api import KMeansSharing
>>> sk.share_(model, KMeansConfig(bits=5, finetune_epochs=10), data=task)
>>> sk.save(model, "lenet-k5.slim")          # palette indices, Huffman-coded, + codebooks
"""

from __future__ import annotations

from enum import Enum
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task, has_labels
from slimkit.sharing.apply_hashed import hash_model
from slimkit.sharing.apply_kmeans import share_kmeans
from slimkit.sharing.apply_lowrank import FACTORABLE, RankRule, factorize_model
from slimkit.sharing.errors import ShareConfigError, in_range

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


class KMeansInit(str, Enum):
    LINEAR = "linear"
    DENSITY = "density"
    KMEANSPP = "kmeans++"


class KMeansSolver(str, Enum):
    LLOYD = "lloyd"
    OPTIMAL = "optimal"


class Coding(str, Enum):
    """How cluster indices are stored: `auto` keeps the smaller of Huffman and ANS per tensor."""

    AUTO = "auto"
    HUFFMAN = "huffman"
    ANS = "ans"
    BITPACK = "bitpack"


class CodebookDtype(str, Enum):
    """Storage type of the centroids: float16 halves the codebooks (centroids are rounded to it)."""

    FLOAT16 = "float16"
    FLOAT32 = "float32"


@register_method
class KMeansConfig(MethodConfig):
    """Deep Compression's weight sharing: a per-layer codebook of 2**bits centroids.

    `solver="optimal"` uses the exact 1-D dynamic programme instead of Lloyd's iterations;
    `finetune_epochs` > 0 trains the centroids (each gets the summed gradient of its cluster).
    `bias_bits` also clusters the biases (they are a large part of a tiny model's file).
    `codebook="float16"` (default) rounds the centroids to float16 and stores them so.
    """

    method: ClassVar[str] = "kmeans"
    family: ClassVar[Family] = Family.SHARE
    summary: ClassVar[str] = "k-means weight sharing: b-bit cluster indices + per-layer codebook"
    bits: int = 5
    bias_bits: int | None = None
    init: KMeansInit = KMeansInit.LINEAR
    solver: KMeansSolver = KMeansSolver.LLOYD
    max_iter: int = 100
    coding: Coding = Coding.AUTO
    codebook: CodebookDtype = CodebookDtype.FLOAT16
    finetune_epochs: int = 0
    lr: float = Field(1e-3, gt=0)
    seed: int = 0
    encodes: ClassVar[tuple[type[nn.Module], ...]] = WEIGHTED
    allow_nonfinite: bool = False   # keep layers holding NaN/Inf float (default: refuse, naming the tensor)

    def __init__(self, **data: Any):
        in_range(self.method, "bits", data.get("bits"), 2, 8)
        in_range(self.method, "bias_bits", data.get("bias_bits"), 2, 8)
        in_range(self.method, "finetune_epochs", data.get("finetune_epochs"), 0, 100_000)
        in_range(self.method, "max_iter", data.get("max_iter"), 0, 1_000_000)
        in_range(self.method, "lr", data.get("lr"), 0, 10)
        super().__init__(**data)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        layers = select_modules(model, self.targets, WEIGHTED, filter_fn, self.ignore)
        share_kmeans(model, layers, task, bits=self.bits, bias_bits=self.bias_bits,
                     init=self.init.value, solver=self.solver.value, max_iter=self.max_iter,
                     coding=self.coding.value, codebook=self.codebook.value, epochs=self.finetune_epochs,
                     lr=self.lr, seed=self.seed)
        return model

    @classmethod
    def example(cls) -> KMeansConfig:
        return cls(bits=4, bias_bits=4)

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> KMeansConfig:
        """2-6 bit indices, entropy-coded; codebook fine-tuning when the task has labels."""
        epochs = trial.suggest_int("kmeans.finetune_epochs", 0, 10, step=5) if has_labels(task) else 0
        return cls(bits=trial.suggest_int("kmeans.bits", 2, 6), bias_bits=trial.suggest_int("kmeans.bias_bits", 3, 8),
                   coding=Coding.HUFFMAN, finetune_epochs=epochs)


class LowRankMode(str, Enum):
    SVD = "svd"  # best approximation of the weight matrix
    PCA = "pca"  # activation-aware: best approximation of the layer's outputs on calibration data


@register_method
class LowRankConfig(MethodConfig):
    """Factorize each Linear(in, out) into Linear(in, r) -> Linear(r, out) (a convolution into
    a k x k convolution to r channels followed by a 1 x 1 one).

    The rank comes from exactly one of `rank`, `energy` (fraction of the spectrum's energy kept)
    or `budget` (fraction of the layer's weights kept; the default, 0.2, is 5x fewer). Layers
    where the factors would not be smaller stay dense (unless `rank` is given).
    """

    method: ClassVar[str] = "lowrank"
    family: ClassVar[Family] = Family.SHARE
    summary: ClassVar[str] = "low-rank factorization of Linear layers (SVD or activation-aware PCA)"
    rank: int | None = None
    energy: float | None = None
    budget: float | None = None
    mode: LowRankMode = LowRankMode.PCA
    calibration_samples: int = 512
    damp: float = 1e-4
    finetune_epochs: int = 0
    lr: float = Field(1e-3, gt=0)
    seed: int = 0

    def __init__(self, **data: Any):
        given = [k for k in ("rank", "energy", "budget") if data.get(k) is not None]
        if len(given) > 1:
            raise ShareConfigError(f"lowrank: give one of rank, energy, budget (got {', '.join(given)})")
        rank = data.get("rank")
        if isinstance(rank, int) and not isinstance(rank, bool) and rank <= 0:
            raise ShareConfigError(f"lowrank: rank must be a positive int, got {rank}")
        for name in ("energy", "budget"):
            value = data.get(name)
            if isinstance(value, int | float) and not 0 < value <= 1:
                raise ShareConfigError(f"lowrank: {name} must be in (0, 1], got {value!r}")
        in_range(self.method, "finetune_epochs", data.get("finetune_epochs"), 0, 100_000)
        in_range(self.method, "calibration_samples", data.get("calibration_samples"), 1, 10**7)
        in_range(self.method, "lr", data.get("lr"), 0, 10)
        super().__init__(**data)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        layers = select_modules(model, self.targets, FACTORABLE, filter_fn, self.ignore)
        rule = RankRule(self.rank, self.energy, self.budget)
        factorize_model(model, layers, task, rule=rule, aware=self.mode == LowRankMode.PCA,
                        samples=self.calibration_samples, damp=self.damp,
                        epochs=self.finetune_epochs, lr=self.lr, seed=self.seed)
        return model

    @classmethod
    def example(cls) -> LowRankConfig:
        return cls(budget=0.25, targets=["fc1", "fc2"])


class HashInit(str, Enum):
    PROJECT = "project"  # start from the dense weights averaged into their buckets
    RANDOM = "random"  # train from scratch, as in the HashedNets paper


@register_method
class HashedConfig(MethodConfig):
    """HashedNets: each Linear's weights are read from `ratio` x its size real parameters through
    a hash of (i, j) with a sign hash; only the real parameters and the seed are stored."""

    method: ClassVar[str] = "hashed"
    family: ClassVar[Family] = Family.SHARE
    summary: ClassVar[str] = "HashedNets: virtual weights hashed into K shared real parameters"
    ratio: float | None = 0.125
    buckets: int | None = None
    seed: int = 0
    init: HashInit = HashInit.RANDOM
    finetune_epochs: int = 60
    lr: float = Field(2e-3, gt=0)
    distill: bool = False

    def __init__(self, **data: Any):
        ratio = data.get("ratio")
        if isinstance(ratio, int | float) and not isinstance(ratio, bool) and not 0 < ratio <= 1:
            raise ShareConfigError(f"hashed: ratio must be in (0, 1], got {ratio!r}")
        in_range(self.method, "buckets", data.get("buckets"), 1, 2**62)
        in_range(self.method, "seed", data.get("seed"), 0, 2**32 - 1)
        in_range(self.method, "finetune_epochs", data.get("finetune_epochs"), 0, 100_000)
        in_range(self.method, "lr", data.get("lr"), 0, 10)
        super().__init__(**data)

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        layers = select_modules(model, self.targets, (nn.Linear,), filter_fn, self.ignore)
        hash_model(model, layers, task, ratio=self.ratio, buckets=self.buckets, seed=self.seed,
                   init=self.init.value, epochs=self.finetune_epochs, lr=self.lr,
                   distill=self.distill)
        return model

    @classmethod
    def example(cls) -> HashedConfig:
        return cls(ratio=0.125, finetune_epochs=1)


# Names before the `<Method>Config` scheme (CHANGELOG.md), kept so existing code runs unchanged.
Hashed = HashedConfig
KMeansSharing = KMeansConfig
LowRank = LowRankConfig
