"""The original model's size: every ratio (evaluate, compress, search, reports) is taken against it.

The original is the uncompressed model as an fp32 safetensors file: for a builtin or Hugging Face
model it is rebuilt from the base (`slimkit.eval.measure.baseline_bytes`), for a checkpoint it is
the input file, and for a user's own module it is that module's parameters and buffers, remembered
the first time a method touches it (`remember_original`, called by `apply_`), carried to a new root
module (a distilled student) and written into the .slim manifest's info, so that a compressed
module is never compared with itself.

>>> remember_original(model)            # before the first method changes it
>>> original_fp32_bytes(model)
1076264
"""

from __future__ import annotations

import json

import torch
from torch import nn

KEY = "slimkit_original_fp32_bytes"
INFO_KEY = "original_fp32_bytes"
REBUILT = ("zoo", "hf")   # bases whose original is rebuilt from the manifest: nothing to remember in the file


def fp32_safetensors_bytes(state: dict[str, torch.Tensor]) -> int:
    """Exact size of `state` written as an fp32 safetensors file (floats as fp32)."""
    header: dict[str, object] = {}
    offset = 0

    def itemsize(t: torch.Tensor) -> int:
        return 4 if t.is_floating_point() else t.element_size()

    for key in sorted(state, key=lambda k: (-itemsize(state[k]), k)):  # safetensors' own order
        t = state[key]
        n = t.numel() * itemsize(t)
        header[key] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = len(json.dumps(header, separators=(",", ":")))
    return 8 + raw + (-raw % 8) + offset


def remember_original(model: nn.Module) -> int:
    """Record `model`'s fp32 size as the original's, unless one is recorded already; returns it."""
    known = original_fp32_bytes(model)
    if known is None:
        known = fp32_safetensors_bytes(model.state_dict())
        model.__dict__[KEY] = known
    return known


def original_fp32_bytes(model: nn.Module) -> int | None:
    """The original's fp32 bytes recorded on `model` (in memory, or in the manifest it was loaded
    from), or None."""
    known = model.__dict__.get(KEY)
    if known is None:
        known = model.__dict__.get("slimkit_info", {}).get(INFO_KEY)
    return known if isinstance(known, int) and not isinstance(known, bool) and known > 0 else None


def carry_original(source: nn.Module, target: nn.Module) -> nn.Module:
    """Give `target` (a new module made from `source`, e.g. a student) `source`'s original size."""
    known = original_fp32_bytes(source)
    if known is not None and target is not source:
        target.__dict__[KEY] = known
    return target


def original_info(model: nn.Module) -> dict[str, int]:
    """What the .slim manifest's info keeps of the original (nothing for rebuilt bases)."""
    base = model.__dict__.get("slimkit_base", {"kind": "user"})
    known = original_fp32_bytes(model)
    return {} if known is None or base.get("kind") in REBUILT else {INFO_KEY: known}
