"""Size estimates of the sharing methods (`kmeans`, `lowrank`, `hashed`) for `slimkit inspect`
(see `slimkit.io.sizing`): k-means of the current weights with the indices coded by the real
entropy coder ("about"), ranks and buckets from the config and shapes, layers chosen and ranks /
buckets computed by the methods' own code.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import select_modules
from slimkit.io.codecs import CODECS
from slimkit.io.sizing import Note, Plan, Stored, coded_bytes, estimates, note, sample, tensor_key
from slimkit.sharing.api import WEIGHTED
from slimkit.sharing.apply_hashed import buckets_for
from slimkit.sharing.apply_lowrank import FACTORABLE, RankRule, choose_rank, factorize
from slimkit.sharing.kmeans import cluster_1d
from slimkit.surgery import replace_module

CODERS = {"auto": "entropy", "huffman": "huffman", "ans": "ans"}


def _cluster_record(values: torch.Tensor, current: Stored, bits: int, cfg, what: str) -> Stored:
    """Palette indices (entropy-coded or bit-packed) and a codebook of 2**bits float32 values."""
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
    touched = {}
    for name, m in select_modules(plan.model, cfg.targets, WEIGHTED, None, cfg.ignore):
        key = tensor_key(name, "weight")
        plan.set(key, _cluster_record(m.weight, plan.tensors[key], cfg.bits, cfg, key))
        touched[name] = plan.tensors[key].how
        if cfg.bias_bits is not None and getattr(m, "bias", None) is not None:
            key = tensor_key(name, "bias")
            plan.set(key, _cluster_record(m.bias, plan.tensors[key], cfg.bias_bits, cfg, key))
            touched[name] += f"; bias {cfg.bias_bits}-bit clusters"
    basis = ("exact: bit-packed indices and codebooks from shapes" if str(cfg.coding.value) not in CODERS
             else "about: k-means of the current weights, indices coded by the real entropy coder")
    return note(touched, {}, basis)


@estimates("lowrank")
def _lowrank(plan: Plan, cfg, task) -> Note:
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
    return note(touched, skipped, basis)


@estimates("hashed")
def _hashed(plan: Plan, cfg, task) -> Note:
    touched = {}
    for name, m in select_modules(plan.model, cfg.targets, (nn.Linear,), None, cfg.ignore):
        k = buckets_for(name, m, cfg.ratio, cfg.buckets)
        plan.set(tensor_key(name, "weight"), Stored(m.weight.numel(), k, 32, how=f"hashed into {k} float32 buckets",
                                                    kind="hashed"))
        touched[name] = f"{k} buckets (1/{m.weight.numel() / k:.3g})"
    return note(touched, {}, "exact: real parameters and biases from shapes")
