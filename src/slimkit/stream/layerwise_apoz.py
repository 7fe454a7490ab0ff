"""APoZ (Network Trimming, Hu et al. 2016) block by block from disk: a one-shot trim of the FFN
intermediate neurons of BERT-style blocks whose activation is a ReLU.

For each block, in order: the zeros of `intermediate.dense`'s output (what the ReLU makes zero)
are counted per neuron over the cached calibration inputs (`slimkit.prune.importance.zero_fraction`,
as the in-memory `apoz` counts them); the neurons whose APoZ exceeds the block's mean + `std`
standard deviations are cut (`slimkit.prune.structured.mean_std_cut`; at least `min_channels`
kept) from `intermediate.dense`'s rows and `output.dense`'s columns (`slimkit.prune.transformer.prune_ffn_`,
recorded as `replace` edits, so `slimkit.load` rebuilds the smaller layers); the *pruned* block
then makes the next block's inputs, so each block is measured on what it will really see.

One round, no retraining: Network Trimming's trim-retrain rounds need the whole model's forward and
backward, which a block-by-block pass does not have (a recipe with rounds > 1 or epochs > 0 is refused).
GELU / SiLU models have no exact zeros after their activation: they are refused in one line.

>>> worker = ApozWorker(model, task, APoZPruning(rounds=1, epochs=0, std=1.0))
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from slimkit.errors import SlimError


def check_one_shot(cfg) -> None:
    """A one-line SlimError unless the APoZ config is one round without retraining."""
    if cfg.rounds != 1 or cfg.epochs:
        raise SlimError(f"apoz block by block is one-shot: set rounds: 1 and epochs: 0 (got rounds {cfg.rounds}, "
                        f"epochs {cfg.epochs}); trimming rounds with retraining need the whole model in memory")


def _is_relu(module: nn.Module) -> bool:
    return isinstance(module, nn.ReLU) or module is torch.relu or module is nn.functional.relu


def ffn_blocks(model: nn.Module, cfg) -> list[str]:
    """Names of the BERT-style blocks (`slimkit.prune.transformer.find_blocks`) whose
    `intermediate.dense` the config selects (targets / ignore); a one-line SlimError when there is
    none, or when a selected block's FFN activation is not a ReLU."""
    from slimkit.prune.transformer import find_blocks
    from slimkit.select import matches

    patterns = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    chosen = []
    for name in find_blocks(model):
        site = f"{name}.intermediate.dense"
        if (patterns and not any(matches(site, p) for p in patterns)) or any(matches(site, p) for p in cfg.ignore):
            continue
        act = getattr(model.get_submodule(f"{name}.intermediate"), "intermediate_act_fn", None)
        if not _is_relu(act):
            hidden = getattr(getattr(model, "config", None), "hidden_act", None)
            what = f"hidden_act {hidden!r}" if isinstance(hidden, str) else type(act).__name__
            raise SlimError(f"APoZ needs a ReLU after {site} ({what} has no exact zeros); "
                            "use weight-norm or structured pruning there")
        chosen.append(name)
    if not chosen:
        raise SlimError("apoz block by block trims the FFN neurons of BERT-style blocks (intermediate.dense -> "
                        "output.dense); the model has none selected")
    return chosen


def keep_by_apoz(scores: torch.Tensor, std: float, min_channels: int) -> torch.Tensor:
    """Sorted indices of the neurons kept: those at or below mean + `std` std of APoZ `scores`,
    or, if fewer than `min_channels` would stay, the `min_channels` lowest (as `trim_` does).

    >>> keep_by_apoz(torch.tensor([0.1, 0.2, 0.1, 0.9]), 1.0, 1)
    tensor([0, 1, 2])
    """
    from slimkit.prune.structured import mean_std_cut

    cut = mean_std_cut(std)(scores)
    floor = max(min_channels, 1)
    if int((~cut).sum()) < floor:
        cut = torch.ones_like(cut)
        cut[scores.argsort()[:floor]] = False
    return torch.nonzero(~cut).flatten()


class ApozWorker:
    """The per-block steps of `slimkit.stream.layerwise` for an `APoZPruning` config (see the module
    doc). Holds block names, never modules."""

    def __init__(self, model: nn.Module, task, cfg):
        from slimkit.dist.collectives import shard

        check_one_shot(cfg)
        self.model, self.task, self.cfg = model, task, cfg
        self.targets = ffn_blocks(model, cfg)
        self.batches = shard(list(task.calibration(cfg.samples)))
        if not self.batches:
            raise SlimError("apoz: the calibration data is empty")
        self.counts: Counter[str] = Counter()   # Linears (intermediate + output) per outcome
        self.info = {"apoz_ffn_neurons": {"before": 0, "after": 0}}   # for the manifest's info
        self.apoz_: dict[str, torch.Tensor] = {}   # block -> APoZ per original neuron

    def plan(self, blocks: list[str], probe) -> dict[int, list]:
        from slimkit.stream.layerwise_methods import _inside

        return {i: [n for n in self.targets if _inside(n, [b])] for i, b in enumerate(blocks)
                if any(_inside(n, [b]) for n in self.targets)}

    def outside(self, blocks: list[str]) -> None:
        """Nothing outside the blocks is trimmed."""

    def block(self, name: str, block: nn.Module, chain, names: list[str], advance: bool) -> None:
        from slimkit.prune.transformer import prune_ffn_
        from slimkit.stream.layerwise_methods import _step

        for ffn in names:
            scores = self._apoz(ffn, chain)
            keep = keep_by_apoz(scores, self.cfg.std, self.cfg.min_channels)
            self.apoz_[ffn] = scores
            if len(keep) < len(scores):
                prune_ffn_(self.model, ffn, keep)
                self.counts[f"apoz-trimmed (FFN neurons above APoZ mean + {self.cfg.std:g} std)"] += 2
            else:
                self.counts["apoz: unchanged (no FFN neuron above the cut)"] += 2
            self.info["apoz_ffn_neurons"]["before"] += len(scores)
            self.info["apoz_ffn_neurons"]["after"] += len(keep)
        _step(chain, block, advance)   # the pruned block makes the next block's inputs

    def _apoz(self, ffn: str, chain) -> torch.Tensor:
        """APoZ of each neuron of `ffn`'s intermediate layer over the cached inputs (summed over ranks)."""
        from slimkit.dist.collectives import reduce_keyed
        from slimkit.prune.importance import channels_first, zero_fraction

        zeros: dict[str, torch.Tensor] = {}
        counts = {ffn: 0}

        def hook(module, _inputs, output):
            z, n = zero_fraction(channels_first(module, output))
            zeros[ffn] = zeros.get(ffn, 0) + z
            counts[ffn] += n

        block = self.model.get_submodule(ffn)
        handle = block.intermediate.dense.register_forward_hook(hook)
        try:
            for run in chain.passes(block):
                run()
        finally:
            handle.remove()
        reduce_keyed([ffn], zeros, counts)
        if ffn not in zeros:
            raise SlimError(f"apoz: calibration never reached {ffn}.intermediate.dense")
        return zeros[ffn].double() / max(1, counts[ffn])
