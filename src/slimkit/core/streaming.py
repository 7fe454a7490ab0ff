"""How each method streams a checkpoint larger than memory: a registry keyed by method name,
filled by the method's own package, so `slimkit.stream` runs a recipe without knowing any method.

Two paths (`slimkit.stream`), and a method offers either, both or neither:

- tensor by tensor (a bare checkpoint, no architecture): the `tensors` hook folds a stage into a
  `StreamPlan` (what each tensor gets: affine codes, a k-means codebook, a sparse mask), or raises
  `StreamRefused` saying why this config cannot (it completes "stage 2 (kmeans) ...");
- block by block (a Hugging Face folder): `blocks(model, task, cfg)` makes a `BlockWorker`, whose
  steps the driver calls with one block loaded at a time; `check_blocks(cfg)` refuses, in one
  line and before any model is built, a config that cannot run that way.

`needs` says what a bare checkpoint lacks for a method without a `tensors` hook ("calibration
data"); `tensors_when` / `blocks_when` are the conditions listed when a recipe is refused. A method
with no entry is refused as "not a streaming method".

>>> register_streaming("kmeans", tensors=kmeans_plan, tensors_when="finetune_epochs: 0")  # slimkit.sharing.streaming
>>> register_streaming("gptq", blocks=GptqWorker, blocks_when="(e.g. int4)", needs="calibration data")
>>> stream_support("kmeans").tensors(KMeansConfig(bits=4, finetune_epochs=0), StreamPlan()).kmeans.bits
4
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import matches
from slimkit.core.task import Batch, Task

MIN_NUMEL = 1024  # smaller float tensors (and every 1-D one: biases, norms) stay as they are
EMBEDDING = re.compile(r"(^|.*\.)(embed\w*|\w*embeddings?|wte|wpe|tok_embeddings)(\.weight)?$")
AFTER_CODES = "comes after another quantization or sharing stage"   # a tensor's values are stored one way


@dataclass(frozen=True)
class QuantSpec:
    """Affine round-to-nearest codes: `bits` per value, one scale per row or per `group_size`."""

    bits: int
    symmetric: bool = True
    group_size: int | None = None     # None: one scale per row
    scale_dtype: str = "float32"
    mse: bool = False


@dataclass(frozen=True)
class KMeansSpec:
    """A per-tensor 1-D k-means codebook of 2**bits values, indices entropy-coded or bit-packed."""

    bits: int
    init: str = "linear"
    solver: str = "lloyd"
    max_iter: int = 100
    coding: str = "huffman"
    seed: int = 0


@dataclass(frozen=True)
class StreamPlan:
    """What the tensor-by-tensor path does with each selected tensor (`slimkit.stream.encode`):
    prune it (`sparsity`, or `nm`), then store its values as affine codes (`quant`), through a
    codebook (`kmeans`) or as they are. Built stage by stage by the methods' `tensors` hooks."""

    name: str = "custom"
    quant: QuantSpec | None = None
    embedding_quant: QuantSpec | None = None     # tensors named like embeddings (None: stay float)
    kmeans: KMeansSpec | None = None
    sparsity: float | None = None
    scope: str = "layer"                          # pruning: per tensor, or one threshold for all ("global")
    nm: tuple[int, int] | None = None             # N:M pruning: n of every m consecutive inputs kept
    value_dtype: str = "float32"                  # pruned values of float32 tensors stored as this
    targets: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    min_numel: int = MIN_NUMEL
    allow_nonfinite: bool = False                 # a tensor holding NaN/Inf is copied as it is, not refused

    def selected(self, name: str, shape: tuple[int, ...], is_float: bool) -> bool:
        """Whether tensor `name` is compressed (else it is stored as it is). `targets` / `ignore`
        match the tensor's name or its module's (`layers.0.fc` for `layers.0.fc.weight`)."""
        if not is_float or len(shape) < 2 or math.prod(shape) < self.min_numel:
            return False
        names = (name, name.rpartition(".")[0])
        if self.targets and not any(matches(n, p) for n in names for p in self.targets):
            return False
        return not any(matches(n, p) for n in names for p in self.ignore)

    def quant_for(self, name: str) -> QuantSpec | None:
        return self.embedding_quant if EMBEDDING.match(name) else self.quant

    @property
    def coded(self) -> bool:
        """Whether a stage already chose how values are stored (affine codes or a codebook)."""
        return self.quant is not None or self.embedding_quant is not None or self.kmeans is not None

    @property
    def pruned(self) -> bool:
        return self.sparsity is not None


class StreamRefused(SlimError):
    """Raised by a `tensors` hook: why this stage cannot run on a bare checkpoint, worded to follow
    "stage 2 (kmeans) ", e.g. "fine-tunes its codebooks on training data (...)"."""


class BlockWorker(Protocol):
    """A method's steps block by block (`slimkit.stream.layerwise`). It holds target layer *names*,
    never modules (a module held here would keep its weights after the block is emptied). The driver
    calls `plan` on a probe forward (every block loaded on demand), then `outside` (layers outside the
    blocks, before any block runs), then `block` for each block in order. A worker may also carry
    `info`, a dict added to the output's manifest."""

    task: Task
    batches: list[Batch]          # calibration batches (this rank's share)
    counts: Counter[str]          # layers per outcome, for the report

    def plan(self, blocks: list[str], probe: Batch) -> dict[int, list] | None:
        """{block index: what `block` gets for it}, or None when the blocks cannot be run in turn."""

    def outside(self, blocks: list[str]) -> None:
        """Compress (or leave) the layers outside `blocks`."""

    def block(self, name: str, block: nn.Module, chain: Any, targets: list, advance: bool) -> None:
        """Compress block `name` (loaded) with `targets` from `plan`, and move `chain` past it
        (`step`), running it to make the next block's inputs when `advance`."""


TensorsHook = Callable[[Any, StreamPlan], StreamPlan]
WorkerFactory = Callable[[nn.Module, Task, Any], BlockWorker]


@dataclass(frozen=True)
class StreamSupport:
    """One method's streaming support (see the module doc); empty where it has none."""

    tensors: TensorsHook | None = None
    tensors_when: str = ""
    blocks: WorkerFactory | None = None
    check_blocks: Callable[[Any], None] | None = None
    blocks_when: str = ""
    needs: str = ""


STREAMING: dict[str, StreamSupport] = {}


def register_streaming(method: str, *, tensors: TensorsHook | None = None, tensors_when: str = "",
                       blocks: WorkerFactory | None = None, check_blocks: Callable[[Any], None] | None = None,
                       blocks_when: str = "", needs: str = "") -> None:
    """Declare how `method` streams (called by the method's package when it is imported)."""
    support = StreamSupport(tensors, tensors_when, blocks, check_blocks, blocks_when, needs)
    if STREAMING.get(method, support) != support:
        raise ValueError(f"streaming support of method {method!r} registered twice")
    STREAMING[method] = support


def stream_support(method: str) -> StreamSupport:
    """The streaming support of `method` (an empty `StreamSupport` when it has none)."""
    return STREAMING.get(method, StreamSupport())


def inside(name: str, blocks: list[str]) -> bool:
    """True if module `name` is one of `blocks` or inside one of them.

    >>> inside("model.layers.3.mlp.fc1", ["model.layers.3"])
    True
    """
    return any(name == b or name.startswith(b + ".") for b in blocks)


def step(chain: Any, block: nn.Module, advance: bool) -> None:
    """Move the block chain (`slimkit.dist.blocks.BlockChain`) past `block`: run it to make the next
    block's inputs when `advance`, else only count it (nothing after it is calibrated: no need to run it)."""
    if advance:
        chain.advance(block)
    else:
        chain.position += 1
