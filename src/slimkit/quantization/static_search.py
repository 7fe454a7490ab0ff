"""Output-aware choice of a static int8 activation scale, as pure tensor math (no modules).

An observer picks a clipping threshold from the histogram of |x| alone; what matters is the
layer's output. For each Linear, `choose_threshold` tries the observer's threshold and a grid of
fractions of max |x| on sampled calibration rows and keeps the one whose int8 layer output
(static int8 x, int8 per-channel weight) is closest to the float output; it also returns the
error of dynamic per-token int8 on the same rows, so a caller can keep a layer dynamic where no
single per-tensor scale fits (BERT's attention keys, whose inputs carry outlier channels).

>>> errs = candidate_errors(rows, weight, [6.0, 3.0])   # rows: (n, in) calibration inputs
>>> errs.shape                                          # one per threshold, then dynamic
torch.Size([3])
"""

from __future__ import annotations

import torch

from slimkit.nn.quant_math import quantize_int8_rows

GRID = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1)   # fractions of max |x| tried


def _fake_static(x: torch.Tensor, threshold: float) -> torch.Tensor:
    step = max(threshold, 1e-12) / 127.0
    return torch.clamp(torch.round(x / step), -127, 127) * step


def _fake_dynamic(x: torch.Tensor) -> torch.Tensor:
    step = x.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(x / step) * step


def candidate_errors(rows: torch.Tensor, weight: torch.Tensor, thresholds: list[float]) -> torch.Tensor:
    """Squared output errors ||q8(x) Wq^T - x W^T||^2 summed over `rows` (n, in), float64, one per
    static threshold, then one for dynamic per-token int8 (last)."""
    x = rows.detach().float()
    w = weight.detach().float()
    q, s = quantize_int8_rows(w)
    wq = q.float() * s[:, None]
    ref = x @ w.t()
    out = [float((_fake_static(x, t) @ wq.t() - ref).pow(2).sum()) for t in thresholds]
    out.append(float((_fake_dynamic(x) @ wq.t() - ref).pow(2).sum()))
    return torch.tensor(out, dtype=torch.float64)


def thresholds_for(observer_threshold: float, max_abs: float) -> list[float]:
    """The observer's threshold followed by the grid's fractions of max |x|."""
    return [observer_threshold] + [max_abs * r for r in GRID]


def choose_threshold(thresholds: list[float], errors: torch.Tensor) -> tuple[float, float]:
    """(the threshold with the smallest error, its error / the dynamic error) from `candidate_errors`
    (summed over ranks by the caller when distributed).

    >>> choose_threshold([6.0, 3.0], torch.tensor([4.0, 2.0, 1.0]))
    (3.0, 2.0)
    """
    best = int(torch.argmin(errors[:-1]))
    dynamic = float(errors[-1])
    ratio = float(errors[best]) / dynamic if dynamic > 0 else (1.0 if float(errors[best]) == 0 else float("inf"))
    return thresholds[best], ratio


class RowSampler:
    """Keeps up to `per_batch` evenly strided rows (..., in) -> (k, in) of each batch a layer sees."""

    def __init__(self, per_batch: int):
        self.per_batch = max(1, per_batch)
        self.rows_: list[torch.Tensor] = []

    def update(self, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1]).float()
        stride = max(1, -(-flat.shape[0] // self.per_batch))
        self.rows_.append(flat[::stride][: self.per_batch].clone())

    def rows(self) -> torch.Tensor:
        return torch.cat(self.rows_) if self.rows_ else torch.zeros(0, 0)
