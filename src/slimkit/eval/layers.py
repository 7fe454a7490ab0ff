"""Per-layer accounting: type, shape, parameters, nonzeros, stored bytes and encoding."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from slimkit.io.artifact import SIDE_SEP, encode_model


def layer_table(model: nn.Module) -> list[dict]:
    """One row per module that owns tensors directly, with what it costs in the artifact.

    >>> rows = layer_table(sk.zoo.load("lenet-300-100"))
    >>> rows[0]["name"], rows[0]["bytes"], rows[0]["encoding"]
    ('fc1', 76800, 'raw float32')
    """

    arrays, manifest = encode_model(model)
    stored: dict[str, int] = defaultdict(int)
    for key, arr in arrays.items():
        stored[key.split(SIDE_SEP)[0]] += arr.nbytes
    rows = []
    for name, module in model.named_modules():
        own = {k: t for k, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
               if t is not None}
        if not own:
            continue
        keys = [f"{name}.{k}" if name else k for k in own]
        main = own.get("weight", next(iter(own.values())))
        encodings = []
        for key in keys:
            entry = manifest.tensors.get(key)
            if entry is not None:
                chain = "+".join(s["codec"] for s in entry.chain) or f"raw {entry.dtype}"
                encodings.append(chain)
        params = sum(t.numel() for t in own.values() if _counts(t))
        nonzeros = sum(int(torch.count_nonzero(t)) for t in own.values() if _counts(t))
        rows.append({
            "name": name or "(root)", "type": type(module).__name__, "shape": list(main.shape),
            "params": params, "nonzeros": nonzeros, "bytes": sum(stored.get(k, 0) for k in keys),
            "encoding": ", ".join(sorted(set(encodings))),
            "extra": module.extra_repr(),
        })
    return rows


def _counts(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.dtype in (torch.int8, torch.uint8)
