"""Pure quantization math: scales, zero points, codes, and dynamic int8 activations.

Nothing here walks modules. A weight `w` of shape (rows, cols) is viewed as groups
(`group_view`): (rows, groups, group_size) for per-channel / group-wise, (1, 1, numel) for
per-tensor. Each group has a scale and (asymmetric only) a zero point; codes are unsigned
integers in [0, 2**bits), so they bit-pack directly:

- symmetric:  w ~ scale * (code - 2**(bits-1)),  |q| <= 2**(bits-1) - 1 (restricted range)
- asymmetric: w ~ scale * (code - zero),          zero in [0, 2**bits)

>>> w = torch.randn(8, 64)
>>> scale, zero = qparams(group_view(w, "group", 32), bits=4, symmetric=True)
>>> codes = quantize(group_view(w, "group", 32), scale, zero, bits=4)
>>> w_hat = dequantize(codes, scale, zero, bits=4).reshape(w.shape)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from slimkit.core.errors import ConfigError, SlimError


class Granularity(str, Enum):
    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


MSE_GRID = tuple(1.0 - 0.05 * i for i in range(11))  # clipping ratios tried by `mse=True`


def check_bits(bits: object, name: str = "bits") -> int:
    """`bits` as an int in 1..8, or ValueError naming the parameter."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ConfigError(f"{name} must be an integer in 1..8, got {bits!r}")
    return bits


def check_group(cols: int, granularity: Granularity | str, group_size: int, where: str = "") -> int:
    """The group length for `cols` input columns; ValueError if `group_size` does not divide it."""
    granularity = Granularity(granularity)
    if granularity is not Granularity.GROUP:
        return cols
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"group_size must be a positive integer, got {group_size!r}")
    if cols % group_size:
        at = f" of {where}" if where else ""
        raise ConfigError(f"group_size={group_size} does not divide the input dimension {cols}{at}")
    return group_size


def group_view(w: torch.Tensor, granularity: Granularity | str, group_size: int = 128) -> torch.Tensor:
    """`w` (rows, cols) as (rows, groups, group) -- or (1, 1, numel) per tensor -- without copying."""
    granularity = Granularity(granularity)
    rows, cols = w.shape
    if granularity is Granularity.TENSOR:
        return w.reshape(1, 1, rows * cols)
    g = check_group(cols, granularity, group_size)
    return w.reshape(rows, cols // g, g)


def qparams(wg: torch.Tensor, bits: int, symmetric: bool, mse: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Min-max (or MSE-optimal clipped) scale and zero point of each group of `wg` (R, G, g).

    Returns `scale` (R, G) float32 and `zero` (R, G) uint8, or None when symmetric.
    """
    check_bits(bits)
    wg = wg.float()
    lo, hi = wg.amin(-1), wg.amax(-1)
    best = _qparams_from_range(lo, hi, bits, symmetric)
    if not mse:
        return best
    best_err = _group_error(wg, *best, bits)
    for ratio in MSE_GRID[1:]:
        cand = _qparams_from_range(lo * ratio, hi * ratio, bits, symmetric)
        err = _group_error(wg, *cand, bits)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        scale = torch.where(better, cand[0], best[0])
        zero = None if symmetric else torch.where(better, cand[1], best[1])
        best = (scale, zero)
    return best


def _qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    tiny = torch.finfo(torch.float32).tiny * 2**10
    if symmetric:
        if bits < 2:
            raise ConfigError("bits=1 needs symmetric=False (symmetric codes need at least 2 bits)")
        qmax = 2 ** (bits - 1) - 1
        return (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(tiny), None
    levels = 2**bits - 1
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)     # zero stays exactly representable
    scale = ((hi - lo) / levels).clamp_min(tiny)
    zero = torch.round(-lo / scale).clamp(0, levels).to(torch.uint8)
    return scale, zero


def _group_error(wg, scale, zero, bits):
    dq = dequantize(quantize(wg, scale, zero, bits), scale, zero, bits)
    return (dq - wg).pow(2).sum(-1)


def zero_point(zero: torch.Tensor | None, bits: int) -> torch.Tensor | float:
    """The zero code: the stored one (asymmetric) or 2**(bits-1) (symmetric)."""
    return float(2 ** (bits - 1)) if zero is None else zero.float()


def quantize(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int) -> torch.Tensor:
    """Codes (uint8, same shape as `wg`) of a grouped weight (R, G, g) with per-group params."""
    lo, hi = (1, 2**bits - 1) if zero is None else (0, 2**bits - 1)
    z = zero_point(zero, bits)
    z = z.unsqueeze(-1) if isinstance(z, torch.Tensor) else z
    q = torch.round(wg.float() / scale.unsqueeze(-1)) + z
    return q.clamp_(lo, hi).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float values of grouped codes (R, G, g) with per-group `scale` / `zero` (R, G)."""
    z = zero_point(zero, bits)
    z = z.unsqueeze(-1) if isinstance(z, torch.Tensor) else z
    return ((codes.to(dtype) - z) * scale.unsqueeze(-1).to(dtype))


def fake_quantize(w: torch.Tensor, bits: int, symmetric: bool = True,
                  granularity: Granularity | str = Granularity.CHANNEL, group_size: int = 128,
                  mse: bool = False) -> torch.Tensor:
    """Round-to-nearest `w` and return it dequantized, same shape (for error studies)."""
    wg = group_view(w, granularity, group_size)
    scale, zero = qparams(wg, bits, symmetric, mse)
    return dequantize(quantize(wg, scale, zero, bits), scale, zero, bits).reshape(w.shape).to(w.dtype)


# ---------------------------------------------------------------- int8 with integer matmul


def quantize_int8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: (int8 codes in [-127, 127], float32 scale per row)."""
    w = w.detach().float()
    scale = (w.abs().amax(1) / 127).clamp_min(torch.finfo(torch.float32).tiny * 2**10)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


_ROUNDER = 12582912.0  # 1.5 * 2**23


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 of each row of `x` (n, k): (int8 codes, float32 scale (n, 1))."""
    x = x.float()
    amax = x.abs().amax(1, keepdim=True).clamp_min_(1e-12)
    # Round to nearest in one fused pass: adding 1.5 * 2**23 leaves round(v) in the low mantissa
    # bits (exact for |v| < 2**22; here |v| <= 127), and int32 -> int8 keeps the low byte.
    shifted = torch.mul(x, 127.0 / amax).add_(_ROUNDER)
    return shifted.view(torch.int32).to(torch.int8), amax.div_(127.0)


def quantize_static(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 codes of `x` with a fixed (calibrated) scale, saturating at +-127."""
    v = torch.mul(x.float(), 1.0 / scale).clamp_(-127.0, 127.0)
    return v.add_(_ROUNDER).view(torch.int32).to(torch.int8)


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
    """int8 (n, k) @ int8 (k, m) -> int32 (n, m) with `torch._int_mm` where it applies.

    On CPU `_int_mm` takes any shape (checked with torch 2.13). On CUDA it needs n > 16 and k,
    m multiples of 8; other shapes fall back to an fp32 matmul (exact while k * 127**2 < 2**24).
    """
    n, k = a.shape
    m = b_t.shape[1]
    ok = a.device.type == "cpu" or (n > 16 and k % 8 == 0 and m % 8 == 0)
    if ok:
        try:
            return torch._int_mm(a, b_t)
        except RuntimeError:
            pass
    return torch.round(a.float() @ b_t.float()).to(torch.int32)


def check_calibration(batches: object, what: str = "calibration data") -> list:
    """The batches as a list, or SlimError when there are none."""
    batches = list(batches or [])  # type: ignore[arg-type]
    if not batches:
        raise SlimError(f"{what} is empty: the method needs at least one calibration batch")
    return batches


# ---------------------------------------------------------------- a quantized weight


@dataclass
class QuantizedWeight:
    """Codes of a (rows, cols) weight plus its per-group parameters.

    `codes` is uint8 (rows, cols) in [0, 2**bits); `scale` and `zero` are (R, G) with R = rows
    (or 1 per tensor) and G = cols // group_size (1 per channel / per tensor).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int
    granularity: Granularity
    group_size: int

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        cg = group_view(self.codes, self.granularity, self.group_size)
        return dequantize(cg, self.scale, self.zero, self.bits, dtype).reshape(self.codes.shape)


def rtn_quantize(w: torch.Tensor, bits: int, symmetric: bool = True,
                 granularity: Granularity | str = Granularity.CHANNEL, group_size: int = 128,
                 mse: bool = False, scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight.

    Scales are rounded to `scale_dtype` *before* the codes are computed, so storing them in
    that dtype loses nothing further.
    """
    check_bits(bits)
    granularity = Granularity(granularity)
    wg = group_view(w.detach().float(), granularity, group_size)
    scale, zero = qparams(wg, bits, symmetric, mse)
    scale = scale.to(scale_dtype).float().clamp_min(_min_scale(scale_dtype))
    codes = quantize(wg, scale, zero, bits).reshape(w.shape)
    return QuantizedWeight(codes, scale.to(scale_dtype), zero, bits, granularity,
                           group_size if granularity is Granularity.GROUP else w.shape[1])


def float16_scales_lose(w: torch.Tensor, bits: int, symmetric: bool = True,
                        granularity: Granularity | str = Granularity.CHANNEL, group_size: int = 128,
                        mse: bool = False) -> bool:
    """Whether float16 scales would lose the 2-D weight `w`: its round-to-nearest error with them is
    over 1.5x its error with float32 scales (weights of subnormal magnitude decode as zeros, as the
    scales stop at float16's smallest normal; scales beyond 65504 overflow). False for zeros.

    >>> float16_scales_lose(torch.randn(4, 64) * 1e-6, bits=4), float16_scales_lose(torch.randn(4, 64), 4)
    (True, False)
    """
    w = w.detach().float()
    norm = float(w.norm())
    if norm == 0.0:
        return False
    errors = [float((rtn_quantize(w, bits, symmetric, granularity, group_size, mse, dtype).dequantize() - w).norm())
              / norm for dtype in (torch.float16, torch.float32)]
    return not errors[0] <= 1.5 * errors[1] + 1e-7   # also true for inf / nan from overflowing scales


def _min_scale(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny) if dtype.is_floating_point else 1e-30
