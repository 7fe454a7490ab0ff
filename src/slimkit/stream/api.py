"""Compress a checkpoint without its architecture, one tensor at a time.

>>> from slimkit.stream import compress_checkpoint
>>> report = compress_checkpoint("model.safetensors", "int8", "model.slim")
>>> report.ratio, report.throughput_mb_s
(3.98, 310.5)
>>> tensors = slimkit.load_state_dict("model.slim", lazy=True)   # decodes a tensor when asked
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from slimkit.core.errors import SlimError
from slimkit.core.torch_utils import num_threads
from slimkit.io.layout import SlimWriter
from slimkit.io.manifest import Manifest, TensorEntry
from slimkit.pipeline.recipes import load_recipe
from slimkit.stream.checkpoint import Item, open_checkpoint
from slimkit.stream.encode import BLOCK_BYTES, encode_item, known_layout
from slimkit.stream.estimate import touched, untouched
from slimkit.stream.global_cut import GlobalCut
from slimkit.stream.hf_base import runnable_base
from slimkit.stream.plan import StreamPlan, plan_from_recipe
from slimkit.stream.verify import StreamCheck

M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter
DECODE_BLOCKS = 4       # the reload check decodes tensors of at most this many blocks (int8/int4 runs)
OnTensor = Callable[[Item, int, int], None]   # (tensor just done, bytes done, bytes in all)


@dataclass
class StreamReport:
    """What `compress_checkpoint` wrote."""

    out: str
    bytes: int               # size of the .slim file
    input_bytes: int         # bytes of the checkpoint's tensors
    tensors: int
    seconds: float
    stored: dict[str, int] = field(default_factory=dict)   # "int8 per-row" -> number of tensors
    verified: dict[str, int] = field(default_factory=dict)  # what the reload check read back (`StreamCheck`)

    @property
    def ratio(self) -> float:
        return self.input_bytes / self.bytes if self.bytes else float("nan")

    @property
    def throughput_mb_s(self) -> float:
        return self.input_bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _large_blocks_to_os() -> None:
    """Have glibc map every allocation of 1 MiB or more and unmap it when freed. Its default dynamic
    threshold grows to the block size, after which freed blocks stay in a fragmenting heap and resident
    memory creeps up over a large checkpoint; with this it stays flat (process-wide; figures in
    docs/notes/streaming-choices.md)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc
        pass


def _plan(recipe: str | StreamPlan | object) -> StreamPlan:
    if isinstance(recipe, StreamPlan):
        return recipe
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    return plan_from_recipe(recipe)


def compress_checkpoint(source: str | os.PathLike, recipe: str | StreamPlan | object, out: str | os.PathLike,
                        *, on_tensor: OnTensor | None = None, block_bytes: int = BLOCK_BYTES,
                        threads: int | None = 1, overwrite: bool = True,
                        label: str | os.PathLike | None = None, verify: bool = True) -> StreamReport:
    """Compress a `.safetensors` file or a sharded checkpoint (index json, or its folder) with a
    weight-only recipe (a shipped name, a .yaml path, a `Recipe` or a `StreamPlan`) into `out`.

    Tensors are read block by block (pread) and written as they are encoded: memory stays near a few
    blocks of `block_bytes` for int8/int4 (one tensor, a few times over, for k-means and pruning). The
    output appears atomically when complete; the input is never modified. The work is memory-bound,
    so `threads=1` is the default: more torch threads on a shared, busy machine stall in OpenMP
    barriers (docs/notes/streaming-choices.md); None keeps torch's setting.
    `overwrite=False`: SlimError, and nothing written, if `out` exists when the file is complete.
    `label`: the checkpoint as the manifest names it, when `source` is a converted copy of it (a
    pickled state dict written to a temporary .safetensors). A recipe that selects no tensor is refused.

    The finished file is read back before it takes the name `out` (`slimkit.stream.verify.StreamCheck`:
    its manifest, every array's CRC-32 against what was written, every tensor decoded one at a time,
    the architecture it names); if that fails, SlimError and no file. An int8/int4 run decodes only
    tensors of at most `DECODE_BLOCKS` blocks (larger ones are checked by their bytes), so its memory
    stays a few blocks; a run that held whole tensors (k-means, pruning) decodes them all.
    `verify=False` skips the check (the report's `verified` is then empty).
    """

    _large_blocks_to_os()
    plan = _plan(recipe)
    start = time.perf_counter()
    out = Path(out)
    with open_checkpoint(source) as ck, num_threads(threads):
        if any(out.resolve() == s.path.resolve() for s in ck.shards):
            raise SlimError(f"--out {out} is one of the input files; choose another output path")
        items = ck.items()
        if not touched(items, plan):   # never a "1.0x" copy; `slimkit inspect` says the same (stream.estimate)
            raise untouched(plan.name, str(label or source), plan)
        total = sum(it.nbytes for it in items)
        tensors: dict[str, TensorEntry] = {}
        counts: Counter[str] = Counter()
        done = 0
        base = runnable_base(source, [it.name for it in items]) or \
            {"kind": "weights", "path": str(Path(label or source).resolve())}
        info = {"recipe": plan.name, "source": str(label or source), "streamed": True}
        cut = None
        if plan.sparsity is not None and plan.scope == "global" and plan.nm is None:   # pass 1 and 2: the threshold

            chosen = [it for it in items if plan.selected(it.name, it.shape, it.is_float)]
            cut = GlobalCut.fit(ck, chosen, plan.sparsity, block_bytes)
        with SlimWriter(out, overwrite) as writer:
            layouts = [known_layout(item, plan) for item in items]
            known = [lay for lay in layouts if lay is not None]
            if len(known) == len(items):   # sizes follow from shapes: header first, payloads written once
                entries = {it.name: lay[0] for it, lay in zip(items, known, strict=True)}
                writer.reserve([a for lay in known for a in lay[2]], Manifest(base=base, tensors=entries, info=info))
            for item in items:
                try:
                    entry, how = encode_item(ck, item, plan, writer, block_bytes, cut)
                except SlimError as exc:
                    raise SlimError(f"{ck.source}: tensor {item.name!r}: {exc}") from None
                tensors[item.name] = entry
                counts[how] += 1
                done += item.nbytes
                if on_tensor is not None:
                    on_tensor(item, done, total)
            manifest = Manifest(base=base, tensors=tensors, info=info)
            whole = plan.kmeans is not None or plan.sparsity is not None or plan.nm is not None
            check = StreamCheck(manifest, writer.digests, out, None if whole else DECODE_BLOCKS * block_bytes)
            size = writer.finish(manifest, check if verify else None)
    return StreamReport(str(out), size, total, len(items), time.perf_counter() - start, dict(counts),
                        check.summary)
