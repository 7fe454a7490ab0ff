"""Search spaces: how a sampler's choices become a recipe (a list of method configs).

A space asks an optuna trial for its choices (define-by-run, so a choice may depend on an earlier
one: no k-means bits are drawn when the trial chose no k-means) and returns the stages in the order
the families compose: a structural change first (distillation into a smaller student, low-rank
factorization or hashing), then pruning, then quantization or weight sharing.

>>> space = DigitsSpace(model, protect_order=["fc3", "fc1", "fc2"])   # or run.space_for(model, task)
>>> stages = space.suggest(study.ask())          # e.g. [MagnitudePruning(...), KMeansConfig(...)]
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

from torch import nn

from slimkit.core.methods import MethodConfig, make_config
from slimkit.distillation.students import shrink_mlp


class Space(ABC):
    """The choices one search explores for one kind of model. The search sets `time_left` (seconds)
    before each candidate; spaces offer expensive choices (training) only when enough is left."""

    name: str = "space"
    time_left: float = float("inf")

    @abstractmethod
    def suggest(self, trial: Any) -> list[MethodConfig]:
        """Draw one candidate recipe from `trial` (an optuna `Trial`)."""

    def seeds(self) -> list[dict]:
        """Known-good parameter sets tried first (from the shipped recipes' measurements)."""
        return []

    def probes(self) -> list[MethodConfig]:
        """Cheap one-layer-at-a-time configs for the per-layer sensitivity table."""
        return []

    def layers(self) -> list[str]:
        """The layers the sensitivity table covers."""
        return []


def _linear_names(model: nn.Module, kinds: tuple[type, ...] = (nn.Linear,)) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kinds) and name]


class DigitsSpace(Space):
    """Small classifiers (LeNet-300-100, LeNet-5): every family, fine-tuned on the training split.

    Choices: structure (dense, distill into a narrower MLP, low-rank with optional distillation
    recovery from the original, HashedNets), magnitude pruning
    (sparsity, epochs, lr), then k-means sharing (bits, bias bits, fine-tuning, and how many of the
    most sensitive layers get 2 more bits) or round-to-nearest weight quantization.
    """

    name = "digits"

    def __init__(self, model: nn.Module, protect_order: list[str] | None = None, effort: float = 1.0):
        self.effort = effort
        self.weighted = _linear_names(model, (nn.Linear, nn.Conv1d, nn.Conv2d))
        self.linears = _linear_names(model)
        self.protect_order = [n for n in (protect_order or []) if n in self.weighted]
        self.hidden = self._mlp_hidden(model)
        self.structures = ["dense", "lowrank"]
        if self.hidden:
            self.structures.append("distill")
        if len(self.linears) == len(self.weighted):
            self.structures.append("hashed")

    @staticmethod
    def _mlp_hidden(model: nn.Module) -> list[int]:
        """Hidden widths if `model` is an MLP a student can be derived from, else []."""
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if len(linears) < 2 or any(isinstance(m, nn.Conv1d | nn.Conv2d) for m in model.modules()):
            return []
        hidden = [m.out_features for m in linears[:-1]]
        try:
            shrink_mlp(copy.deepcopy(model), [max(2, h // 2) for h in hidden])
        except Exception:   # not a plain MLP: no distillation choice
            return []
        return hidden

    def layers(self) -> list[str]:
        return self.weighted

    def probes(self) -> list[MethodConfig]:
        return [make_config("magnitude", sparsity=0.9, epochs=0), make_config("kmeans", bits=3)]

    def epochs(self, n: int) -> int:
        """`n` training epochs scaled by the search's effort (at least 1)."""
        return max(1, round(n * self.effort))

    def seeds(self) -> list[dict]:
        prune = {"structure": "dense", "prune": True, "prune_epochs": 60, "prune_lr": 0.002}  # as prune-magnitude
        kmeans = {"quant": "kmeans", "bits": 4, "bias_bits": 4, "kmeans_epochs": 10, "protect": 0}
        out = [{**prune, "sparsity": 0.95, **kmeans},                       # ~ deep-compression
               {**prune, "sparsity": 0.96, **kmeans, "protect": min(1, max(0, len(self.protect_order) - 1))},
               {**prune, "sparsity": 0.92, **kmeans, "bits": 5, "bias_bits": 5}]
        if self.hidden:
            out.append({"structure": "distill", "student_scale": 0.33, "distill_epochs": 60, "prune": True,
                        "sparsity": 0.8, "prune_epochs": 40, "prune_lr": 0.002, **kmeans})
        return out

    def suggest(self, trial: Any) -> list[MethodConfig]:
        stages: list[MethodConfig] = []
        structure = trial.suggest_categorical("structure", self.structures)
        if structure == "hashed":
            ratio = trial.suggest_float("hashed_ratio", 0.02, 0.25, log=True)
            return [make_config("hashed", ratio=round(ratio, 4), finetune_epochs=self.epochs(30))]
        if structure == "distill":
            scale = trial.suggest_float("student_scale", 0.08, 0.6, log=True)
            epochs = trial.suggest_int("distill_epochs", 30, 120, step=30)
            stages.append(make_config("distill", student=[max(4, round(h * scale)) for h in self.hidden],
                                      epochs=self.epochs(epochs), temperature=2.0, alpha=1.0, lr=0.01, batch_size=32,
                                      weight_decay=0.0))
        elif structure == "lowrank":
            budget = trial.suggest_float("lowrank_budget", 0.08, 0.5, log=True)
            stages.append(make_config("lowrank", targets=self.weighted[:-1], budget=round(budget, 4),
                                      finetune_epochs=self.epochs(10)))
            if trial.suggest_categorical("recover", [False, True]):   # distil from the original
                stages.append(make_config("recover", epochs=self.epochs(trial.suggest_int("recover_epochs", 10, 40,
                                                                                          step=10))))
        pruned = trial.suggest_categorical("prune", [True, False])
        if pruned:
            stages.append(make_config(
                "magnitude", sparsity=round(trial.suggest_float("sparsity", 0.5, 0.985), 4), scope="global",
                schedule="gradual", epochs=self.epochs(trial.suggest_int("prune_epochs", 20, 80, step=20)),
                lr=round(trial.suggest_float("prune_lr", 3e-4, 5e-3, log=True), 6),
                value_dtype="float16", bias_dtype="float16"))
        if stages:
            quant = trial.suggest_categorical("quant", ["none", "kmeans", "rtn"])
        else:   # nothing compressed yet: a quantization stage is not optional
            quant = trial.suggest_categorical("quant_only", ["kmeans", "rtn"])
        if quant == "kmeans":
            stages.extend(self._kmeans(trial, structure))
        elif quant == "rtn":
            stages.append(make_config("rtn", bits=trial.suggest_int("rtn_bits", 3, 8), granularity="channel"))
        return stages

    def _kmeans(self, trial: Any, structure: str) -> list[MethodConfig]:
        bits = trial.suggest_int("bits", 2, 6)
        bias_bits = trial.suggest_int("bias_bits", 3, 8)
        epochs = trial.suggest_int("kmeans_epochs", 0, 20, step=5)
        # Layers renamed by a structural stage (fc1 -> fc1.0 / fc1.1) are not protected by name.
        order = self.protect_order if structure == "dense" else []
        n = trial.suggest_int("protect", 0, min(2, max(0, len(self.protect_order) - 1)))
        protected = order[:n]
        common = {"coding": "huffman", "finetune_epochs": self.epochs(epochs) if epochs else 0, "lr": 0.001}
        out = [make_config("kmeans", bits=bits, bias_bits=bias_bits, ignore=protected, **common)]
        if protected:
            out.append(make_config("kmeans", bits=min(8, bits + 2), bias_bits=min(8, bias_bits + 2),
                                   targets=protected, coding="huffman"))
        return out
