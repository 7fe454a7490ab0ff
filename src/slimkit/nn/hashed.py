"""`HashedLinear`: a Linear layer whose weight matrix is read from K real parameters by hashing.

>>> layer = HashedLinear(64, 300, buckets=2400, seed=3)      # 1/8 of the 19,200 weights
>>> layer(torch.randn(2, 64)).shape
torch.Size([2, 300])

State: `weight` (K,) real parameters and `bias` (out,). The hash indices and signs are
recomputed from (out, in, K, seed) on first use and cached outside the state dict (they are
not buffers, so the module rebuilds on the meta device and loads with `assign=True`).
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.nn.hashing import MAX_SEED, hash_indices
from slimkit.surgery import register_module


@register_module
class HashedLinear(nn.Module):
    """y = x @ V.T + b with virtual V[i, j] = sign[i, j] * weight[index[i, j]] (HashedNets)."""

    slim_type = "HashedLinear"

    def __init__(self, in_features: int, out_features: int, buckets: int, seed: int = 0,
                 bias: bool = True):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features),
                            ("buckets", buckets), ("seed", seed)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"HashedLinear: {name} must be an int, got {value!r}")
        if in_features < 1 or out_features < 1:
            raise ValueError(f"HashedLinear: sizes must be positive, got {in_features} x {out_features}")
        if not 1 <= buckets <= in_features * out_features:
            raise ValueError(f"HashedLinear: buckets must be in 1..{in_features * out_features} "
                             f"(the layer's size), got {buckets}")
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"HashedLinear: seed must be in 0..{MAX_SEED}, got {seed}")
        self.in_features, self.out_features = in_features, out_features
        self.buckets, self.seed = buckets, seed
        self.weight = nn.Parameter(torch.empty(buckets))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        if not self.weight.is_meta:
            bound = in_features ** -0.5
            nn.init.uniform_(self.weight, -bound, bound)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)

    def hashes(self, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, sign) tensors of shape (out, in), computed once per device."""
        device = device or self.weight.device
        cache = self.__dict__.setdefault("_hash_cache", {})
        if device not in cache:
            index, sign = hash_indices(self.out_features, self.in_features, self.buckets, self.seed)
            cache[device] = (torch.from_numpy(index).to(device), torch.from_numpy(sign).to(device))
        return cache[device]

    def virtual_weight(self) -> torch.Tensor:
        """The (out, in) weight matrix this layer computes with."""
        index, sign = self.hashes()
        return self.weight[index] * sign.to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.virtual_weight(), self.bias)

    def slim_spec(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "buckets": self.buckets,
                "seed": self.seed, "bias": self.bias is not None}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> HashedLinear:
        return cls(spec["in"], spec["out"], spec["buckets"], spec["seed"], bool(spec["bias"]))

    def extra_repr(self) -> str:
        size = self.in_features * self.out_features
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"buckets={self.buckets} (1/{size / self.buckets:.3g} of the weights), "
                f"seed={self.seed}, bias={self.bias is not None}")
