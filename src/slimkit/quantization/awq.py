"""AWQ (Lin et al., arXiv 2306.00978) and SmoothQuant (Xiao et al., arXiv 2211.10438) scales as
pure tensor math: no modules, no hooks.

Both multiply a layer's weight columns by per-input-channel scales `s` and divide its inputs by
them (folded into the op before, or kept in front of the layer), which leaves the float function
unchanged and moves quantization difficulty between weights and activations:

- AWQ (`search_scales`): `s = mean|x|^alpha`, normalised, with `alpha` chosen on a grid to minimise
  the layer's output error after group-wise round-to-nearest of `W diag(s)`: salient input channels
  (large activations) get finer effective steps. Then `search_clip` shrinks each group's range
  (per output row) where clipping lowers the output error.
- SmoothQuant (`smooth_scales`): `s = max|x|^alpha / max|W|^(1 - alpha)` per channel, so that
  activation outliers migrate into the weights and per-token int8 activations lose less.

The output error of a weight change `D` (rows x cols) on inputs `X` is `||X D^T||^2`, computed from
the Hessian `H = 2/n X^T X` of the calibration inputs (`slimkit.dist.calibration`) as
`sum((D @ H) * D) * n / 2`, so no activations are kept.

>>> s, alpha = search_scales([w], hessian, mean_abs, fake_quant)   # fake_quant(w) -> dequantized codes
>>> ratios = search_clip(w * s, scaled_hessian(hessian, s), bits=4, symmetric=False, group_size=64)
>>> clipped = apply_clip(w * s, ratios, 64)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from slimkit.nn.quant_math import dequantize, qparams, quantize

EPS = 1e-8


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """`tr(D H D^T)`: the squared output error (up to n/2) of weight change `delta` (rows, cols)."""
    return float(((delta @ hessian) * delta).sum())


def scaled_hessian(hessian: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The Hessian of the inputs `x / scale`: `H_ij / (s_i s_j)`."""
    inv = 1.0 / scale
    return hessian * inv[:, None] * inv[None, :]


def awq_candidate(mean_abs: torch.Tensor, alpha: float, w_mean: torch.Tensor | None = None) -> torch.Tensor:
    """`mean|x|^alpha` (or, with `w_mean`, AutoAWQ's "duo" form `mean|x|^alpha / w_mean^(1-alpha)`),
    normalised to a geometric mean of its extremes of 1 and rounded to float16 (the dtype an input
    scale is stored in), as the reference implementations form it."""
    s = mean_abs.float().clamp_min(EPS).pow(alpha)
    if w_mean is not None:
        s = s / (w_mean.float().to(s.device).pow(1.0 - alpha) + 1e-4)
    s = s.clamp_min(1e-4)
    s = s / (s.max() * s.min()).sqrt()
    return s.half().float().clamp_min(float(torch.finfo(torch.float16).tiny))


def weight_mean(weights: list[torch.Tensor], group_size: int) -> torch.Tensor:
    """Per input channel, the mean over all rows of |w| relative to its group's maximum (AutoAWQ's
    `w_mean` for duo scaling)."""
    w = torch.cat([v.detach().float() for v in weights])
    rows, cols = w.shape
    wg = w.abs().reshape(rows, cols // group_size, group_size)
    return (wg / (wg.amax(-1, keepdim=True) + 1e-6)).reshape(rows, cols).mean(0)


def search_scales(weights: list[torch.Tensor], hessian: torch.Tensor, mean_abs: torch.Tensor,
                  fake_quant: Callable[[torch.Tensor], torch.Tensor], grid: int = 20,
                  w_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """(scales, alpha) minimising the summed output error of `weights` (each rows x cols, one input)
    after `fake_quant(W * s) / s`, over `alpha` in 0, 1/grid, ..., (grid-1)/grid of `awq_candidate`
    (with `w_mean`, the duo form's candidates are tried too). `alpha = 0` without `w_mean` is plain
    round-to-nearest (all scales 1), so the result is never worse than it on this objective.

    >>> s, alpha = search_scales([w], h, x.abs().mean(0), lambda v: rtn_quantize(v, 4).dequantize())
    """
    if grid < 1:
        raise ValueError(f"grid must be a positive integer, got {grid}")
    h = hessian.float()
    ws = [w.detach().float() for w in weights]
    candidates = [(0.0, torch.ones_like(mean_abs, dtype=torch.float32))]
    candidates += [(i / grid, awq_candidate(mean_abs, i / grid)) for i in range(1, grid)]
    if w_mean is not None:
        candidates += [(i / grid, awq_candidate(mean_abs, i / grid, w_mean)) for i in range(grid)]
    best: tuple[float, torch.Tensor, float] | None = None
    for alpha, s in candidates:
        err = sum(output_error(fake_quant(w * s) / s - w, h) for w in ws)
        if best is None or err < best[0]:
            best = (err, s, alpha)
    if best is None:
        raise ValueError("awq needs at least one candidate scale (grid >= 1)")
    return best[1], best[2]


def _group_blocks(hessian: torch.Tensor, group_size: int) -> torch.Tensor:
    """The diagonal (g, g) blocks of `hessian`, stacked (groups, g, g)."""
    cols = hessian.shape[0]
    g = group_size
    return torch.stack([hessian[k:k + g, k:k + g] for k in range(0, cols, g)])


def _ranges(wg: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = wg.amin(-1).clamp(max=0), wg.amax(-1).clamp(min=0)
    if symmetric:
        top = torch.maximum(lo.abs(), hi)
        lo, hi = -top, top
    return lo, hi


def search_clip(weight: torch.Tensor, hessian: torch.Tensor, bits: int, symmetric: bool, group_size: int,
                grid: int = 20, max_shrink: float = 0.5) -> torch.Tensor:
    """Per output row and group of `group_size` inputs, the ratio r in 1, 1 - 1/grid, ... down to
    1 - max_shrink whose clipped range [r lo, r hi] gives the least output error of that group's
    part of the row (`D_g H_gg D_g^T`). Returns ratios (rows, groups); 1 keeps the full range.

    Clipping is invariant to scaling a whole row, so the ratios stay valid when a row is later
    divided by a folded scale.
    """
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"group_size {group_size} does not divide {cols} inputs")
    wg = weight.detach().float().reshape(rows, cols // group_size, group_size)
    hb = _group_blocks(hessian.float(), group_size)                    # (G, g, g)
    lo, hi = _ranges(wg, symmetric)
    best_err = torch.full(wg.shape[:2], float("inf"), device=wg.device)
    best = torch.ones(wg.shape[:2], device=wg.device)
    steps = max(1, int(round(max_shrink * grid)))
    for i in range(steps):
        r = 1.0 - i / grid
        clipped = torch.maximum(torch.minimum(wg, (hi * r).unsqueeze(-1)), (lo * r).unsqueeze(-1))
        scale, zero = qparams(clipped, bits, symmetric)
        d = (dequantize(quantize(clipped, scale, zero, bits), scale, zero, bits) - wg).transpose(0, 1)  # (G, R, g)
        err = ((d @ hb) * d).sum(-1).transpose(0, 1)                 # (R, G)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, torch.full_like(best, r), best)
    return best


def apply_clip(weight: torch.Tensor, ratios: torch.Tensor, group_size: int, symmetric: bool = False) -> torch.Tensor:
    """`weight` with each (row, group) clamped to its ratio of its range (`search_clip`)."""
    rows, cols = weight.shape
    wg = weight.detach().float().reshape(rows, cols // group_size, group_size)
    lo, hi = _ranges(wg, symmetric)
    r = ratios.to(wg.device).float()
    out = torch.maximum(torch.minimum(wg, (hi * r).unsqueeze(-1)), (lo * r).unsqueeze(-1))
    return out.reshape(rows, cols)


def smooth_scales(act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-channel scales `max|x|^alpha / max|W|^(1-alpha)` (the weight maximum over
    the rows of every layer reading the input), rounded to float16; channels the calibration never
    saw active, or whose weights are all zero, keep 1.

    >>> smooth_scales(torch.tensor([100.0, 1.0]), [torch.ones(3, 2)], 0.5)
    tensor([10.,  1.])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    w_max = torch.stack([w.detach().abs().float().amax(0) for w in weights]).amax(0)
    a = act_max.float()
    dead = (a <= 0) | (w_max <= 0)
    s = a.clamp_min(EPS).pow(alpha) / w_max.clamp_min(EPS).pow(1.0 - alpha)
    s = torch.where(dead, torch.ones_like(s), s).clamp(1e-4, 1e4)
    return s.half().float()
