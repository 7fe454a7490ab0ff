"""Which recipes can run on a bare checkpoint, and what each tensor gets.

A recipe's stages are mapped onto the streaming encoders: `int8` and `rtn` (round-to-nearest
weight-only, per row or group-wise) -> `affine` codes; `kmeans` without fine-tuning -> a per-tensor
codebook; `magnitude` one-shot pruning (per tensor, or `scope: global`: one exact threshold over
all tensors, `slimkit.stream.global_cut`) and `nm` without fine-tuning (n of every m consecutive
inputs) -> the `sparse` codec (its compact N:M index where the structure holds); `magnitude` then
`kmeans` -> both, as Deep Compression stores them. A stage that needs calibration or training data (GPTQ,
static int8, APoZ, fine-tuning, distillation, ...) is refused with one line naming the stage.

>>> plan = plan_from_recipe(load_recipe("int8"))
>>> plan.quant.bits, plan.quant.group_size
(8, None)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from slimkit.core.errors import SlimError
from slimkit.core.select import matches

MIN_NUMEL = 1024  # smaller float tensors (and every 1-D one: biases, norms) stay as they are
EMBEDDING = re.compile(r"(^|.*\.)(embed\w*|\w*embeddings?|wte|wpe|tok_embeddings)(\.weight)?$")
WEIGHT_ONLY = "int8, rtn, kmeans (finetune_epochs: 0), magnitude (schedule: oneshot, epochs: 0), nm (epochs: 0)"
NEEDS = {
    "gptq": "calibration data", "int8-static": "calibration data", "apoz": "calibration and training data",
    "lowrank": "an architecture (it splits layers in two)", "distill": "training data and a model",
    "hashed": "training data", "qat": "training data", "structured": "calibration data and an architecture",
    "weight-norm": "an architecture (it removes neurons)",
}


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    symmetric: bool = True
    group_size: int | None = None     # None: one scale per row
    scale_dtype: str = "float32"
    mse: bool = False


@dataclass(frozen=True)
class KMeansSpec:
    bits: int
    init: str = "linear"
    solver: str = "lloyd"
    max_iter: int = 100
    coding: str = "huffman"
    seed: int = 0


@dataclass(frozen=True)
class StreamPlan:
    """What to do with each tensor; built from a recipe by `plan_from_recipe`."""

    name: str = "custom"
    quant: QuantSpec | None = None
    embedding_quant: QuantSpec | None = None     # tensors named like embeddings (None: stay float)
    kmeans: KMeansSpec | None = None
    sparsity: float | None = None
    scope: str = "layer"                          # magnitude: per tensor, or one threshold for all ("global")
    nm: tuple[int, int] | None = None             # N:M pruning: n of every m consecutive inputs kept
    value_dtype: str = "float32"                  # pruned values of float32 tensors stored as this
    targets: list[str] = field(default_factory=list)
    ignore: list[str] = field(default_factory=list)
    min_numel: int = MIN_NUMEL

    def selected(self, name: str, shape: tuple[int, ...], is_float: bool) -> bool:
        """Whether tensor `name` is compressed (else it is stored as it is). `targets` / `ignore`
        match the tensor's name or its module's (`layers.0.fc` for `layers.0.fc.weight`)."""
        if not is_float or len(shape) < 2 or _numel(shape) < self.min_numel:
            return False
        names = (name, name.rpartition(".")[0])
        if self.targets and not any(matches(n, p) for n in names for p in self.targets):
            return False
        return not any(matches(n, p) for n in names for p in self.ignore)

    def quant_for(self, name: str) -> QuantSpec | None:
        return self.embedding_quant if EMBEDDING.match(name) else self.quant


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _refuse(where: str, i: int, method: str, why: str) -> SlimError:
    return SlimError(f"{where}: stage {i + 1} ({method}) {why}; a bare checkpoint can only take "
                     f"weight-only stages: {WEIGHT_ONLY}")


def plan_from_recipe(recipe) -> StreamPlan:
    """The streaming plan of a `slimkit.pipeline.recipes.Recipe`, or a one-line SlimError naming the first
    stage that cannot run without data or an architecture."""
    where = f"recipe {recipe.name}"
    opts: dict = {"name": recipe.name}
    for i, cfg in enumerate(recipe.stages):
        method = cfg.method
        if method in NEEDS:
            raise _refuse(where, i, method, f"needs {NEEDS[method]}")
        if method in ("int8", "rtn", "kmeans") and _has(opts, "quant", "embedding_quant", "kmeans"):
            raise _refuse(where, i, method, "comes after another quantization or sharing stage")
        if method == "int8":
            opts["quant"] = QuantSpec(8) if cfg.linear else None
            opts["embedding_quant"] = QuantSpec(8) if cfg.embeddings else None
        elif method == "rtn":
            opts.update(_rtn(cfg, where, i))
        elif method == "kmeans":
            if cfg.finetune_epochs:
                raise _refuse(where, i, method, f"fine-tunes its codebooks on training data (finetune_epochs="
                                                f"{cfg.finetune_epochs}; set 0 for a bare checkpoint)")
            opts["kmeans"] = KMeansSpec(cfg.bits, cfg.init.value, cfg.solver.value, cfg.max_iter,
                                        cfg.coding.value, cfg.seed)
        elif method == "magnitude":
            opts.update(_magnitude(cfg, where, i, opts))
        elif method == "nm":
            opts.update(_nm(cfg, where, i, opts))
        else:
            raise _refuse(where, i, method, "is not a streaming method")
        _selectors(cfg, opts, where, i)
    if _has(opts, "sparsity") and _has(opts, "quant", "embedding_quant"):
        raise SlimError(f"{where}: quantization after magnitude pruning is not supported on a bare "
                        "checkpoint (use kmeans after magnitude, as Deep Compression does)")
    opts.pop("_selectors", None)
    return StreamPlan(**opts)


def _has(opts: dict, *keys: str) -> bool:
    return any(opts.get(k) is not None for k in keys)


def _rtn(cfg, where: str, i: int) -> dict:
    gran = cfg.granularity.value
    if gran == "tensor":
        raise _refuse(where, i, "rtn", "uses one scale per tensor (granularity: tensor), not supported "
                                       "when streaming: use channel or group")
    group = cfg.group_size if gran == "group" else None
    out = {"quant": QuantSpec(cfg.bits, cfg.symmetric, group, cfg.scale_dtype.value, cfg.mse)}
    out["embedding_quant"] = None if not cfg.embedding_bits else QuantSpec(
        cfg.embedding_bits, True, cfg.embedding_group_size, cfg.scale_dtype.value, True)
    return out


def _magnitude(cfg, where: str, i: int, opts: dict) -> dict:
    if _has(opts, "quant", "embedding_quant", "kmeans", "sparsity"):
        raise _refuse(where, i, "magnitude", "must come first (before sharing, once)")
    if cfg.epochs or cfg.schedule.value != "oneshot":
        raise _refuse(where, i, "magnitude", f"fine-tunes on training data (schedule {cfg.schedule.value}, "
                                             f"epochs {cfg.epochs}; use schedule: oneshot, epochs: 0)")
    return {"sparsity": cfg.sparsity, "value_dtype": cfg.value_dtype.value, "scope": cfg.scope.value}


def _nm(cfg, where: str, i: int, opts: dict) -> dict:
    if _has(opts, "quant", "embedding_quant", "kmeans", "sparsity"):
        raise _refuse(where, i, "nm", "must come first (before sharing, once)")
    if cfg.epochs:
        raise _refuse(where, i, "nm", f"fine-tunes on training data (epochs {cfg.epochs}; use epochs: 0)")
    return {"sparsity": 1 - cfg.n / cfg.m, "nm": (cfg.n, cfg.m), "value_dtype": cfg.value_dtype.value}


def _selectors(cfg, opts: dict, where: str, i: int) -> None:
    """Every stage must select the same tensors (a tensor gets one chain of encoders)."""
    targets = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    mine = (targets, list(cfg.ignore))
    first = opts.setdefault("_selectors", mine)
    if mine != first:
        raise SlimError(f"{where}: stage {i + 1} ({cfg.method}): different targets/ignore per stage are "
                        "not supported on a bare checkpoint")
    opts["targets"], opts["ignore"] = mine
