"""A quantized `nn.Embedding`: row-wise (or group-wise) 1-8-bit codes, decoded per lookup.

Only the looked-up rows are decoded, so a 30k-row vocabulary costs nothing extra at run time.

The embedding is where a model's activations start, so it also sets the dtype the rest of the
model computes in: `compute_dtype` "float32" (the default), "bfloat16", "float16", or "auto"
(bfloat16 where the CPU multiplies bf16 natively, else float32; decided when the model runs, so a
loaded file picks the fast path of the machine it runs on). `model.to(torch.bfloat16)`,
`.half()` and `.float()` set it too.

>>> emb = QuantEmbedding.from_embedding(nn.Embedding(100, 16), bits=8)
>>> emb(torch.tensor([[1, 2, 3]])).shape
torch.Size([1, 3, 16])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.nn.quant_linear import (
    SCALE_DTYPES,
    _CodesMixin,
    _size,
    cast_of,
    check_compute_dtype,
    resolve_compute_dtype,
)
from slimkit.nn.quant_math import Granularity, rtn_quantize
from slimkit.surgery.specs import register_module


@register_module
class QuantEmbedding(_CodesMixin, nn.Module):
    """Embedding table stored as codes with one scale per row (or per group of a row)."""

    slim_type = "QuantEmbedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 bits: int = 8, symmetric: bool = True,
                 granularity: Granularity | str = Granularity.CHANNEL, group_size: int = 128,
                 scale_dtype: str = "float32", compute_dtype: str = "float32"):
        super().__init__()
        self.compute_dtype = check_compute_dtype(compute_dtype)
        if Granularity(granularity) is Granularity.TENSOR:
            raise ValueError("embeddings are quantized per row or per group, not per tensor")
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_codes(num_embeddings, embedding_dim, bits, symmetric, granularity, group_size, scale_dtype)

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, bits: int = 8, symmetric: bool = True,
                       granularity: Granularity | str = Granularity.CHANNEL, group_size: int = 128,
                       mse: bool = False, scale_dtype: str = "float32",
                       compute_dtype: str = "float32") -> QuantEmbedding:
        new = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx, bits, symmetric, granularity,
                  group_size, scale_dtype, compute_dtype).to(emb.weight.device)
        dtype = SCALE_DTYPES[scale_dtype]
        qw = rtn_quantize(emb.weight, bits, symmetric, granularity, group_size, mse, dtype)
        new._load_quantized(qw)
        return new

    @property
    def weight(self) -> torch.Tensor:
        """The whole table, decoded (for code that reads `.weight`; lookups never need it)."""
        return self._decode_uncached()

    def dequantized_weight(self) -> torch.Tensor:
        """The whole table, decoded once and kept while the codes are unchanged (a tied LM head
        multiplies by it at every call: `slimkit.nn.tied_head`)."""
        return self._decode_all()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        groups = self.scale.shape[1]
        codes = F.embedding(ids, self.qweight).float()
        codes = codes.reshape(*ids.shape, groups, self.embedding_dim // groups)
        scale = F.embedding(ids, self.scale).float().unsqueeze(-1)
        if self.zero is None:
            codes = codes.sub_(2 ** (self.bits - 1))
        else:
            codes = codes.sub_(F.embedding(ids, self.zero).float().unsqueeze(-1))
        out = codes.mul_(scale).reshape(*ids.shape, self.embedding_dim)
        return out.to(resolve_compute_dtype(self.compute_dtype))

    def _apply(self, fn, recurse: bool = True):
        """A float cast of the model (`.to(torch.bfloat16)`, `.half()`, `.float()`) becomes the
        compute dtype; device moves leave it alone."""
        cast = cast_of(fn)
        if cast is not None:
            self.compute_dtype = cast
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        mode = self.compute_dtype
        if mode == "auto":
            mode = f"auto ({str(resolve_compute_dtype(mode)).removeprefix('torch.')} here)"
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._codes_repr()}, compute_dtype={mode}"

    def slim_spec(self) -> dict:
        spec = {"num": self.num_embeddings, "dim": self.embedding_dim, "padding_idx": self.padding_idx,
                **self._codes_spec()}
        # written only when set, so files of the default float32 runtime stay byte-identical
        return spec if self.compute_dtype == "float32" else {**spec, "compute_dtype": self.compute_dtype}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> QuantEmbedding:
        pad = spec["padding_idx"]
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int)):
            raise ValueError("padding_idx must be an integer or null")
        compute = check_compute_dtype(spec.get("compute_dtype", "float32"), "compute_dtype of an embedding")
        return cls(_size(spec, "num"), _size(spec, "dim"), pad, **cls._codes_args(spec), compute_dtype=compute)
