"""Structured pruning inside transformer blocks (BERT-style, e.g. MiniLM): attention heads and
FFN intermediate neurons, removed physically.

A block is found by shape, not by class name: a module with `attention.self.{query,key,value}`,
`attention.output.dense`, `intermediate.dense` and `output.dense` Linear layers (Hugging Face
BertLayer and its relatives). Importance is measured on calibration data: an FFN neuron's mean
|activation| times the norm of its output column; a head's mean |context| times the norm of its
slice of the output projection (the size of what each unit adds to the residual stream).

>>> blocks = find_blocks(model)               # {"encoder.layer.0": BertLayer, ...}
>>> prune_ffn_(model, "encoder.layer.0", keep)  # keep: indices of intermediate neurons
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import matches
from slimkit.surgery.edits import replace_module, set_attr
from slimkit.surgery.shrink import guarded, shrink_linear

_PATHS = ("attention.self.query", "attention.self.key", "attention.self.value",
          "attention.output.dense", "intermediate.dense", "output.dense")


def find_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Transformer blocks whose heads and FFN neurons can be pruned, by dotted name."""
    out = {}
    for name, module in model.named_modules():
        try:
            parts = [module.get_submodule(p) for p in _PATHS]
        except AttributeError:
            continue
        if all(type(p) is nn.Linear for p in parts):
            out[name] = module
    return out


def _heads(block: nn.Module) -> tuple[int, int]:
    attn = block.attention.self
    size = attn.attention_head_size
    return attn.query.out_features // size, size


@torch.no_grad()
def unit_importance(model: nn.Module, blocks: dict[str, nn.Module], batches: Iterable,
                    forward, inputs: dict | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """{block: {"ffn": score per intermediate neuron, "heads": score per head}} over `batches`.

    When `inputs` is a dict, it receives the inputs of each block's two output projections
    ({(block, "ffn"|"heads"): (tokens, features)}), for `refit_`.
    """
    sums: dict[tuple[str, str], torch.Tensor] = {}
    counts: dict[tuple[str, str], int] = {}
    handles = []

    def pre_hook(key):
        def fn(_module, args):
            rows = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sums[key] = sums.get(key, 0) + rows.abs().sum(0)
            counts[key] = counts.get(key, 0) + rows.shape[0]
            if inputs is not None:
                inputs.setdefault(key, []).append(rows)
        return fn

    for name, block in blocks.items():
        handles.append(block.output.dense.register_forward_pre_hook(pre_hook((name, "ffn"))))
        handles.append(block.attention.output.dense.register_forward_pre_hook(pre_hook((name, "heads"))))
    was = model.training
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if inputs is not None:
        for key in list(inputs):
            inputs[key] = torch.cat(inputs[key])
    scores = {}
    for name, block in blocks.items():
        ffn = sums[(name, "ffn")] / counts[(name, "ffn")] * block.output.dense.weight.norm(dim=0)
        ctx = sums[(name, "heads")] / counts[(name, "heads")]
        col = block.attention.output.dense.weight.norm(dim=0)
        n_heads, size = _heads(block)
        heads = (ctx * col).reshape(n_heads, size).sum(1)
        scores[name] = {"ffn": ffn, "heads": heads}
    return scores


def keep_top(scores: torch.Tensor, remove: float, minimum: int = 1) -> torch.Tensor:
    """Sorted indices of the units to keep after removing a fraction `remove` of the lowest."""
    n = scores.numel()
    keep = max(minimum, n - int(remove * n))
    return scores.argsort(descending=True)[:keep].sort().values


@torch.no_grad()
def refit_(linear: nn.Linear, x: torch.Tensor, keep: torch.Tensor, ridge: float = 1e-3) -> nn.Linear:
    """A Linear on input columns `keep` whose outputs best match `linear` on inputs `x` (least
    squares with a small ridge, bias included): the removed units' average effect is absorbed."""
    w = linear.weight.detach().double()
    xd = x.double()
    target = xd @ w.T
    xk = torch.cat([xd[:, keep], torch.ones(len(xd), 1, dtype=torch.float64)], 1)
    gram = xk.T @ xk
    gram += ridge * gram.diagonal().mean() * torch.eye(len(gram), dtype=torch.float64)
    sol = torch.linalg.solve(gram, xk.T @ target)           # (k + 1, out)
    new = shrink_linear(linear, None, keep)
    new.weight.copy_(sol[:-1].T.to(new.weight.dtype))
    if new.bias is not None:
        new.bias.add_(sol[-1].to(new.bias.dtype))
    return new


def prune_ffn_(model: nn.Module, block_name: str, keep: torch.Tensor, x: torch.Tensor | None = None) -> None:
    """Keep intermediate neurons `keep`: rows of `intermediate.dense`, columns of `output.dense`
    (refitted on `x`, the inputs `output.dense` saw, when given)."""
    block = model.get_submodule(block_name)
    out = block.output.dense
    replace_module(model, f"{block_name}.intermediate.dense", shrink_linear(block.intermediate.dense, keep))
    replace_module(model, f"{block_name}.output.dense",
                   shrink_linear(out, None, keep) if x is None else refit_(out, x, keep))


def prune_heads_(model: nn.Module, block_name: str, keep_heads: torch.Tensor,
                 x: torch.Tensor | None = None) -> None:
    """Keep attention heads `keep_heads`: their q/k/v rows and output-projection columns
    (refitted on `x`, the context vectors the projection saw, when given)."""
    block = model.get_submodule(block_name)
    n_heads, size = _heads(block)
    rows = (keep_heads[:, None] * size + torch.arange(size)).reshape(-1)
    attn = f"{block_name}.attention.self"
    for proj in ("query", "key", "value"):
        replace_module(model, f"{attn}.{proj}", shrink_linear(getattr(block.attention.self, proj), rows))
    proj = block.attention.output.dense
    replace_module(model, f"{block_name}.attention.output.dense",
                   shrink_linear(proj, None, rows) if x is None else refit_(proj, x, rows))
    set_attr(model, attn, "num_attention_heads", len(keep_heads))
    set_attr(model, attn, "all_head_size", len(keep_heads) * size)


def apply_heads_ffn_(model: nn.Module, task, filter_fn, cfg) -> dict:
    """Score, cut and check every selected block (`cfg`: ratio of FFN neurons, head_ratio,
    samples, refit, targets, ignore). If the pruned model cannot run, the original is kept and
    the problem raised."""

    blocks = find_blocks(model)
    patterns = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    blocks = {n: b for n, b in blocks.items()
              if (not patterns or any(matches(n, p) for p in patterns))
              and not any(matches(n, p) for p in cfg.ignore)
              and (filter_fn is None or filter_fn(b, n))}
    if not blocks:
        raise SlimError(f"no transformer block (attention.self.query ... output.dense) in "
                        f"{type(model).__name__} matches the selection")
    seen: dict | None = {} if cfg.refit else None
    scores = unit_importance(model, blocks, task.calibration(cfg.samples), task.forward, seen)
    touched = [f"{b}.{p}" for b in blocks for p in _PATHS]
    saved = {b: (blk.attention.self.num_attention_heads, blk.attention.self.all_head_size)
             for b, blk in blocks.items()}
    x = task.example_inputs(2)
    report = {}
    try:
        with guarded(model, touched, check=lambda m: task.forward(m, x)):
            for name, block in blocks.items():
                keep_ffn = keep_top(scores[name]["ffn"], cfg.ratio)
                keep_heads = keep_top(scores[name]["heads"], cfg.head_ratio)
                if len(keep_ffn) < block.intermediate.dense.out_features:
                    prune_ffn_(model, name, keep_ffn, seen and seen[(name, "ffn")])
                if len(keep_heads) < len(scores[name]["heads"]):
                    prune_heads_(model, name, keep_heads, seen and seen[(name, "heads")])
                report[name] = {"ffn": len(keep_ffn), "heads": len(keep_heads)}
    except SlimError:
        for name, (heads, size) in saved.items():
            attn = model.get_submodule(name).attention.self
            attn.num_attention_heads, attn.all_head_size = heads, size
        raise
    return report
