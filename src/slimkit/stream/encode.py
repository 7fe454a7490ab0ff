"""Per-tensor streaming encoders, one per kind of `StreamPlan` entry (the methods' `tensors` hooks
fill the plan, `slimkit.core.streaming`): read one tensor from the checkpoint, append its stored
arrays to the writer, return its manifest entry.

- `quant` (affine round-to-nearest codes, e.g. int8 / int4): blocks of rows, so memory is one
  block, not the tensor;
- `kmeans` (a codebook): centroids fitted on (a sample of) the tensor, labels assigned block by block;
- `sparsity` (+ `kmeans`): the whole tensor at once (the smallest |w| of the tensor, or below the
  global threshold of `slimkit.stream.global_cut`), `sparse` codec; `nm`: the N:M mask of each row,
  `sparse` codec;
- anything else is copied as it is, block by block.

The arrays and chains are exactly what `slimkit.io.codecs.encode_chain` would give for the same
tensor and chain, so `slimkit.load_state_dict` decodes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from slimkit.core.errors import SlimError
from slimkit.core.streaming import KMeansSpec, QuantSpec, StreamPlan
from slimkit.core.text import clean
from slimkit.io.artifact import SIDE_SEP
from slimkit.io.codecs import encode_chain, pack_bits
from slimkit.io.layout import SlimWriter
from slimkit.io.manifest import TensorEntry
from slimkit.nn.codec_affine import matrix_shape, quantize_block
from slimkit.nn.quant_math import Granularity, float16_scales_lose
from slimkit.pruning.masks import nm_mask
from slimkit.quantization.groups import fit_group
from slimkit.sharing.kmeans import cluster_1d
from slimkit.stream.checkpoint import Checkpoint, Item, iter_row_blocks
from slimkit.stream.global_cut import GlobalCut

BLOCK_BYTES = 4 << 20   # input bytes per block: peak memory is about 5 blocks (temporaries of the math)
KMEANS_SAMPLE = 1 << 18  # values the centroids are fitted on (all of them in a smaller tensor)
ENTROPY_MAX_VALUES = 2 << 20   # larger index streams are bit-packed (entropy coders hold ~85 B/value)
NUMPY_STORE = {"bfloat16": np.uint16, "bool": np.bool_}   # how artifact.py stores these dtypes


def encode_item(ck: Checkpoint, item: Item, plan: StreamPlan, writer: SlimWriter,
                block_bytes: int = BLOCK_BYTES, cut: GlobalCut | None = None) -> tuple[TensorEntry, str]:
    """Encode one tensor into `writer`; returns its manifest entry and how it was stored. `cut`:
    the global pruning threshold (`plan.scope == "global"`), fitted on the same items in this order."""
    if plan.selected(item.name, item.shape, item.is_float):
        if plan.nm is not None and matrix_shape(item.shape)[1] % plan.nm[1]:
            entry, _ = copy_raw(ck, item, writer, block_bytes)
            return entry, f"copied (inputs not a multiple of {plan.nm[1]})"
        if plan.sparsity is not None:
            return encode_pruned(ck, item, plan, writer, cut)
        spec = plan.quant_for(item.name)
        if (plan.kmeans is not None or spec is not None) and plan.allow_nonfinite \
                and not all(np.isfinite(b).all() for b in _float_blocks(ck, item, block_bytes)()):
            entry, _ = copy_raw(ck, item, writer, block_bytes)
            return entry, "copied (NaN/Inf values, allow_nonfinite)"
        if plan.kmeans is not None:
            return encode_kmeans(ck, item, plan.kmeans, writer, block_bytes)
        if spec is not None:
            return encode_affine(ck, item, spec, writer, block_bytes)
    return copy_raw(ck, item, writer, block_bytes)


def refuse_nonfinite(item: Item, values: torch.Tensor | np.ndarray, method: str) -> None:
    """A one-line `SlimError` naming the tensor if `values` (part of it) holds NaN/Inf."""
    bad = int((~torch.isfinite(torch.as_tensor(values))).sum())
    if bad:
        raise SlimError(f"{method}: {bad:,} non-finite (NaN/Inf) value(s) in {clean(item.name)}; fix the weights, "
                        "leave the tensor out with `ignore`, or set allow_nonfinite: true to copy such tensors "
                        "as they are")


def refuse_lost_scales(block: torch.Tensor, scale: torch.Tensor, spec: QuantSpec, group: int) -> None:
    """A one-line `SlimError` if the block's float16 scales lose it (`float16_scales_lose`): weights of
    subnormal magnitude decoded as zeros (issue 22). In memory, rtn then keeps float32 scales for the
    layer; here the header may already be written with float16 ones, so the user chooses. Only blocks
    with a scale at float16's smallest normal (where they stop) or beyond its range are measured."""
    if spec.scale_dtype != "float16":
        return
    tiny = torch.finfo(torch.float16).tiny
    if bool(torch.isfinite(scale).all()) and not bool((scale <= tiny).any()):
        return
    gran = Granularity.CHANNEL if group == block.shape[1] else Granularity.GROUP
    if float16_scales_lose(block, spec.bits, spec.symmetric, gran, group, spec.mse):
        raise SlimError("float16 scales would lose its values (weights of subnormal magnitude decode as zeros, "
                        "or scales overflow float16); set scale_dtype: float32 in the recipe's stage")


def _key(name: str, side: str) -> str:
    return name if side == "data" else f"{name}{SIDE_SEP}{side}"


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """`pack_bits` of uint8 codes, with a fast path for 4 bits (two codes per byte, low first)."""
    flat = np.ascontiguousarray(codes).reshape(-1)
    if bits == 8:
        return flat
    if bits == 4:
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        return flat[0::2] | (flat[1::2] << 4)
    return pack_bits(flat, bits)


Layout = list[tuple[str, np.dtype, list[int]]]   # stored arrays: (key, dtype, shape), in writing order


def known_layout(item: Item, plan: StreamPlan) -> tuple[TensorEntry, str, Layout] | None:
    """Manifest entry, description and stored arrays of `item` when they follow from its shape alone
    (affine codes and raw copies); None when they depend on the values (k-means, pruning, and with
    `allow_nonfinite` whether the tensor is finite)."""
    if plan.selected(item.name, item.shape, item.is_float):
        if plan.sparsity is not None or plan.kmeans is not None or plan.allow_nonfinite:
            return None
        spec = plan.quant_for(item.name)
        if spec is not None:
            return affine_layout(item, spec)
    return raw_layout(item)


def affine_layout(item: Item, spec: QuantSpec) -> tuple[TensorEntry, str, Layout]:
    rows, cols = matrix_shape(item.shape)
    group = fit_group(cols, spec.group_size) if spec.group_size else cols   # in-memory rtn's own fallback
    numel = rows * cols
    data_shape = list(item.shape) if spec.bits == 8 else [(numel * spec.bits + 7) // 8]
    arrays: Layout = [(item.name, np.dtype(np.uint8), data_shape),
                      (_key(item.name, "0.scale"), np.dtype(spec.scale_dtype), [rows, cols // group])]
    if not spec.symmetric:
        arrays.append((_key(item.name, "0.zero"), np.dtype(np.uint8), [rows, cols // group]))
    chain: list[dict] = [{"codec": "affine", "bits": spec.bits, "symmetric": spec.symmetric, "group_size": group,
                          "scale_dtype": spec.scale_dtype, "shape": list(item.shape), "dtype": item.dtype,
                          "side": ["scale"] + ([] if spec.symmetric else ["zero"])}]
    if spec.bits < 8:
        chain.append({"codec": "bitpack", "bits": spec.bits, "shape": list(item.shape), "dtype": "uint8"})
    how = f"int{spec.bits} " + ("per-row" if group == cols else f"g{group}")
    if spec.group_size and group != spec.group_size:
        how += f" (group {spec.group_size} does not divide the {cols} inputs)"
    return TensorEntry(dtype=item.dtype, shape=list(item.shape), chain=chain), how, arrays


def raw_layout(item: Item) -> tuple[TensorEntry, str, Layout]:
    dtype = np.dtype(NUMPY_STORE.get(item.dtype, item.dtype))
    return TensorEntry(dtype=item.dtype, shape=list(item.shape), chain=[]), "copied", \
        [(item.name, dtype, list(item.shape))]


def encode_affine(ck: Checkpoint, item: Item, spec: QuantSpec, writer: SlimWriter,
                  block_bytes: int) -> tuple[TensorEntry, str]:
    """Round-to-nearest codes block by block (per row, or group-wise: the group asked for, or its
    fallback where it does not divide the row, `slimkit.quantization.groups`)."""

    entry, how, arrays = affine_layout(item, spec)
    rows, cols = matrix_shape(item.shape)
    group = entry.chain[0]["group_size"]
    scales: list = []
    zeros: list = []

    def blocks() -> Iterator[np.ndarray]:
        for r0, r1 in iter_row_blocks(rows, cols, item.itemsize, block_bytes):
            block = ck.rows(item, r0, r1)
            refuse_nonfinite(item, block, f"{spec.bits}-bit codes")
            codes, scale, zero = quantize_block(block, spec.bits, spec.symmetric, group, spec.scale_dtype, spec.mse)
            refuse_lost_scales(block, scale, spec, group)
            scales.append(scale)
            zeros.append(zero)
            yield pack_codes(codes.numpy(), spec.bits)
            ck.release(item, r0 * cols * item.itemsize, r1 * cols * item.itemsize)

    writer.add(item.name, arrays[0][1], arrays[0][2], blocks())
    writer.add_array(arrays[1][0], torch.cat(scales).numpy())
    if not spec.symmetric:
        writer.add_array(arrays[2][0], torch.cat(zeros).numpy())
    return entry, how


def _float_blocks(ck: Checkpoint, item: Item, block_bytes: int) -> Callable[[], Iterator[np.ndarray]]:
    """A factory of passes over the tensor as flat float32 numpy blocks (pages released behind)."""
    rows, cols = matrix_shape(item.shape)

    def blocks() -> Iterator[np.ndarray]:
        for r0, r1 in iter_row_blocks(rows, cols, item.itemsize, block_bytes):
            yield ck.rows(item, r0, r1).float().numpy().reshape(-1)
            ck.release(item, r0 * cols * item.itemsize, r1 * cols * item.itemsize)
    return blocks


def _codebook_dtype(dtype: str) -> np.dtype:
    return np.dtype(dtype) if dtype in ("float16", "float32", "float64") else np.dtype(np.float32)


def fit_codebook(sample: np.ndarray, spec: KMeansSpec, dtype: np.dtype) -> np.ndarray:
    """Sorted distinct centroids (in `dtype`) of a 1-D k-means fit, by `slimkit.sharing.kmeans`."""

    fit = cluster_1d(sample, 2**spec.bits, init=spec.init, solver=spec.solver, max_iter=spec.max_iter,
                     seed=spec.seed)
    return np.unique(fit.centroids.astype(dtype))


def palette_stages(labels: np.ndarray, centroids: np.ndarray, spec: KMeansSpec, stage: int,
                   shape: list[int]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Stored arrays and chain of `palette` + an index coder for nearest-centroid labels, laid out as
    the palette codec does (codebook = the used values in bit-pattern order). Entropy coding keeps
    ~85 bytes per value in flight, so tensors over `ENTROPY_MAX_VALUES` values are bit-packed."""
    used = np.flatnonzero(np.bincount(labels, minlength=centroids.size))
    book = centroids[used]
    order = np.argsort(book.view(f"u{book.dtype.itemsize}"), kind="stable")
    remap = np.zeros(centroids.size, dtype=np.uint8)
    remap[used[order]] = np.arange(used.size, dtype=np.uint8)
    indices = remap[labels].reshape(shape)
    palette = {"codec": "palette", "bits": spec.bits, "side": ["codebook"]}
    arrays = {f"{stage}.codebook": book[order]}
    if spec.coding == "bitpack" or indices.size > ENTROPY_MAX_VALUES:
        step = 1 << 20   # a multiple of 8 values: the packed blocks concatenate exactly
        flat = indices.reshape(-1)
        packed = np.concatenate([pack_codes(flat[i:i + step], spec.bits) for i in range(0, flat.size, step)]
                                or [np.zeros(0, np.uint8)])
        coder = {"codec": "bitpack", "bits": spec.bits, "shape": list(shape), "dtype": "uint8"}
        return arrays | {"data": packed}, [palette, coder]
    coders = ["huffman", "ans"] if spec.coding == "auto" else [spec.coding]
    best = min((encode_chain(indices, [{"codec": c}]) for c in coders), key=lambda sc: sc[0]["data"].size)
    return arrays | {"data": best[0]["data"]}, [palette, *best[1]]   # entropy coders keep no side arrays


def nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest sorted centroid of each value (uint8): how many midpoints lie at or below it."""

    v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
    bounds = torch.from_numpy(((centroids[1:].astype(np.float64) + centroids[:-1]) / 2).astype(np.float32))
    return torch.bucketize(v, bounds, right=True).to(torch.uint8).numpy()


def encode_kmeans(ck: Checkpoint, item: Item, spec: KMeansSpec, writer: SlimWriter,
                  block_bytes: int) -> tuple[TensorEntry, str]:
    """k-means sharing of one tensor: fit on up to `KMEANS_SAMPLE` values, label every value."""

    numel = math.prod(item.shape)
    flat = ck.tensor(item).reshape(-1)
    refuse_nonfinite(item, flat, "a codebook")
    if numel > KMEANS_SAMPLE:
        idx = np.sort(np.random.default_rng(spec.seed).integers(0, numel, KMEANS_SAMPLE))
        sample = flat[torch.from_numpy(idx)].float().numpy()
    else:
        sample = flat.float().numpy()
    del flat
    ck.release(item)
    dtype = _codebook_dtype(item.dtype)
    centroids = fit_codebook(sample, spec, dtype)
    labels = np.concatenate([nearest(b, centroids) for b in _float_blocks(ck, item, block_bytes)()])
    arrays, chain = palette_stages(labels, centroids, spec, 0, list(item.shape))
    for key, arr in arrays.items():
        writer.add_array(_key(item.name, key), arr)
    return TensorEntry(dtype=dtype.name, shape=list(item.shape), chain=chain), \
        f"kmeans {spec.bits}-bit {spec.coding}"


def keep_largest(w, prune: int):
    """The mask of `slimkit.pruning.masks.magnitude_masks` for one tensor (drop exactly `prune` of the
    smallest |w|, ties dropped in position order), by `kthvalue` instead of a full argsort (faster, and
    less memory: docs/notes/streaming-choices.md)."""

    score = w.float().abs().reshape(-1)
    keep = torch.ones(score.numel(), dtype=torch.bool)
    if prune > 0:
        threshold = score.kthvalue(prune).values
        below = score < threshold
        keep &= ~below
        tied = (score == threshold).nonzero().reshape(-1)
        keep[tied[: prune - int(below.sum())]] = False
    return keep.reshape(w.shape)


def encode_pruned(ck: Checkpoint, item: Item, plan: StreamPlan, writer: SlimWriter,
                  cut: GlobalCut | None = None) -> tuple[TensorEntry, str]:
    """Magnitude pruning (as `slimkit.pruning.masks`: per tensor, or by the global `cut`) or N:M pruning,
    stored by the `sparse` codec; the kept values then go through k-means when the plan has it, else
    a float16 `cast` if asked."""

    w = ck.tensor(item)
    if plan.nm is not None:
        keep = nm_mask(w.reshape(w.shape[0], -1), *plan.nm).reshape(w.shape)
    else:
        keep = keep_largest(w, cut.take(w) if cut is not None else round(plan.sparsity * w.numel()))
    pruned = torch.where(keep, w, torch.zeros((), dtype=w.dtype))
    del w, keep
    ck.release(item)
    arr = pruned.view(torch.uint16).numpy() if item.dtype == "bfloat16" else pruned.numpy()
    # at most half pruned, a bitmask is never larger than gap codes (>= 2 bits per kept value): skip them
    index = "mask" if plan.sparsity <= 0.5 and cut is None and plan.nm is None else "auto"
    chain: list[dict] = [{"codec": "sparse", "index": index, "entropy": False}]   # entropy-coded gaps: too slow
    if plan.kmeans is None and plan.value_dtype != "float32" and item.dtype in ("float32", "float64"):
        chain.append({"codec": "cast", "to": plan.value_dtype})
    stored, stages = encode_chain(arr, chain)
    del arr, pruned
    dtype = item.dtype
    how = f"nm {plan.nm[0]}:{plan.nm[1]}" if plan.nm else f"magnitude {plan.sparsity:g}" + (" global" if cut else "")
    if plan.kmeans is not None:
        values = stored.pop("data")
        if item.dtype == "bfloat16":
            values = torch.from_numpy(values).view(torch.bfloat16).float().numpy()
        dtype = _codebook_dtype(item.dtype).name
        stages[0]["dtype"] = dtype
        if values.size:
            centroids = fit_codebook(values, plan.kmeans, np.dtype(dtype))
            more, palette = palette_stages(nearest(values, centroids), centroids, plan.kmeans, 1, [values.size])
            stored |= more
            stages += palette
            how += f" + kmeans {plan.kmeans.bits}-bit"
        else:
            stored["data"] = values.astype(dtype)
    for key, arr in stored.items():
        writer.add_array(_key(item.name, key), arr)
    return TensorEntry(dtype=dtype, shape=list(item.shape), chain=stages), how


def copy_raw(ck: Checkpoint, item: Item, writer: SlimWriter, block_bytes: int) -> tuple[TensorEntry, str]:
    """Store the tensor as it is (bfloat16 as uint16 bit patterns, as `slimkit.save` does)."""
    entry, how, [(_, dtype, shape)] = raw_layout(item)

    def blocks() -> Iterator[memoryview]:
        for begin in range(0, item.nbytes, block_bytes):
            end = min(item.nbytes, begin + block_bytes)
            yield ck.raw(item, begin, end)
            ck.release(item, begin, end)

    writer.add(item.name, dtype, shape, blocks())
    return entry, how
