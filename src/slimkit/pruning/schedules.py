"""Sparsity schedules: how sparse the model should be at each pruning step.

>>> polynomial_schedule(0.9, steps=4)
[0.5203125, 0.7875, 0.8859375, 0.9]
"""

from __future__ import annotations


def polynomial_schedule(final: float, steps: int, initial: float = 0.0, power: int = 3) -> list[float]:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) * (1 - t / n) ** power, for t = 1..n.

    Prunes fast while many redundant weights remain and slowly near the target.
    """
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    return [final + (initial - final) * (1 - t / steps) ** power for t in range(1, steps + 1)]


def event_iterations(total: int, steps: int, end_fraction: float) -> list[int]:
    """Iterations (0-based, increasing) at which `steps` pruning events happen, spread evenly over
    the first `end_fraction` of `total` training iterations; the first event is at iteration 0."""
    if total <= 0:
        return [0] * steps
    last = max(0, min(total - 1, round(end_fraction * total) - 1))
    if steps == 1:
        return [0]
    return [round(i * last / (steps - 1)) for i in range(steps)]
