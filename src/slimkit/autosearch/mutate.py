"""Local steps around the best candidate so far, interleaved with the sampler's proposals: the
sampler explores the families, the steps push the incumbent a little further (more sparsity,
fewer bits) while it stays within the budget.

>>> mutate({"sparsity": 0.95, "bits": 4}, dists, random.Random(0))
{'sparsity': 0.9561, 'bits': 3}
"""

from __future__ import annotations

import math
import random
from typing import Any


def mutate(params: dict[str, Any], distributions: dict[str, Any], rng: random.Random, scale: float = 0.06,
           switch: float = 0.1) -> dict[str, Any]:
    """A copy of `params` with one to three of them moved: floats by about `scale` of their range
    (on a log scale for log distributions), integers by one step, a category changed with
    probability `switch`. Values stay inside their optuna distributions."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = dict(params)
    names = [n for n in params if n in distributions]
    if not names:
        return out
    for name in rng.sample(names, k=min(len(names), rng.randint(1, 3))):
        d, value = distributions[name], params[name]
        if isinstance(d, FloatDistribution):
            lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
            x = (math.log(value) if d.log else value) + rng.gauss(0, scale) * (hi - lo)
            x = min(hi, max(lo, x))
            out[name] = math.exp(x) if d.log else x
        elif isinstance(d, IntDistribution):
            step = d.step or 1
            out[name] = min(d.high, max(d.low, value + rng.choice((-step, step))))
        elif isinstance(d, CategoricalDistribution) and rng.random() < switch:
            out[name] = rng.choice([c for c in d.choices if c != value] or [value])
    return out
