"""A compression method in one file, as a user or a new contributor would write it.

`toy-half` stores the weights of Linear layers as float16 on disk (half the bytes) and rounds them in
memory to exactly the values the file holds. Registering the config class is all slimkit needs to
apply it (`apply_`, recipes, `slimkit compress`); its size estimate (`slimkit inspect`) and its search
entry (`slimkit search --method toy-half`) live here too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from slimkit.core.methods import Family, MethodConfig, register_method
from slimkit.core.select import FilterFn, select_modules
from slimkit.core.task import Task
from slimkit.io.artifact import set_codec
from slimkit.io.sizing import Note, Plan, Stored, estimates, note, tensor_key

NAME = "toy-half"


@register_method
class HalfWeightsConfig(MethodConfig):
    """Linear weights as float16 on disk; `keep_last` leaves the output layer in float32."""

    method: ClassVar[str] = NAME
    family: ClassVar[Family] = Family.QUANTIZE
    summary: ClassVar[str] = "Linear weights stored as float16"
    keep_last: bool = False

    def layers(self, model: nn.Module, filter_fn: FilterFn | None = None) -> list[tuple[str, nn.Module]]:
        chosen = select_modules(model, self.targets, (nn.Linear,), filter_fn, self.ignore)
        return chosen[:-1] if self.keep_last else chosen

    def apply(self, model: nn.Module, task: Task | None, filter_fn: FilterFn | None) -> nn.Module:
        for _, layer in self.layers(model, filter_fn):
            with torch.no_grad():
                layer.weight.copy_(layer.weight.half().float())
            set_codec(layer, "weight", [{"codec": "cast", "to": "float16"}])
        return model

    @classmethod
    def search_choices(cls, trial: Any, model: nn.Module, task: Task | None) -> MethodConfig | None:
        return cls(keep_last=trial.suggest_categorical(f"{NAME}.keep_last", [False, True]))


@estimates(NAME)
def estimate_half(plan: Plan, cfg: HalfWeightsConfig, task: object) -> Note:
    touched = {}
    for name, layer in cfg.layers(plan.model):
        n = layer.weight.numel()
        plan.set(tensor_key(name, "weight"), Stored(n, n, 16, how="float16", kind="cast"))
        touched[name] = "float16 weights"
    return note(touched, {}, "exact: 2 bytes per weight")
