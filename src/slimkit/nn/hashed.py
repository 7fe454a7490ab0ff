"""`HashedLinear`: a Linear layer whose weight matrix is read from K real parameters by hashing.

>>> layer = HashedLinear(64, 300, buckets=2400, seed=3)      # 1/8 of the 19,200 weights
>>> layer(torch.randn(2, 64)).shape
torch.Size([2, 300])

State: `weight` (K,) real parameters and `bias` (out,). The hash indices and signs are
recomputed from (out, in, K, seed) on first use and cached outside the state dict (they are
not buffers, so the module rebuilds on the meta device and loads with `assign=True`).

Runtime: the virtual (out, in) weight is built once - at `load`, or at the first call - and kept
(4 bytes per virtual weight, listed by `slimkit.nn.kernels.runtime_report`), so a hashed layer
runs at the speed of a dense Linear. It is rebuilt when `weight` changes (training updates it in
place) and, under gradients, recomputed each call so the K real parameters get their gradients.
Kernel mode "compact" (`SLIMKIT_KERNELS=compact`) keeps no copy and gathers on every call.
"""

from __future__ import annotations

import torch
from torch import nn

from slimkit.core.torch_utils import version_of
from slimkit.io.bases import register_after_load
from slimkit.nn.hashing import MAX_SEED, hash_indices
from slimkit.nn.kernels import current_mode
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
        if current_mode() == "compact" or (torch.is_grad_enabled() and self.weight.requires_grad):
            self.__dict__.pop("_virtual", None)
            return nn.functional.linear(x, self.virtual_weight(), self.bias)
        return nn.functional.linear(x, self.built_weight(), self.bias)

    def built_weight(self) -> torch.Tensor:
        """The virtual weight, built once and kept until `weight` is replaced or changed. The hash
        indices it is built from are not kept (they would take 3x the weight's memory)."""
        weight = self._parameters["weight"]
        key = (id(weight), version_of(weight))
        cached = self.__dict__.get("_virtual")
        if cached is None or cached[0] != key:
            self.__dict__.pop("_virtual", None)
            cache = self.__dict__.get("_hash_cache", {})
            index, sign = cache.get(weight.device) or hash_indices(
                self.out_features, self.in_features, self.buckets, self.seed)
            index, sign = torch.as_tensor(index, device=weight.device), torch.as_tensor(sign, device=weight.device)
            with torch.no_grad():
                built = weight[index]
                built.mul_(sign.to(weight.dtype))
                cached = self.__dict__["_virtual"] = (key, built)
        return cached[1]

    def runtime_bytes(self) -> int:
        """The most memory this layer allocates to run, at its peak: the hash indices and signs
        (12 bytes per virtual weight) and the virtual weight (4 bytes) while it is built."""
        return 16 * self.in_features * self.out_features

    def runtime_state(self) -> dict:
        """Whether the virtual weight is built, and the bytes it holds."""
        cached = self.__dict__.get("_virtual")
        held = 0 if cached is None else cached[1].numel() * cached[1].element_size()
        return {"choices": {"all": "dense" if cached is not None else "gather"}, "cache_bytes": held}

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


@register_after_load
def build_hashed(model: nn.Module) -> int:
    """Build every hashed layer's virtual weight of a loaded model (unless kernel mode is "compact");
    returns the number built."""
    if current_mode() == "compact":
        return 0
    layers = [m for m in model.modules() if isinstance(m, HashedLinear) and not m.weight.is_meta]
    for layer in layers:
        layer.built_weight()
    return len(layers)
