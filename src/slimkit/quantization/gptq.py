"""GPTQ (Frantar et al., arXiv 2210.17323) as pure tensor math: no modules, no hooks.

Quantizes a weight W (rows = outputs, cols = inputs) one column at a time, spreading each
column's rounding error over the columns not yet quantized, weighted by the inverse Hessian
H = 2 X X^T of the layer's calibration inputs, so that ||W X - Q X|| stays small.

>>> H = hessian_init(64); hessian_update(H, x)       # x: (tokens, 64) calibration inputs
>>> qw = gptq_quantize(weight, H, bits=4, group_size=32, act_order=True)
>>> qw.dequantize()                                   # same shape as weight

The Hessian accumulators (`hessian_init`, `hessian_update`, `hessian_value`) live in
`slimkit.dist.calibration`, shared with the other calibrated methods, and are re-exported here.

Device-agnostic: every tensor is made on the device of the weight (and the Hessian accumulator on
the device of the inputs it sees), so GPTQ runs on CUDA when the model is there. The Hessian and
the column loop stay float32 on every device (as in the reference implementation). CUDA is
untested here (no GPU on the machines this was written on).
"""

from __future__ import annotations

import torch

from slimkit.core.errors import ConfigError
from slimkit.core.torch_utils import num_threads
from slimkit.dist.calibration import (
    hessian_all_reduce,
    hessian_init,
    hessian_update,
    hessian_value,
    inverse_cholesky,
)
from slimkit.nn.quant_math import Granularity, QuantizedWeight, check_bits, check_group, qparams

__all__ = ["gptq_quantize", "hessian_all_reduce", "hessian_init", "hessian_update", "hessian_value",
           "inverse_cholesky"]


def _params(w: torch.Tensor, bits: int, symmetric: bool, dtype: torch.dtype):
    """Min-max scale (rounded to the storage dtype) and zero of each row of `w`."""
    scale, zero = qparams(w.unsqueeze(1), bits, symmetric)       # (rows, 1)
    scale = scale[:, 0].to(dtype).float().clamp_min(float(torch.finfo(dtype).tiny))
    return scale, None if zero is None else zero[:, 0]


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, symmetric: bool = True,
                  granularity: Granularity | str = Granularity.GROUP, group_size: int = 128,
                  act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                  scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """GPTQ-quantize `weight` (rows, cols) given the Hessian (cols, cols) of its inputs.

    Group-wise scales are fixed per contiguous group of input columns; with `act_order` the
    columns are visited by decreasing Hessian diagonal and the group scales are computed up
    front from the original weight ("static groups"), so the stored layout never needs a
    permutation. Scales are rounded to `scale_dtype` before use, so storing them so is exact.
    """
    check_bits(bits)
    granularity = Granularity(granularity)
    rows, cols = weight.shape
    g = check_group(cols, granularity, group_size) if granularity is Granularity.GROUP else cols
    if hessian.shape != (cols, cols):
        raise ConfigError(f"hessian must be ({cols}, {cols}) for a weight with {cols} inputs, "
                         f"got {tuple(hessian.shape)}")
    w = weight.detach().float().clone()
    h = hessian.detach().to(device=w.device, dtype=torch.float32, copy=True)
    device = w.device
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0

    n_groups = cols // g
    scale = torch.empty(rows, n_groups, device=device)
    zero = None if symmetric else torch.empty(rows, n_groups, dtype=torch.uint8, device=device)
    if granularity is Granularity.TENSOR:
        s, z = _params(w.reshape(1, -1), bits, symmetric, scale_dtype)
        scale[:] = s
        if zero is not None:
            zero[:] = z
    static = granularity is Granularity.CHANNEL or act_order or granularity is Granularity.TENSOR
    if static and granularity is not Granularity.TENSOR:
        for k in range(n_groups):
            s, z = _params(w[:, k * g:(k + 1) * g], bits, symmetric, scale_dtype)
            scale[:, k] = s
            if zero is not None:
                zero[:, k] = z

    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(cols, device=device)
    w, h = w[:, perm], h[perm][:, perm]
    hinv = inverse_cholesky(h, damp)
    with num_threads(1):  # thousands of tiny ops: a thread pool only adds latency
        codes = _columns(w, hinv, perm.tolist(), scale, zero, bits, g, static, block_size,
                         lambda ahead: _params(ahead, bits, symmetric, scale_dtype))

    if granularity is Granularity.TENSOR:
        scale, zero = scale[:1, :1], None if zero is None else zero[:1, :1]
    return QuantizedWeight(codes, scale.to(scale_dtype), zero, bits, granularity, g)


def _columns(w, hinv, perm, scale, zero, bits, g, static, block_size, find_params) -> torch.Tensor:
    """The GPTQ column loop (lazy batched updates, Cholesky form of H^-1); fills scale/zero of
    dynamic groups in place and returns the codes in the original column order."""
    rows, cols = w.shape
    lo, hi = (1.0 if zero is None else 0.0), float(2**bits - 1)
    zeros = torch.full_like(scale, float(2 ** (bits - 1))) if zero is None else zero.float()
    codes = torch.empty(rows, cols, device=w.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = perm[i1 + i]
            k = col // g
            if not static and col % g == 0:     # dynamic groups see the error-compensated weights
                scale[:, k], z = find_params(torch.cat([w1[:, i:], w[:, i2:]], 1)[:, :g])
                if zero is not None:
                    zero[:, k] = z
                    zeros[:, k] = z.float()
            s, zp, col_w = scale[:, k], zeros[:, k], w1[:, i]
            c = torch.round(col_w / s).add_(zp).clamp_(lo, hi)
            codes[:, col] = c
            err = (col_w - (c - zp) * s).div_(hinv1[i, i])
            w1[:, i:].addr_(err, hinv1[i, i:], alpha=-1.0)
            err1[:, i] = err
        w[:, i2:].addmm_(err1, hinv[i1:i2, i2:], alpha=-1.0)
    return codes.to(torch.uint8)
