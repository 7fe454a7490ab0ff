"""The search space of transformer encoders (MiniLM, BERT / GPT-2 / Llama folders), scored by
fidelity to the original.

Choices, in the order they compose: a structural change — structured pruning of FFN neurons and
attention heads with refit (BERT-like blocks), optionally followed by recovery distillation from the
original; or dropping whole transformer layers with a short distillation — then int8,
round-to-nearest or GPTQ weight quantization (bits, group size, embedding bits).

Cuts move in steps that keep every group size dividing every Linear's input, so that a pruned
model can still be quantized group-wise. The training stages (recovery, layer dropping) are offered
only while the time left covers about three of their epochs (estimated from how long one held-out
scoring took), and each gets a time limit of a third of the time left.

>>> space = EmbeddingSpace(minilm, calib_sentences=1477, score_s=6.0)
>>> space.suggest(study.ask())   # e.g. [StructuredPruning(ratio=0.25, head_ratio=0.21), GPTQConfig(bits=4)]
"""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

from slimkit.autosearch.space import Space
from slimkit.core.methods import MethodConfig, make_config
from slimkit.distillation.students import keep_layers
from slimkit.pruning.transformer import find_blocks

GROUPS = (32, 64, 128)
TRAIN_EPOCH_FACTOR = 4.0     # one training epoch ~ this x (one held-out scoring) x sentences / 256
TRAIN_LR = 1e-4              # pretrained transformers: a small learning rate (the recovery runs used it)


class EmbeddingSpace(Space):
    """Structured pruning (FFN neurons, heads) + recovery, or layer dropping, then quantization."""

    name = "embedding"

    def __init__(self, model: nn.Module, calib_sentences: int = 0, score_s: float | None = None):
        blocks = find_blocks(model)
        first = next(iter(blocks.values()), None)
        dims = {m.in_features for m in model.modules() if isinstance(m, nn.Linear)}
        self.ffn = first.intermediate.dense.out_features if first is not None else 0
        self.heads = int(first.attention.self.num_attention_heads) if first is not None else 0
        head_size = int(first.attention.self.attention_head_size) if first is not None else 1
        # group sizes that divide every input, and still do after cutting heads two at a time
        self.groups = [g for g in GROUPS if all(d % g == 0 for d in dims)
                       and (not self.heads or g // math.gcd(g, head_size) <= 2)]
        self.step = max(self.groups) if self.groups and self.ffn % max(self.groups) == 0 else 128
        self.max_cut = int(0.7 * self.ffn) // self.step if self.ffn % self.step == 0 else 0
        self.head_step = 2 if self.heads >= 4 else 0
        self.max_head_cut = (self.heads // 2) // self.head_step if self.head_step else 0
        self.depth = _depth(model)
        self.epoch_s = (TRAIN_EPOCH_FACTOR * score_s * max(1, calib_sentences - 256) / 256
                        if score_s and calib_sentences else math.inf)

    def _cut(self, fraction: float) -> int:
        return max(1, min(self.max_cut, round(fraction * self.ffn / self.step)))

    def can_train(self) -> bool:
        """Enough time left for a training stage (about three epochs of it)?"""
        return self.time_left >= 3 * self.epoch_s

    def seeds(self) -> list[dict]:
        # Spread along the size / fidelity trade-off, from the shipped int8 and int4 recipes down.
        out = [{"structured": False, "quant_only": "int8"}]
        if self.groups:
            g = 64 if 64 in self.groups else max(self.groups)
            gptq = {"quant_only": "gptq", "group_size": g, "embedding_bits": 4}
            out += [{"structured": False, **gptq, "gptq_bits": 4},
                    {"structured": False, "quant_only": "rtn", "rtn_bits": 8, "group_size": max(self.groups),
                     "embedding_bits": 8},
                    {"structured": False, **gptq, "gptq_bits": 3},
                    {"structured": False, **gptq, "gptq_bits": 4, "embedding_bits": 8}]
            if self.max_cut:
                out.append({"structured": True, "ffn_cut": self._cut(0.25), "quant": "gptq", "gptq_bits": 4,
                            "group_size": g, "embedding_bits": 4})
        if self.max_cut:
            out.append({"structured": True, "ffn_cut": self._cut(0.5), "quant": "int8"})
        if not self.max_cut:   # no "structured" choice in this space
            out = [{k: v for k, v in p.items() if k != "structured"} for p in out if not p.get("structured")]
        for p in out:   # the seeds train nothing: the training choices, if offered, are declined
            if p.get("structured"):
                p.update({"head_cut": 0} if self.max_head_cut else {}, recover=False)
            else:
                p["drop_layers"] = False
        return out

    def suggest(self, trial: Any) -> list[MethodConfig]:
        stages: list[MethodConfig] = []
        if self.max_cut and trial.suggest_categorical("structured", [True, False]):
            stages.append(self._structured(trial))
            if self.can_train() and trial.suggest_categorical("recover", [False, True]):
                stages.append(make_config("recover", epochs=trial.suggest_int("recover_epochs", 1, 3),
                                          hidden_weight=1.0, lr=TRAIN_LR, batch_size=32,
                                          time_limit=self._train_limit()))
        elif len(self.depth) > 2 and self.can_train() and trial.suggest_categorical("drop_layers", [False, True]):
            n = len(self.depth)
            k = trial.suggest_int("keep_layers", (n + 1) // 2, n - 1)
            stages.append(make_config("distill", keep=[round((i + 1) * n / k) - 1 for i in range(k)],
                                      epochs=trial.suggest_int("distill_epochs", 1, 3), hidden_weight=1.0,
                                      lr=TRAIN_LR, batch_size=32, time_limit=self._train_limit()))
        quants = ["int8", *(["rtn", "gptq"] if self.groups else [])]
        if stages:
            quant = trial.suggest_categorical("quant", ["none", *quants])
        else:   # nothing compressed yet: a quantization stage is not optional
            quant = trial.suggest_categorical("quant_only", quants)
        if quant == "int8":
            stages.append(make_config("int8"))
        elif quant in ("rtn", "gptq"):
            bits = trial.suggest_int(f"{quant}_bits", 3 if quant == "gptq" else 4, 8)
            options = {"bits": bits, "group_size": trial.suggest_categorical("group_size", self.groups),
                       "embedding_bits": trial.suggest_categorical("embedding_bits", [4, 8]),
                       "embedding_group_size": min(self.groups), "symmetric": False}
            if quant == "gptq":
                options.update(samples=32, act_order=True)
            stages.append(make_config(quant, **options))
        return stages

    def _structured(self, trial: Any) -> MethodConfig:
        cut = trial.suggest_int("ffn_cut", 1, self.max_cut) * self.step
        heads = trial.suggest_int("head_cut", 0, self.max_head_cut) * self.head_step if self.max_head_cut else 0
        # keep_top removes int(ratio * n) units: half a unit more keeps that exact count
        return make_config("structured", ratio=(cut + 0.5) / self.ffn,
                           head_ratio=(heads + 0.5) / self.heads if heads else 0.0, samples=128, refit=True)

    def _train_limit(self) -> float:
        return max(1.0, round(self.time_left / 3, 1))


def _depth(model: nn.Module) -> list[int]:
    """Indices of the transformer layers a `keep_layers` student can choose from ([] if none)."""

    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        return []
    n = max(len(m) for m in lists)
    try:
        keep_layers(copy.deepcopy(model), list(range(n - 1)))
    except Exception:   # no layer list keep_layers can cut: no layer-dropping choice
        return []
    return list(range(n))
