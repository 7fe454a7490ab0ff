"""APoZ (Network Trimming, Hu et al. 2016) block by block from disk (`slimkit.stream.layerwise`): a
one-shot trim of the FFN neurons of transformer blocks whose FFN activation is a ReLU (`FFN_LAYOUTS`:
BERT's `intermediate.dense -> output.dense`, e.g. with hidden_act "relu"; OPT's `fc1 -> fc2`).

For each block, in order: the zeros of the up projection's output (what the ReLU makes zero) are
counted per neuron over the cached calibration inputs (`slimkit.pruning.importance.zero_fraction`, as
the in-memory `apoz` counts them); the neurons whose APoZ exceeds the FFN's mean + `std` standard
deviations are cut (`slimkit.pruning.structured.mean_std_cut`; at least `min_channels` kept) from the
up projection's rows and the down projection's columns (recorded as `replace` edits, so
`slimkit.load` rebuilds the smaller layers); the *trimmed* block then makes the next block's
inputs, so each block is measured on what it will really see.

One round, no retraining: Network Trimming's trim-retrain rounds need the whole model's forward and
backward, which a block-by-block pass does not have (a recipe with rounds > 1 or epochs > 0 is refused).
GELU / SiLU models have no exact zeros after their activation: they are refused in one line.

>>> worker = ApozWorker(model, task, APoZPruningConfig(rounds=1, epochs=0, std=1.0))
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.select import matches
from slimkit.core.streaming import inside, step
from slimkit.dist.collectives import reduce_keyed, shard
from slimkit.pruning.importance import channels_first, zero_fraction
from slimkit.pruning.structured import mean_std_cut
from slimkit.surgery.edits import replace_module
from slimkit.surgery.shrink import shrink_linear


def check_one_shot(cfg) -> None:
    """A one-line SlimError unless the APoZ config is one round without retraining."""
    if cfg.rounds != 1 or cfg.epochs:
        raise SlimError(f"apoz block by block is one-shot: set rounds: 1 and epochs: 0 (got rounds {cfg.rounds}, "
                        f"epochs {cfg.epochs}); trimming rounds with retraining need the whole model in memory")


# (up projection, down projection, activation between them) of the FFNs this trims, in a block:
FFN_LAYOUTS = (("intermediate.dense", "output.dense", "intermediate.intermediate_act_fn"),   # BERT and relatives
               ("fc1", "fc2", "activation_fn"))                                                # OPT, CLIP-style MLPs


def _is_relu(module: object) -> bool:
    return isinstance(module, nn.ReLU) or module is torch.relu or module is nn.functional.relu


def _attr(module: nn.Module, path: str) -> object:
    for part in path.split("."):
        module = getattr(module, part, None)
    return module


def _layout(module: nn.Module) -> tuple[str, str, str] | None:
    for up, down, act in FFN_LAYOUTS:
        a, b = _attr(module, up), _attr(module, down)
        if type(a) is nn.Linear and type(b) is nn.Linear and a.out_features == b.in_features \
                and _attr(module, act) is not None:
            return up, down, act
    return None


def ffn_blocks(model: nn.Module, cfg) -> dict[str, tuple[str, str, str]]:
    """{module: (up, down, activation)} of the FFNs (`FFN_LAYOUTS`) whose up projection the config
    selects (targets / ignore); a one-line SlimError when there is none, or when a selected FFN's
    activation is not a ReLU (GELU / SiLU have no exact zeros)."""

    patterns = [cfg.targets] if isinstance(cfg.targets, str) else list(cfg.targets or [])
    config = getattr(model, "config", None)
    named = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None)
    chosen = {}
    for name, module in model.named_modules():
        layout = _layout(module)
        if layout is None:
            continue
        site = f"{name}.{layout[0]}" if name else layout[0]
        if (patterns and not any(matches(site, p) for p in patterns)) or any(matches(site, p) for p in cfg.ignore):
            continue
        act = _attr(module, layout[2])
        if not _is_relu(act):
            what = f"activation {named!r}" if isinstance(named, str) else type(act).__name__
            raise SlimError(f"APoZ needs a ReLU after {site} ({what} has no exact zeros); "
                            "use weight-norm or structured pruning there")
        chosen[name] = layout
    if not chosen:
        raise SlimError("apoz block by block trims FFN neurons (intermediate.dense -> output.dense as in BERT, "
                        "fc1 -> fc2 as in OPT) with a ReLU; the model has none selected"
                        + (f" (its activation: {named!r})" if isinstance(named, str) else ""))
    return chosen


def keep_by_apoz(scores: torch.Tensor, std: float, min_channels: int) -> torch.Tensor:
    """Sorted indices of the neurons kept: those at or below mean + `std` std of APoZ `scores`,
    or, if fewer than `min_channels` would stay, the `min_channels` lowest (as `trim_` does).

    >>> keep_by_apoz(torch.tensor([0.1, 0.2, 0.1, 0.9]), 1.0, 1)
    tensor([0, 1, 2])
    """

    cut = mean_std_cut(std)(scores)
    floor = max(min_channels, 1)
    if int((~cut).sum()) < floor:
        cut = torch.ones_like(cut)
        cut[scores.argsort()[:floor]] = False
    return torch.nonzero(~cut).flatten()


class ApozWorker:
    """The per-block steps of an `APoZPruning` config (see the module doc), as a
    `slimkit.core.streaming.BlockWorker`. Holds block names, never modules."""

    def __init__(self, model: nn.Module, task, cfg):
        check_one_shot(cfg)
        self.model, self.task, self.cfg = model, task, cfg
        self.layouts = ffn_blocks(model, cfg)   # FFN module -> (up, down, activation) names
        self.targets = list(self.layouts)
        self.batches = shard(list(task.calibration(cfg.samples)))
        if not self.batches:
            raise SlimError("apoz: the calibration data is empty")
        self.counts: Counter[str] = Counter()   # Linears (intermediate + output) per outcome
        self.info = {"apoz_ffn_neurons": {"before": 0, "after": 0}}   # for the manifest's info
        self.apoz_: dict[str, torch.Tensor] = {}   # block -> APoZ per original neuron

    def plan(self, blocks: list[str], probe) -> dict[int, list]:
        return {i: [n for n in self.targets if inside(n, [b])] for i, b in enumerate(blocks)
                if any(inside(n, [b]) for n in self.targets)}

    def outside(self, blocks: list[str]) -> None:
        """Nothing outside the blocks is trimmed."""

    def block(self, name: str, block: nn.Module, chain, names: list[str], advance: bool) -> None:
        for ffn in names:
            scores = self._apoz(ffn, block, chain)
            keep = keep_by_apoz(scores, self.cfg.std, self.cfg.min_channels)
            self.apoz_[ffn] = scores
            if len(keep) < len(scores):
                self._cut(ffn, keep)
                self.counts[f"apoz-trimmed (FFN neurons above APoZ mean + {self.cfg.std:g} std)"] += 2
            else:
                self.counts["apoz: unchanged (no FFN neuron above the cut)"] += 2
            self.info["apoz_ffn_neurons"]["before"] += len(scores)
            self.info["apoz_ffn_neurons"]["after"] += len(keep)
        step(chain, block, advance)   # the pruned block makes the next block's inputs

    def _cut(self, ffn: str, keep: torch.Tensor) -> None:
        """Keep neurons `keep`: rows of the up projection, columns of the down projection (as
        `slimkit.pruning.transformer.prune_ffn_` cuts a BERT block's FFN, without refit), recorded edits."""

        up, down, _ = self.layouts[ffn]
        module = self.model.get_submodule(ffn)
        replace_module(self.model, f"{ffn}.{up}", shrink_linear(module.get_submodule(up), keep))
        replace_module(self.model, f"{ffn}.{down}", shrink_linear(module.get_submodule(down), None, keep))

    def _apoz(self, ffn: str, block: nn.Module, chain) -> torch.Tensor:
        """APoZ of each neuron of FFN `ffn` (inside `block`) over the cached inputs (summed over ranks)."""

        zeros: dict[str, torch.Tensor] = {}
        counts = {ffn: 0}

        def hook(module, _inputs, output):
            z, n = zero_fraction(channels_first(module, output))
            zeros[ffn] = zeros.get(ffn, 0) + z
            counts[ffn] += n

        handle = self.model.get_submodule(f"{ffn}.{self.layouts[ffn][0]}").register_forward_hook(hook)
        try:
            for run in chain.passes(block):
                run()
        finally:
            handle.remove()
        reduce_keyed([ffn], zeros, counts)
        if ffn not in zeros:
            raise SlimError(f"apoz: calibration never reached {ffn}.{self.layouts[ffn][0]}")
        return zeros[ffn].double() / max(1, counts[ffn])
