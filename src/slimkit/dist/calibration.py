"""Layer-by-layer calibration driver shared by the data-dependent methods (GPTQ, AWQ, SmoothQuant,
Wanda, SparseGPT): collect the statistics of each layer's inputs with forward hooks (a Conv2d's: of
its im2col patches), let the method compress the layer, and move on, so later layers see the
already-compressed earlier ones (as GPTQ and SparseGPT do).

Per layer the accumulator (`hessian_init`) holds the token count `n`, per input channel the sums
of |x| and x^2 and the maximum |x|, and (unless `hessian=False`) the sum of x x^T, the Hessian
H = 2/n X^T X of the layer's reconstruction error ||X W^T - X Q^T||^2.

Linears that read the same input tensor (a block's q/k/v projections) form one stage and are
calibrated by the same pass. On a transformer (`slimkit.dist.blocks`) the driver works block by
block: block i runs on its cached inputs for each of its stages, then once more to produce the
inputs of block i+1, so the model's prefix is never re-run. Elsewhere each stage re-runs the
model's forward, stopped (by an exception raised in a hook) as soon as the stage's inputs are in.

Under an initialised `torch.distributed` group each rank calibrates on its share of the batches
(`slimkit.dist.collectives.shard`) and the statistics are reduced over ranks (sums summed, maxima
maximised), so every rank compresses with the single-process statistics.

>>> for stage, stats in hessian_stages(model, task, batches, names):
...     quantize(stage, stats)        # replace (or edit) the stage's layers before asking for the next
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.core.errors import ConfigError
from slimkit.core.task import Batch, Task
from slimkit.dist.blocks import BlockChain, StopForward, find_blocks
from slimkit.dist.collectives import all_reduce_int, all_reduce_max, all_reduce_sum, is_distributed, shard

_Stop = StopForward


# -- per-layer input statistics ----------------------------------------------------------------

def hessian_init(cols: int, device: torch.device | str | None = None, hessian: bool = True) -> dict:
    """An empty accumulator for a layer with `cols` inputs, on `device` (CPU by default): float32
    sums of x x^T (when `hessian`), |x| and x^2 per input channel, the maximum |x|, and the count."""
    z = torch.zeros(cols, device=device)
    return {"h": torch.zeros(cols, cols, device=device) if hessian else None, "n": 0,
            "abs": z, "sq": z.clone(), "amax": z.clone()}


def hessian_update(acc: dict, x: torch.Tensor) -> None:
    """Add calibration inputs `x` (..., cols) to the running sums."""
    device = acc["abs"].device
    x = x.detach().reshape(-1, x.shape[-1]).to(device=device, dtype=torch.float32)
    if acc.get("h") is not None:
        acc["h"].addmm_(x.t(), x)
    a = x.abs()
    acc["abs"] += a.sum(0)
    acc["sq"] += x.square().sum(0)
    if a.shape[0]:
        torch.maximum(acc["amax"], a.amax(0), out=acc["amax"])
    acc["n"] += x.shape[0]


def hessian_all_reduce(acc: dict) -> dict:
    """Reduce the accumulator over all ranks of an initialised process group (no-op in one process):
    sums and the row count summed, never averages, maxima maximised, so N ranks that each saw 1/N of
    the calibration data end with the single-process statistics.

    >>> acc = hessian_all_reduce(acc)      # then hessian_value(acc) is the same on every rank
    """

    if is_distributed():
        for key in ("h", "abs", "sq"):
            if acc.get(key) is not None:
                all_reduce_sum(acc[key])
        if "amax" in acc:
            all_reduce_max(acc["amax"])
        acc["n"] = all_reduce_int(acc["n"])
    return acc


def hessian_value(acc: dict) -> torch.Tensor:
    """The averaged Hessian 2/n X^T X, float32 (ConfigError when nothing was accumulated)."""
    if acc["n"] == 0:
        raise ConfigError("no calibration inputs reached this layer")
    if acc.get("h") is None:
        raise ValueError("this accumulator was made with hessian=False")
    return (2.0 * acc["h"] / acc["n"]).float()


def channel_stats(acc: dict) -> dict[str, torch.Tensor]:
    """Per input channel: mean |x| ("mean_abs"), the L2 norm over all tokens ("norm"), max |x| ("amax").

    >>> acc = hessian_init(2); hessian_update(acc, torch.tensor([[1.0, -2.0], [3.0, 0.0]]))
    >>> channel_stats(acc)["mean_abs"]
    tensor([2., 1.])
    """
    if acc["n"] == 0:
        raise ConfigError("no calibration inputs reached this layer")
    return {"mean_abs": acc["abs"] / acc["n"], "norm": acc["sq"].sqrt(), "amax": acc["amax"].clone()}


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1, after dampening the diagonal by `damp` times its mean (more,
    tenfold per try, if needed), as GPTQ and SparseGPT use it."""
    diag_mean = float(torch.diag(h).mean())
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(6):
        try:
            l_factor = torch.linalg.cholesky(h + (damp * 10**attempt) * diag_mean * eye)
            # faster than cholesky_inverse on CPU (docs/notes/linear-algebra-choices.md)
            hinv = torch.cholesky_solve(eye, l_factor)
            return torch.linalg.cholesky(hinv, upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ConfigError("the Hessian is not positive definite even after dampening; use more calibration data")


# -- what a layer multiplies its weight matrix with ---------------------------------------------

def layer_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The rows a layer's weight matrix multiplies: (positions, in*kh*kw) im2col patches of a
    plain Conv2d's input (zero padding included, as the conv sees it), or a Linear's inputs (..., in).

    >>> layer_rows(nn.Conv2d(3, 8, 3, padding=1), torch.randn(2, 3, 5, 5)).shape   # 2 * 25 positions
    torch.Size([50, 27])
    """
    if type(module) is not nn.Conv2d:
        return x
    if isinstance(module.padding, str):  # "same" / "valid": the explicit padding F.conv2d would use
        x = F.pad(x, _explicit_padding(module))
        pad = (0, 0)
    else:
        pad = module.padding
    cols = F.unfold(x, module.kernel_size, module.dilation, pad, module.stride)   # (N, C*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """F.pad amounts (left, right, top, bottom) equal to the conv's "same" / "valid" padding."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    out = []
    for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
        total = d * (k - 1)
        out += [total // 2, total - total // 2]
    return tuple(out)


# -- the stage driver ---------------------------------------------------------------------------

def _run(model: nn.Module, task: Task, batch: Batch) -> None:
    try:
        with torch.no_grad():
            task.forward(model, batch)
    except _Stop:
        pass


def linear_stages(model: nn.Module, task: Task, batch: Batch, names: list[str]
                  ) -> tuple[list[list[str]], set[str]]:
    """Target layers grouped by shared input, in execution order, and those called twice or more.

    Consecutive first calls share a stage when their inputs are the same tensor data (address and
    shape) *and* the earlier input is still alive: a freed tensor's address is often reused at once
    by a new one of the same shape (a Llama's `o_proj` input, then the norm output `gate_proj` and
    `up_proj` read), which is not a shared input. Layers the forward never reaches are left out
    (callers fall back to a data-free method).
    """
    counts: dict[str, int] = {}
    stages: list[list[str]] = []
    last: list = [None]        # (key, weak reference to the input) of the last first call
    hooks = []
    for name in names:
        def hook(_m, args, name=name):
            x = args[0]
            counts[name] = counts.get(name, 0) + 1
            if counts[name] > 1:
                return
            key = (x.data_ptr(), tuple(x.shape))
            prev = last[0]
            if stages and prev is not None and prev[0] == key and prev[1]() is not None:
                stages[-1].append(name)
            else:
                stages.append([name])
            last[0] = (key, weakref.ref(x))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        _run(model, task, batch)
    finally:
        for h in hooks:
            h.remove()
    return stages, {n for n, c in counts.items() if c > 1}


def accumulate(model: nn.Module, stage: list[str], passes: Iterable[Callable[[], None]],
               stop_early: bool, hessian: bool = True) -> dict[str, dict]:
    """Input accumulators of the layers in `stage` over `passes` (each runs one batch), reduced
    over ranks; a layer no rank reached is left out."""
    acc: dict[str, dict | None] = dict.fromkeys(stage)
    pending: set[str] = set()
    hooks = []
    for name in stage:
        def hook(module, args, name=name):
            x = layer_rows(module, args[0])    # a conv's im2col patches, a Linear's inputs
            if acc[name] is None:
                acc[name] = hessian_init(x.shape[-1], device=x.device, hessian=hessian)
            hessian_update(acc[name], x)
            pending.discard(name)
            if stop_early and not pending:
                raise _Stop

        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        for run in passes:
            pending = set(stage)
            run()
    finally:
        for h in hooks:
            h.remove()
    for name in stage:  # the same order on every rank; a layer this rank never reached adds zeros
        if acc[name] is not None or is_distributed():
            weight = model.get_submodule(name).weight
            empty = hessian_init(weight[0].numel(), device=weight.device, hessian=hessian)
            acc[name] = hessian_all_reduce(acc[name] or empty)
    return {k: v for k, v in acc.items() if v is not None and v["n"]}


def collect_hessians(model: nn.Module, task: Task, batches: list[Batch], stage: list[str],
                     stop_early: bool = True, hessian: bool = True) -> dict[str, dict]:
    """Input accumulators of the layers in `stage`, from the inputs they see on `batches`
    (reduced over the ranks of an initialised process group)."""
    return accumulate(model, stage, [lambda b=b: _run(model, task, b) for b in batches], stop_early, hessian)


def _block_of(stage: list[str], blocks: list[str]) -> int | None:
    """Index of the block holding every layer of `stage`; None if not all in one block."""
    found = {next((i for i, b in enumerate(blocks) if n.startswith(b + ".")), None) for n in stage}
    return found.pop() if len(found) == 1 else None


def plan_blocks(stages: list[list[str]], blocks: list[str]) -> tuple[list, dict[int, list], list] | None:
    """(stages before the blocks, stages of each block, stages after) when the stages run block
    by block in order; None when they interleave otherwise."""
    where = [_block_of(s, blocks) for s in stages]
    inside = [i for i, w in enumerate(where) if w is not None]
    if not inside:
        return None
    first, last = inside[0], inside[-1]
    order = [where[i] for i in range(first, last + 1)]
    if None in order or order != sorted(order):
        return None
    per_block: dict[int, list] = {}
    for i in range(first, last + 1):
        per_block.setdefault(where[i], []).append(stages[i])
    return stages[:first], per_block, stages[last + 1:]


def hessian_stages(model: nn.Module, task: Task, batches: list[Batch], names: list[str],
                   blockwise: bool = True, hessian: bool = True, together: bool = False
                   ) -> Iterator[tuple[list[str], dict[str, dict]]]:
    """(stage, input accumulators) for the target layers `names`, in execution order. The caller
    must replace or edit the stage's layers before taking the next stage. `hessian=False` leaves
    out the cols x cols sums (a method that needs per-channel statistics only). With `together`,
    the stages inside one block are calibrated by one pass over its cached inputs, before any of
    them is changed (as the AWQ, Wanda and SparseGPT reference implementations do; each block
    still sees the blocks before it changed): one block pass instead of one per stage.

    Layers the forward never reaches are in no stage (callers fall back to a data-free method).
    With `blockwise` and a model whose repeated blocks form a chain, stages inside the blocks are
    calibrated on cached block inputs; the result equals the full-forward driver's.

    >>> for stage, hessians in hessian_stages(model, task, batches, ["l0.q", "l0.k", "l0.out"]):
    ...     for name in stage: quantize(name, hessian_value(hessians[name]))
    """
    stages, reused = linear_stages(model, task, batches[0], names)
    mine = shard(batches)

    def full(stage: list[str]) -> dict[str, dict]:
        return collect_hessians(model, task, mine, stage, not reused & set(stage), hessian)

    blocks = find_blocks(model) if blockwise else []
    plan = plan_blocks(stages, blocks) if blocks else None
    if plan is None:
        for stage in stages:
            yield stage, full(stage)
        return
    before, per_block, after = plan
    for stage in before:
        yield stage, full(stage)
    chain = BlockChain.trace(model, task, mine, blocks)
    if chain is None:  # not a plain chain: the full forward for every stage
        for stage in [s for i in sorted(per_block) for s in per_block[i]] + after:
            yield stage, full(stage)
        return
    for index, (_name, block) in enumerate(chain.blocks()):
        if together:
            layers = [n for stage in per_block.get(index, []) for n in stage]
            stats = accumulate(model, layers, chain.passes(block), not reused & set(layers), hessian) if layers else {}
            for stage in per_block.get(index, []):
                yield stage, {n: stats[n] for n in stage if n in stats}
        for stage in per_block.get(index, []) if not together else []:
            yield stage, accumulate(model, stage, chain.passes(block), not reused & set(stage), hessian)
        if index < max(per_block):
            chain.advance(block)
        else:
            break  # the blocks after the last target block need not run
    del chain
    for stage in after:
        yield stage, full(stage)
