"""One size estimator per method config: which modules the config would touch (asked through the
method's own selection function, never re-implemented) and what each would cost on disk.

Nothing here trains, calibrates or reads data. Sizes follow from shapes and the config (bits,
group sizes, ranks, buckets, student widths); where they depend on values (sparse positions,
Huffman-coded cluster indices, which layers a global threshold hits) they come from the current
weights and are marked "about"; where data decides how far a method goes (APoZ), the estimate
assumes the config's target is reached.

>>> plan = sizing.Plan.of(model)
>>> note = estimate_stage(plan, Int8(), task=None)
>>> note["touched"]["fc1"], plan.total()
('int8 per-channel weights, fp32 scales', 53793)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from slimkit.core.methods import MethodConfig
from slimkit.core.errors import SlimError
from slimkit.eval.sizing import Plan, Stored, coded_bytes, sample, sparse_record

Note = dict  # {"touched": {layer: how}, "skipped": {layer: why}, "basis": str}
Estimator = Callable[[Plan, MethodConfig, object], Note]
ESTIMATORS: dict[str, Estimator] = {}
APOZ_CUT = 0.16  # share of a normal spread above mean + 1 std: what one APoZ round removes


def estimates(*methods: str):
    """Decorator: register an estimator for configs whose `method` is one of `methods`."""
    def wrap(fn: Estimator) -> Estimator:
        for m in methods:
            ESTIMATORS[m] = fn
        return fn
    return wrap


def estimate_stage(plan: Plan, config: MethodConfig, task=None) -> Note:
    """Update `plan` as `config` would change the stored model; return what it touched and why not."""
    fn = ESTIMATORS.get(config.method)
    if fn is None:
        raise SlimError(f"no size estimate for method {config.method!r}")
    return fn(plan, config, task)


def _note(touched: dict, skipped: dict, basis: str) -> Note:
    return {"touched": touched, "skipped": skipped, "basis": basis}


def _key(name: str, attr: str) -> str:
    return f"{name}.{attr}" if name else attr


def _codes(rows: int, cols: int, bits: int, groups: int, scale_bytes: int, zero: bool) -> Stored:
    """A `QuantLinear` / `QuantEmbedding` weight: packed codes, one scale (and zero) per group."""
    extra = groups * scale_bytes + (math.ceil(groups * bits / 8) if zero else 0)
    return Stored(rows * cols, rows * cols, bits, extra, arrays=2 + zero, kind="quant")


# -- quantization -----------------------------------------------------------------------------

def _quant_targets(plan: Plan, cfg, handled: tuple) -> tuple[list, dict]:
    from slimkit.quantization.convert import select_targets

    return select_targets(plan.model, cfg.targets, cfg.ignore, None, handled)


@estimates("int8", "int8-static")
def _int8(plan: Plan, cfg, task) -> Note:
    static = cfg.method == "int8-static"
    handled = ((nn.Linear,) if getattr(cfg, "linear", True) else ()) + ((nn.Embedding,) if cfg.embeddings else ()) \
        + ((nn.Conv2d,) if getattr(cfg, "conv", True) else ())
    picked, skipped = _quant_targets(plan, cfg, handled)
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if type(m) is nn.Conv2d:   # QuantConv2d: uint8 codes, a (rows, 1) fp32 scale
            how = "int8 per-channel weights, fp32 scales (conv: weight-only)"
            plan.set(_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows, how, arrays=2, kind="quant"))
        elif type(m) is nn.Linear:
            how = "int8 per-channel weights, fp32 scales" + (", static input scale" if static else "")
            plan.set(_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows + 4 * static, how,
                                                  arrays=2 + static, kind="quant"))
        else:
            how = "int8 rows, fp32 scales"
            plan.set(_key(name, "weight"), Stored(rows * cols, rows * cols, 8, 4 * rows, how, arrays=2, kind="quant"))
        touched[name] = how
    basis = "exact: int8 codes and fp32 scales from shapes"
    if static and getattr(cfg, "dynamic_fallback", None) is not None:
        basis += " (4 B less per layer calibration keeps dynamic)"
    return _note(touched, skipped, basis)


def _group_count(cols: int, granularity: str, group_size: int) -> tuple[int, int]:
    """(scale rows factor, groups per row) of a weight with `cols` inputs."""
    if granularity == "tensor":
        return 0, 1
    return 1, (cols // group_size if granularity == "group" else 1)


@estimates("rtn", "gptq")
def _weight_only(plan: Plan, cfg, task) -> Note:
    from slimkit.quantization.conv import conv_layout
    from slimkit.nn.quant_math import check_group

    handled = (nn.Linear, nn.Conv2d) + ((nn.Embedding,) if cfg.embedding_bits else ())
    picked, skipped = _quant_targets(plan, cfg, handled)
    scale_bytes = 2 if cfg.scale_dtype.value == "float16" else 4
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        if type(m) is nn.Conv2d:   # the method's own layout: per-channel where groups do not fit
            gran, size = conv_layout(cols, cfg.granularity, cfg.group_size)
            per_row, groups = _group_count(cols, gran.value, size)
            stored = _codes(rows, cols, cfg.bits, max(1, rows * per_row) * groups, scale_bytes, not cfg.symmetric)
            where = gran.value if gran.value != "group" else f"groups of {size}"
            how = f"{cfg.bits}-bit {'sym' if cfg.symmetric else 'asym'} {where} (conv), {cfg.scale_dtype.value} scales"
        elif type(m) is nn.Linear:
            size = check_group(cols, cfg.granularity, cfg.group_size, name)   # the method's own check
            per_row, groups = _group_count(cols, cfg.granularity.value, size)
            stored = _codes(rows, cols, cfg.bits, max(1, rows * per_row) * groups, scale_bytes, not cfg.symmetric)
            where = cfg.granularity.value if cfg.granularity.value != "group" else f"groups of {size}"
            how = f"{cfg.bits}-bit {'sym' if cfg.symmetric else 'asym'} {where}, {cfg.scale_dtype.value} scales"
        else:
            size = cfg.embedding_group_size or cols
            check_group(cols, "group", size, name)
            stored = _codes(rows, cols, cfg.embedding_bits, rows * (cols // size), scale_bytes, False)
            how = f"{cfg.embedding_bits}-bit rows in groups of {size}"
        plan.set(_key(name, "weight"), Stored(stored.numel, stored.values, stored.bits, stored.extra, how,
                                              arrays=stored.arrays, kind="quant"))
        touched[name] = how
    return _note(touched, skipped, "exact: packed codes, scales and zero points from shapes")


@estimates("qat")
def _qat(plan: Plan, cfg, task) -> Note:
    picked, skipped = _quant_targets(plan, cfg, (nn.Linear, nn.Conv2d))
    touched = {}
    for name, m in picked:
        rows, cols = m.weight.shape[0], m.weight[0].numel()
        how = f"{cfg.bits}-bit per-channel (QAT), fp32 scales"
        plan.set(_key(name, "weight"), Stored(rows * cols, rows * cols, cfg.bits, 4 * rows, how, arrays=2,
                                              kind="quant"))
        touched[name] = how
    return _note(touched, skipped, "exact: packed codes and scales from shapes")


# -- pruning ----------------------------------------------------------------------------------

def _sparse(plan: Plan, name: str, m: nn.Module, mask: torch.Tensor, cfg, how: str) -> None:
    bits = 16 if cfg.value_dtype.value == "float16" else 32
    plan.set(_key(name, "weight"), sparse_record(mask, bits, f"{how}, {bits}-bit values"))
    bias = _key(name, "bias")
    if getattr(m, "bias", None) is not None and cfg.bias_dtype.value == "float16" and bias not in plan.touched:
        plan.set(bias, Stored(m.bias.numel(), m.bias.numel(), 16, how="float16", kind="cast"))


@estimates("magnitude")
def _magnitude(plan: Plan, cfg, task) -> Note:
    from slimkit.pruning.masks import magnitude_masks
    from slimkit.pruning.unstructured import prunable

    modules = prunable(plan.model, cfg.targets, cfg.ignore, None)
    masks = magnitude_masks({k: m.weight for k, m in modules.items()}, cfg.sparsity, cfg.scope.value)
    touched = {}
    for name, m in modules.items():
        how = f"sparse, {1 - int(masks[name].sum()) / m.weight.numel():.1%} zeros"
        _sparse(plan, name, m, masks[name], cfg, how)
        touched[name] = how
    basis = "about: the current weights' mask, coded by the sparse codec" + (
        " (fine-tuning may share a global threshold out differently)" if cfg.scope.value == "global" else "")
    return _note(touched, {}, basis)


@estimates("nm")
def _nm(plan: Plan, cfg, task) -> Note:
    from slimkit.pruning.masks import nm_mask
    from slimkit.pruning.unstructured import prunable

    touched, skipped = {}, {}
    for name, m in prunable(plan.model, cfg.targets, cfg.ignore, None).items():
        fan_in = m.weight[0].numel()
        if fan_in % cfg.m:
            skipped[name] = f"input size {fan_in} is not a multiple of {cfg.m}"
            continue
        how = f"{cfg.n}:{cfg.m} sparse"
        _sparse(plan, name, m, nm_mask(m.weight, cfg.n, cfg.m), cfg, how)
        touched[name] = how
    if not touched:
        raise SlimError(f"no selected layer has an input size divisible by {cfg.m}")
    return _note(touched, skipped, "about: nonzeros exact; positions from the current weights' mask")


def _channel_rounds(plan: Plan, cfg, task, cut: float, rounds: int) -> tuple[dict, dict]:
    """Cut a fraction `cut` of every selected group's channels per round (the kept ones: the first)."""
    from slimkit.pruning.structured import param_count, prunable_groups, require_relu
    from slimkit.surgery.shrink import prune_groups_
    from slimkit.surgery.trace import trace_groups

    if task is None:
        raise SlimError(f"{cfg.method} needs example inputs to trace the model (a builtin model or a "
                        ".slim file made from one)")
    model = plan.editable()
    start = param_count(model)
    channels: dict[str, int] = {}
    for _ in range(rounds):
        groups = prunable_groups(model, task, cfg.targets, cfg.ignore, None)
        if cfg.method == "apoz":
            require_relu(groups)   # as the real run: APoZ is measured after a ReLU
        cuts = []
        for g in groups:
            keep = max(min(cfg.min_channels, g.channels), g.channels - math.floor(cut * g.channels))
            if keep < g.channels:
                cuts.append((g, torch.arange(keep)))
                channels[g.producer] = keep
        if not cuts:
            break
        prune_groups_(model, cuts)
        if cfg.target_ratio and start / param_count(model) >= cfg.target_ratio:
            break
    plan.refresh()
    _, problems = trace_groups(model, task.example_inputs(2))
    touched = {name: f"{n} channels kept" for name, n in channels.items()}
    return touched, problems


@estimates("weight-norm", "structured", "apoz")
def _structured(plan: Plan, cfg, task) -> Note:
    from slimkit.pruning.transformer import find_blocks

    if cfg.method == "structured" and find_blocks(plan.model):
        return _transformer(plan, cfg)
    if cfg.method == "apoz":
        touched, skipped = _channel_rounds(plan, cfg, task, APOZ_CUT, cfg.rounds)
        basis = (f"about: data decides; assumes each round removes the {APOZ_CUT:.0%} of neurons above "
                 f"mean + std until {cfg.target_ratio or '-'}x fewer parameters or {cfg.rounds} rounds")
        return _note(touched, skipped, basis)
    touched, skipped = _channel_rounds(plan, cfg, task, cfg.ratio, cfg.rounds)
    basis = (f"at least: {cfg.ratio:.0%} of each group's channels removed per round, {cfg.rounds} round(s), "
             "unless a round is undone for losing more than max_drop")
    return _note(touched, skipped, basis)


def _transformer(plan: Plan, cfg) -> Note:
    from slimkit.pruning.transformer import find_blocks, prune_ffn_, prune_heads_
    from slimkit.core.select import matches

    model = plan.editable()
    patterns = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    touched = {}
    for name, block in find_blocks(model).items():
        if (patterns and not any(matches(name, p) for p in patterns)) or any(matches(name, p) for p in cfg.ignore):
            continue
        ffn = block.intermediate.dense.out_features
        heads = block.attention.self.num_attention_heads
        keep_ffn, keep_heads = max(1, ffn - int(cfg.ratio * ffn)), max(1, heads - int(cfg.head_ratio * heads))
        if keep_ffn < ffn:
            prune_ffn_(model, name, torch.arange(keep_ffn))
        if keep_heads < heads:
            prune_heads_(model, name, torch.arange(keep_heads))
        touched[name] = f"{keep_ffn}/{ffn} FFN neurons, {keep_heads}/{heads} heads"
    if not touched:
        raise SlimError("no transformer block matches the selection")
    plan.refresh()
    return _note(touched, {}, "exact: FFN neurons and heads removed by the ratios")


# -- sharing ----------------------------------------------------------------------------------

CODERS = {"auto": "entropy", "huffman": "huffman", "ans": "ans"}


def _cluster_record(values: torch.Tensor, current: Stored, bits: int, cfg, what: str) -> Stored:
    """Palette indices (entropy-coded or bit-packed) and a codebook of 2**bits float32 values."""
    from slimkit.io.codecs import CODECS
    from slimkit.sharing.kmeans import cluster_1d

    if current.kind not in ("raw", "cast", "sparse"):
        raise SlimError(f"kmeans: {what} is already encoded ({current.how}); k-means sharing can follow "
                        "pruning but not quantization or another sharing stage")
    kept = current.values
    if kept == 0:
        raise SlimError(f"kmeans: {what} has no nonzero weights to cluster")
    flat = values.detach().reshape(-1)
    if kept < flat.numel():    # pruned first: the surviving values are (about) the largest ones
        flat = flat[flat.abs().argsort(descending=True)[:kept]]
    index = current.extra if current.kind == "sparse" else 0.0
    k = 2 ** bits
    coding = str(getattr(cfg.coding, "value", cfg.coding))
    if coding not in CODERS:
        return Stored(current.numel, kept, bits, index + 4 * k, f"{bits}-bit clusters, bit-packed",
                      exact=current.exact, arrays=current.arrays + 1, kind="cluster")
    fit = cluster_1d(sample(flat), k, init=cfg.init.value, solver=cfg.solver.value,
                     max_iter=min(cfg.max_iter, 50), seed=cfg.seed)
    codec = CODERS[coding] if CODERS[coding] in CODECS else "huffman"
    coded, arrays = coded_bytes(fit.labels, k, [{"codec": codec}], kept)
    how = f"{bits}-bit clusters, {codec}-coded (~{8 * coded / kept:.2f} bits each)"
    return Stored(current.numel, 0, 0, index + 4 * k + coded, how, exact=False,
                  arrays=current.arrays + arrays, kind="cluster")


@estimates("kmeans")
def _kmeans(plan: Plan, cfg, task) -> Note:
    from slimkit.core.select import select_modules
    from slimkit.sharing.api import WEIGHTED

    touched = {}
    for name, m in select_modules(plan.model, cfg.targets, WEIGHTED, None, cfg.ignore):
        key = _key(name, "weight")
        plan.set(key, _cluster_record(m.weight, plan.tensors[key], cfg.bits, cfg, key))
        touched[name] = plan.tensors[key].how
        if cfg.bias_bits is not None and getattr(m, "bias", None) is not None:
            key = _key(name, "bias")
            plan.set(key, _cluster_record(m.bias, plan.tensors[key], cfg.bias_bits, cfg, key))
            touched[name] += f"; bias {cfg.bias_bits}-bit clusters"
    basis = ("exact: bit-packed indices and codebooks from shapes" if str(cfg.coding.value) not in CODERS
             else "about: k-means of the current weights, indices coded by the real entropy coder")
    return _note(touched, {}, basis)


@estimates("lowrank")
def _lowrank(plan: Plan, cfg, task) -> Note:
    from slimkit.core.select import select_modules
    from slimkit.sharing.apply_lowrank import FACTORABLE, RankRule, choose_rank, factorize
    from slimkit.surgery import replace_module

    rule = RankRule(cfg.rank, cfg.energy, cfg.budget)
    names = [n for n, _ in select_modules(plan.model, cfg.targets, FACTORABLE, None, cfg.ignore)]
    model = plan.editable()
    touched, skipped = {}, {}
    for name in names:
        layer = model.get_submodule(name)
        rank = choose_rank(name, layer, rule, None, cfg.damp)
        out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        if rule.rank is None and rank * (fan_in + out) >= out * fan_in:
            skipped[name] = f"rank {rank} would not be smaller than the dense layer"
            continue
        replace_module(model, name, factorize(layer, rank, None, cfg.damp))
        touched[name] = f"rank {rank}: {fan_in}->{rank}->{out}"
    plan.refresh()
    basis = ("exact: ranks from the config and shapes" if cfg.energy is None
             else "about: rank from the weight spectrum (pca mode picks it on data)")
    return _note(touched, skipped, basis)


@estimates("hashed")
def _hashed(plan: Plan, cfg, task) -> Note:
    from slimkit.core.select import select_modules
    from slimkit.sharing.apply_hashed import buckets_for

    touched = {}
    for name, m in select_modules(plan.model, cfg.targets, (nn.Linear,), None, cfg.ignore):
        k = buckets_for(name, m, cfg.ratio, cfg.buckets)
        plan.set(_key(name, "weight"), Stored(m.weight.numel(), k, 32, how=f"hashed into {k} float32 buckets",
                                              kind="hashed"))
        touched[name] = f"{k} buckets (1/{m.weight.numel() / k:.3g})"
    return _note(touched, {}, "exact: real parameters and biases from shapes")


# -- distillation -----------------------------------------------------------------------------

@estimates("distill")
def _distill(plan: Plan, cfg, task) -> Note:
    student = cfg.make_student(plan.model)
    plan.replace_model(student)
    touched = {"(model)": f"student of {sum(p.numel() for p in student.parameters()):,} parameters"}
    return _note(touched, {}, "exact: the student's float32 parameters")
