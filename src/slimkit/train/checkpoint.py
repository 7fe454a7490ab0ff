"""Pickle-free training checkpoints for `slimkit.train.loop.fit`: tensors (model, best weights,
optimizer slots, RNG) in a safetensors file, everything else (loop state, optimizer groups, LR
scheduler, the settings and resume key it was written with) in its JSON header.

>>> save_checkpoint(path, objective, opt, best, state, settings)
>>> state, best = load_checkpoint(path, objective, opt, settings)
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.io.safetensors_file import SafetensorsReader, atomic_write, serialize

CHECKPOINT = "checkpoint.safetensors"
_NOT_KEYED = ("epochs", "progress", "patience", "time_limit", "label")
# fields added after checkpoints were first written: keyed only when not at their default, so that
# older checkpoints still resume
_LATER = ("optimizer", "hold", "validate_start", "freeze_norm", "data_parallel")


def settings_key(settings: Any) -> dict:
    """The settings a checkpoint must have been written with to be resumed."""
    defaults = {f.name: f.default for f in fields(settings)}
    return {k: v for k, v in asdict(settings).items()
            if k not in _NOT_KEYED and (k not in _LATER or v != defaults[k])}


def save_checkpoint(path: Path, objective: nn.Module, opt: torch.optim.Optimizer, best: dict[str, torch.Tensor],
                    state: dict, settings: Any, scheduler: Any = None, resume_key: dict | None = None) -> None:
    arrays = {f"model.{k}": v for k, v in objective.state_dict().items()}
    arrays.update({f"best.{k}": v for k, v in best.items()})
    opt_state = opt.state_dict()
    for idx, slots in opt_state["state"].items():
        arrays.update({f"optim.{idx}.{name}": torch.as_tensor(t) for name, t in slots.items()})
    arrays["rng"] = torch.get_rng_state()
    header = {"state": state, "param_groups": opt_state["param_groups"], "settings": settings_key(settings)}
    if scheduler is not None:
        header["scheduler"] = scheduler.state_dict()
    if resume_key:
        header["resume_key"] = resume_key
    np_arrays = {k: v.detach().cpu().contiguous().numpy() for k, v in arrays.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, serialize(np_arrays, {"slimkit_checkpoint": json.dumps(header)}))


def load_checkpoint(path: Path, objective: nn.Module, opt: torch.optim.Optimizer, settings: Any,
                    scheduler: Any = None, resume_key: dict | None = None
                    ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore `objective`, `opt`, `scheduler` and the RNG; returns (loop state, best weights).
    A checkpoint written with other settings or another `resume_key` is refused."""
    with SafetensorsReader(path) as reader:
        try:
            header: dict[str, Any] = json.loads(reader.metadata["slimkit_checkpoint"])
        except (KeyError, ValueError):
            raise SlimError(f"{path} is not a slimkit training checkpoint") from None
        arrays = {k: torch.from_numpy(np.array(reader.get(k))) for k in reader.keys()}
    written = header.get("resume_key") or {}
    if written != (resume_key or {}):
        names = "/".join(resume_key or written)
        raise SlimError(f"{path} was written with other {names}; use a new checkpoint folder")
    if header.get("settings") != settings_key(settings):
        raise SlimError(f"{path} was written with other training settings; use a new checkpoint "
                        "folder or the same settings")
    try:
        objective.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("model.")})
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in arrays.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                slots.setdefault(int(idx), {})[name] = value
        opt.load_state_dict({"state": slots, "param_groups": header["param_groups"]})
    except (RuntimeError, ValueError, KeyError) as exc:
        raise SlimError(f"{path} does not match this student: {str(exc).splitlines()[0]}") from None
    if scheduler is not None and "scheduler" in header:
        scheduler.load_state_dict(header["scheduler"])
    torch.set_rng_state(arrays["rng"])
    best = {k[5:]: v for k, v in arrays.items() if k.startswith("best.")}
    return copy.deepcopy(header["state"]), best
