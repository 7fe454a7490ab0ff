"""The dtype a quantized model computes its activations in: float32, or bfloat16 / float16 where the
CPU multiplies them natively (`compute_dtype="auto"`).

`resolve_compute_dtype(mode)` turns a layer's mode into a torch dtype: "auto" is bfloat16 where
`fast_bf16()` (AMX or AVX-512 BF16), else float32; SLIMKIT_COMPUTE_DTYPE overrides "auto", and
`forced_compute_dtype(...)` overrides every mode inside a block.

>>> resolve_compute_dtype("float32")
torch.float32
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch

from slimkit.core.torch_utils import cpu_supports

SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
COMPUTE_ENV = "SLIMKIT_COMPUTE_DTYPE"


@functools.lru_cache(maxsize=1)
def fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX-512 BF16), read once from
    torch's CPU feature flags (deterministic: no timing involved).

    >>> fast_bf16() in (True, False)
    True
    """
    return cpu_supports("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def check_compute_dtype(value: object, where: str = "compute_dtype") -> str:
    """`value` if it is one of COMPUTE_DTYPES, else ValueError naming it."""
    if value not in COMPUTE_DTYPES:
        raise ValueError(f"{where} must be one of {', '.join(COMPUTE_DTYPES)}, got {value!r}")
    return str(value)


_FORCED: list[str] = []


@contextlib.contextmanager
def forced_compute_dtype(mode: str = "float32") -> Iterator[None]:
    """Run every quantized model in `mode` inside the block, whatever its own compute dtype, e.g.
    to compare the fp32 integer path with an export of it.

    >>> with forced_compute_dtype("float32"):
    ...     out = model(**inputs)          # fp32 activations, int8 matmuls
    """
    _FORCED.append(check_compute_dtype(mode))
    try:
        yield
    finally:
        _FORCED.pop()


def resolve_compute_dtype(mode: str) -> torch.dtype:
    """The dtype a model runs its activations in for `mode`: "auto" is bfloat16 where the CPU has
    fast bf16 (`fast_bf16()`), else float32; the environment variable SLIMKIT_COMPUTE_DTYPE
    (float32 / bfloat16 / float16) overrides "auto" (e.g. to pick the fp32 path at load time),
    and `forced_compute_dtype` overrides every mode.

    >>> resolve_compute_dtype("float32")
    torch.float32
    """
    mode = _FORCED[-1] if _FORCED else mode
    if mode == "auto":
        env = os.environ.get(COMPUTE_ENV, "auto")
        mode = env if env in COMPUTE_DTYPES and env != "auto" else ("bfloat16" if fast_bf16() else "float32")
    return SCALE_DTYPES[mode]


def computes_below_fp32(model: torch.nn.Module) -> str | None:
    """The dtype `model` computes in here when that is not float32, else None: a module whose compute
    dtype resolves to bf16/fp16, or a plain module (not one of slimkit's coded layers, which decode
    their fp16 scales, values or biases to fp32) holding a parameter or buffer in one."""
    for m in model.modules():
        mode = getattr(m, "compute_dtype", None)
        if isinstance(mode, str) and mode in COMPUTE_DTYPES and resolve_compute_dtype(mode) != torch.float32:
            return str(resolve_compute_dtype(mode)).removeprefix("torch.")
        if getattr(m, "slim_type", None) is None:
            for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
                if t is not None and t.is_floating_point() and t.dtype != torch.float32:
                    return str(t.dtype).removeprefix("torch.")
    return None


def cast_of(fn) -> str | None:
    """The float dtype name a `Module._apply` function casts every float tensor to
    (`model.to(torch.bfloat16)`, `.float()`, `.half()`), or None for moves that keep dtypes."""
    try:
        a, b = fn(torch.zeros(1)), fn(torch.zeros(1, dtype=torch.bfloat16))
    except Exception:  # noqa: BLE001 - an _apply function we cannot probe: assume no cast
        return None
    names = {v: k for k, v in SCALE_DTYPES.items()}
    return names.get(a.dtype) if a.dtype == b.dtype else None
