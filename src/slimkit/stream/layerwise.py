"""A one-stage recipe on a Hugging Face transformer larger than memory: one block at a time, read
from disk. The stage's method says how it works on a block (`slimkit.core.streaming`: its package
registers a `BlockWorker`, e.g. GPTQ in `slimkit.quantization.streaming`); this module only drives it.

The model is built without weights (`slimkit.stream.skeleton`); only the layers outside the repeated
blocks (embeddings, norms) and the block being worked on hold real tensors:

1. two probe forwards on one calibration batch, each block read from the checkpoint
   just before it runs and emptied right after, let the worker plan its work per block (`plan`;
   GPTQ finds its calibration stages, Linears reading the same input) and check that the blocks
   form a plain chain (`slimkit.dist.blocks`);
2. the inputs of block 0 are cached for every calibration batch; the layers outside the blocks are
   then handled (`outside`: GPTQ quantizes the embeddings as the recipe says and rounds Linears
   outside the blocks, e.g. BERT's pooler, to nearest), written and emptied;
3. block by block: load it, let the worker compress it on the cached inputs and carry them to the
   next block (`block`: GPTQ calibrates and quantizes its stages as the in-memory `GPTQ` does, same
   Hessians, same codes), append its encoded tensors to the output (`SlimWriter`), empty it.

Peak memory is about the embeddings plus one block plus the cached activations. The output is a
normal .slim file: `slimkit.load` rebuilds the model from the Hugging Face config in its manifest.

>>> report = compress_layerwise("path/to/llama-folder", "int4", "llama-int4.slim")
>>> model = slimkit.load("llama-int4.slim")
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.provenance import task_for
from slimkit.core.streaming import STREAMING, inside, stream_support
from slimkit.core.torch_utils import num_threads
from slimkit.dist.blocks import BlockChain, find_blocks
from slimkit.io.artifact import codec_chains, encode_tensor
from slimkit.io.layout import SlimWriter
from slimkit.io.manifest import Manifest, TensorEntry
from slimkit.nn.kernels import kernel_mode
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.api import StreamReport, _large_blocks_to_os
from slimkit.stream.skeleton import WeightSource, build_skeleton
from slimkit.stream.verify import StreamCheck
from slimkit.surgery.edits import compact_edits

OnBlock = Callable[[str, int, int], None]   # (block just written, blocks done, blocks in all)


def layerwise_config(recipe: str | object):
    """(recipe name, config) of a recipe of one stage whose method streams block by block and whose
    config allows it; else a one-line SlimError saying what can run layer by layer."""

    plan = load_recipe(recipe) if isinstance(recipe, str) else recipe
    methods = [cfg.method for cfg in plan.stages]
    support = stream_support(methods[0]) if len(methods) == 1 else None
    if support is not None and support.blocks is not None:
        if support.check_blocks is not None:
            support.check_blocks(plan.stages[0])
        return plan.name, plan.stages[0]
    ways = [f"one {m} stage" + (f" {s.blocks_when}" if s.blocks_when else "") for m, s in STREAMING.items() if s.blocks]
    raise SlimError(f"recipe {plan.name} ({' + '.join(methods)}): layer-by-layer streaming runs a recipe of "
                    f"{_one_of(ways)}; weight-only recipes stream tensor by tensor")


def _one_of(ways: list[str]) -> str:
    """"a, b or c"."""
    return " or ".join(filter(None, [", ".join(ways[:-1]), ways[-1]])) if ways else "no stage (none registered)"


def _probe(batch):
    """The first two rows of a batch of tensors (enough to trace the model's structure)."""
    if isinstance(batch, dict) and all(isinstance(v, torch.Tensor) and v.dim() for v in batch.values()):
        return {k: v[:2] for k, v in batch.items()}
    return batch


class _OnDemand:
    """While active, each block is loaded just before it runs and emptied right after."""

    def __init__(self, source: WeightSource, blocks: list[str]):
        self.source, self.blocks, self.loaded, self.hooks = source, blocks, set(), []

    def __enter__(self) -> _OnDemand:
        for name in self.blocks:
            block = self.source.model.get_submodule(name)

            def pre(_m, _args, name=name):
                if name not in self.loaded:
                    self.source.load(name)
                    self.loaded.add(name)

            def post(_m, _args, _out, name=name):
                if name in self.loaded:
                    self.source.release(name)
                    self.loaded.discard(name)

            self.hooks += [block.register_forward_pre_hook(pre, prepend=True), block.register_forward_hook(post)]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self.hooks:
            hook.remove()
        for name in list(self.loaded):  # a forward stopped inside a block
            self.source.release(name)
        self.loaded.clear()


class _Output:
    """Encodes modules' tensors into the writer as `slimkit.save` does (`encode_tensor`), and
    remembers their manifest entries."""

    def __init__(self, model: nn.Module, writer: SlimWriter):
        self.model, self.writer = model, writer
        self.tensors: dict[str, TensorEntry] = {}

    def write(self, name: str, keys: list[str] | None = None) -> None:
        """Write the state-dict tensors of module `name` (only `keys`, full names, when given)."""
        module = self.model.get_submodule(name) if name else self.model
        chains = codec_chains(module)
        prefix = f"{name}." if name else ""
        for local, t in module.state_dict(keep_vars=False).items():
            key = prefix + local
            if (keys is not None and key not in keys) or key in self.tensors:
                continue
            stored, self.tensors[key] = encode_tensor(key, t, chains.get(local, []))
            for array, arr in stored.items():
                self.writer.add_array(array, arr)


def compress_layerwise(folder: str | os.PathLike, recipe: str | object, out: str | os.PathLike, *,
                       on_block: OnBlock | None = None, threads: int | None = None,
                       overwrite: bool = True, verify: bool = True) -> StreamReport:
    """Compress the Hugging Face model in `folder` block by block from its safetensors checkpoint
    into `out` (see the module doc); `recipe`: one stage whose method streams block by block
    (`layerwise_config`: e.g. `int4`, one `gptq` stage). Calibration data is the model's task
    (`slimkit.core.provenance.task_for`). `overwrite=False`: never replace an existing `out`.
    The finished file is read back before it takes the name `out` (`slimkit.stream.verify.StreamCheck`,
    every tensor decoded one at a time: less than the embeddings and a block this run held anyway);
    if that fails, SlimError and no file. `verify=False` skips it."""

    _large_blocks_to_os()
    start, out = time.perf_counter(), Path(out)
    name, cfg = layerwise_config(recipe)
    model, transposed = build_skeleton(folder)
    worker = stream_support(cfg.method).blocks(model, task_for(model), cfg)
    blocks = find_blocks(model)
    if len(blocks) < 2:
        raise SlimError(f"{folder}: no repeated blocks (a ModuleList of layers) to process one at a time")
    rest = [n for n, _ in model.named_modules() if not inside(n, blocks)]
    # compressed layers run their compact path while blocks are processed: no timed kernel choice, no
    # decoded copy or kernel session kept beyond the call, so the peak does not depend on timing noise
    with num_threads(threads), kernel_mode("compact"), WeightSource(model, folder, transposed) as source, \
            SlimWriter(out, overwrite) as writer:
        if any(out.resolve() == s.path.resolve() for s in source.ck.shards):
            raise SlimError(f"--out {out} is one of the input files; choose another output path")
        for n in rest:
            source.load(n, recurse=False)
        probe = _probe(worker.batches[0])
        with _OnDemand(source, blocks):
            per_block = worker.plan(blocks, probe)
            chain = None if per_block is None else BlockChain.trace(model, worker.task, worker.batches, blocks,
                                                                    probe=probe)
        if per_block is None or chain is None:
            raise SlimError(f"{folder}: the model's blocks do not run as a plain chain; it cannot be "
                            "compressed block by block (load it whole: compress without --stream)")
        worker.outside(blocks)
        output = _Output(model, writer)
        output.write("", [k for k in model.state_dict() if not inside(k.rpartition(".")[0], blocks)])
        for n in rest:
            source.release(n, recurse=False)
        last = max(per_block, default=-1)
        for index, (block_name, block) in enumerate(chain.blocks()):
            source.load(block_name)
            worker.block(block_name, block, chain, per_block.get(index, []), index < last)
            output.write(block_name)
            source.release(block_name)
            if on_block is not None:
                on_block(block_name, index + 1, len(blocks))
        del chain
        info = {"recipe": name, "source": str(folder), "streamed": "layerwise"} | getattr(worker, "info", {})
        manifest = Manifest(base=model.slimkit_base, edits=compact_edits(model), tensors=output.tensors, info=info)
        check = StreamCheck(manifest, writer.digests, out)
        size = writer.finish(manifest, check if verify else None)
        total = source.ck.nbytes
    return StreamReport(str(out), size, total, len(output.tensors), time.perf_counter() - start,
                        dict(worker.counts), check.summary)
