"""Layer-sequential processing: run a transformer's repeated blocks one at a time on cached inputs.

A data-dependent method (GPTQ, activation-aware low-rank) needs each layer's calibration inputs.
Instead of re-running the model from its start for every layer, the inputs of block 0 are caught
once (a hook stops the forward there); each block then runs on the cached inputs of the batches,
gets compressed, and its outputs become the next block's inputs. Peak memory is one block's work
plus the cached activations, and the prefix of the model is never run twice.

The blocks are the children of the model's largest `nn.ModuleList` of same-type modules that hold
Linears (`encoder.layer` of a BERT, `model.layers` of a Llama). A probe forward checks that they
form a plain chain (each block called once, in order, on the previous block's output, with the
same other arguments); otherwise `BlockChain.trace` returns None and callers use the full forward.

>>> chain = BlockChain.trace(model, task, batches)
>>> for name, block in chain.blocks():
...     for run in chain.passes(block): run()   # hooks on `block` see its calibration inputs
...     chain.advance(block)                  # its outputs become the next block's inputs
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from slimkit.core.task import Batch, Task

CACHE_KWARGS = ("cache", "past_key_values", "past_key_value", "layer_past")


class StopForward(Exception):
    """Raised by a hook to end a calibration forward pass early."""


def find_blocks(model: nn.Module) -> list[str]:
    """Names of the repeated blocks: children of the `nn.ModuleList` with the most Linears among
    those whose children (at least two) all have one type and each hold a Linear; [] if none.

    >>> find_blocks(bert)                      # doctest: +SKIP
    ['encoder.layer.0', 'encoder.layer.1', ...]
    """
    best: list[str] = []
    best_linears = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        children = list(module)
        if len({type(c) for c in children}) != 1:
            continue
        linears = [sum(isinstance(m, nn.Linear) for m in c.modules()) for c in children]
        if min(linears) == 0 or sum(linears) <= best_linears:
            continue
        best, best_linears = [f"{name}.{i}" if name else str(i) for i in range(len(children))], sum(linears)
    return best


def _hidden(output: object) -> torch.Tensor:
    """The hidden states a block returns (a tensor, or the first item of a tuple)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"block returned {type(output).__name__}, not hidden states")
    return output


@dataclass
class _Call:
    """One batch's call of a block: positional and keyword arguments, hidden states first."""

    args: tuple
    kwargs: dict

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> _Call:
        if self.args:
            return _Call((hidden, *self.args[1:]), self.kwargs)
        return _Call((), {**self.kwargs, "hidden_states": hidden})


def _clean(kwargs: dict) -> dict:
    """Keyword arguments safe to replay: no KV cache object that every call would append to."""
    out = dict(kwargs)
    for key in CACHE_KWARGS:
        if out.get(key) is not None:
            out[key] = None
    if "use_cache" in out:
        out["use_cache"] = False
    return out


def _is_cache(value: object) -> bool:
    """A key/value cache object (transformers' `Cache` family), by its methods."""
    return hasattr(value, "get_seq_length") and hasattr(value, "update")


def _clean_args(args: tuple) -> tuple:
    """Positional arguments safe to replay: a KV cache passed positionally (GPT-2 blocks) -> None."""
    return tuple(None if i and _is_cache(a) else a for i, a in enumerate(args))


def _same_extras(a: _Call, b: _Call) -> bool:
    """True when two calls differ only by their hidden states (same masks and other arguments)."""
    if len(a.args) != len(b.args) or a.kwargs.keys() != b.kwargs.keys():
        return False
    pairs = list(zip(a.args[1:], b.args[1:], strict=True)) + [(a.kwargs[k], b.kwargs[k]) for k in a.kwargs
                                                  if k != "hidden_states"]
    for x, y in pairs:
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape
                    and torch.equal(x, y)):
                return False
        elif x is not y:
            try:
                if bool(x != y):
                    return False
            except (RuntimeError, TypeError, ValueError):  # e.g. tuples of tensors: not provably equal
                return False
    return True


@dataclass
class BlockChain:
    """The blocks of `model` and the cached inputs (one call per calibration batch) of the block
    to process next. Build it with `trace`."""

    model: nn.Module
    names: list[str]
    calls: list[_Call] = field(default_factory=list)
    position: int = 0

    @classmethod
    @torch.no_grad()
    def trace(cls, model: nn.Module, task: Task, batches: list[Batch],
              blocks: list[str] | None = None, probe: Batch | None = None) -> BlockChain | None:
        """Check on `probe` (default `batches[0]`) that the blocks form a chain, then cache block
        0's inputs of every batch (each forward stops there). None when the model has no usable
        chain. Layers before the first block must be final before this is called."""
        names = find_blocks(model) if blocks is None else blocks
        if len(names) < 2 or not batches:
            return None
        chain = cls(model, names)
        if not chain._is_chain(task, batches[0] if probe is None else probe):
            return None
        chain.calls = [chain._capture(task, b) for b in batches]
        return chain

    def _is_chain(self, task: Task, batch: Batch) -> bool:
        seen: list[tuple[int, _Call, torch.Tensor | None]] = []
        hooks = []
        for i, name in enumerate(self.names):
            block = self.model.get_submodule(name)

            def pre(_m, args, kwargs, i=i):
                seen.append((i, _Call(tuple(args), dict(kwargs)), None))

            def post(_m, _args, _kwargs, output, i=i):
                j, call, _ = seen[-1]
                seen[-1] = (j, call, _hidden(output) if j == i else None)

            hooks.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            hooks.append(block.register_forward_hook(post, with_kwargs=True))
        try:
            task.forward(self.model, batch)
        except (TypeError, KeyError):
            return False
        finally:
            for h in hooks:
                h.remove()
        if [i for i, _, _ in seen] != list(range(len(self.names))):
            return False
        for (_, prev, out), (_, call, _) in zip(seen, seen[1:], strict=False):
            if out is None or call.hidden is not out or not _same_extras(prev, call):
                return False
        return True

    def _capture(self, task: Task, batch: Batch) -> _Call:
        caught: list[_Call] = []

        def pre(_m, args, kwargs):
            caught.append(_Call(_clean_args(tuple(args)), _clean(kwargs)))
            raise StopForward

        hook = self.model.get_submodule(self.names[0]).register_forward_pre_hook(pre, with_kwargs=True)
        try:
            task.forward(self.model, batch)
        except StopForward:
            pass
        finally:
            hook.remove()
        return caught[0]

    def blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """(name, module) of each block in order; call `advance` before taking the next one."""
        while self.position < len(self.names):
            index = self.position
            yield self.names[index], self.model.get_submodule(self.names[index])
            if self.position == index:
                raise RuntimeError("BlockChain.advance(block) was not called before the next block")

    def passes(self, block: nn.Module) -> list[Callable[[], None]]:
        """One thunk per cached call that runs `block` on it (hooks on the block see the calibration
        inputs); a hook may raise `StopForward` to end that call early."""
        def one(call: _Call) -> None:
            try:
                with torch.no_grad():
                    block(*call.args, **call.kwargs)
            except StopForward:
                pass

        return [lambda c=c: one(c) for c in self.calls]

    @torch.no_grad()
    def advance(self, block: nn.Module) -> None:
        """Replace the cached inputs by `block`'s outputs and move to the next block."""
        self.calls = [c.with_hidden(_hidden(block(*c.args, **c.kwargs))) for c in self.calls]
        self.position += 1
