"""A language-model head tied to the input embedding: it multiplies by the embedding's table and stores nothing.

Hugging Face causal LMs with `tie_word_embeddings` (GPT-2, Qwen2, SmolLM2, ...) use one matrix twice:
as the token embedding and, transposed, as the output projection (`lm_head.weight is
embed_tokens.weight`). Compressing the two modules separately would store the table twice and break
the tie. slimkit builds such a model with a `TiedLMHead` in place of `lm_head`: it holds no tensor
and, at each call, reads the *current* input embedding by its dotted name (whatever a method made of
it: a float `nn.Embedding`, a `QuantEmbedding`, a k-means palette), so the table is compressed once,
stored once, and the head always computes with exactly what the embedding decodes to.

The head finds the embedding through the model's root, bound with `bind(root)` when the model is
built and again after a .slim file is loaded (a registered after-load step).

>>> head = TiedLMHead(576, 49152, source="model.embed_tokens").bind(model)   # doctest: +SKIP
>>> logits = head(hidden_states)                                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

import slimkit.nn.nbits as nbits
import slimkit.nn.torch_pack as torch_pack
from slimkit.core.torch_utils import version_of
from slimkit.io.bases import register_after_load
from slimkit.nn.kernels import KernelChoice, current_mode, rel_err, settled_kernel
from slimkit.surgery.specs import register_module

ROOT_KEY = "_tied_root"


class _Codes(NamedTuple):
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    bits: int

    @property
    def kind(self) -> tuple:
        return (*self.codes.shape, self.bits, self.scale.shape[1], self.zero is not None)


@register_module
class TiedLMHead(nn.Module):
    """`logits = x @ E^T` with `E` the (decoded) weight of the embedding at dotted path `source`."""

    slim_type = "TiedLMHead"

    def __init__(self, in_features: int, out_features: int, source: str):
        super().__init__()
        if not isinstance(source, str) or not source:
            raise ValueError("a tied head needs the dotted name of its embedding (source)")
        self.in_features, self.out_features, self.source = in_features, out_features, source
        self.__dict__["_low"] = (None, None)   # (key, table in a low-precision dtype)

    def bind(self, root: nn.Module) -> TiedLMHead:
        """Read the embedding from `root` (kept outside the module tree: no cycle in `modules()`)."""
        self.__dict__[ROOT_KEY] = root
        return self

    def embedding(self) -> nn.Module:
        root = self.__dict__.get(ROOT_KEY)
        if root is None:
            raise RuntimeError(f"tied LM head is not bound to its model (source {self.source!r}); "
                               "call bind(model) or bind_tied_heads(model)")
        return root.get_submodule(self.source)

    def table(self) -> torch.Tensor:
        """The embedding's table as it computes now: (out_features, in_features), decoded if compressed."""
        emb = self.embedding()
        decode = getattr(emb, "dequantized_weight", None)
        weight = decode() if callable(decode) else getattr(emb, "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (self.out_features, self.in_features):
            raise RuntimeError(f"the embedding {self.source!r} of a tied LM head has no "
                               f"{self.out_features}x{self.in_features} weight")
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            kernel = settled_kernel(self, x.numel() // self.in_features) if x.dtype is torch.float32 else None
            if kernel is not None:   # the kernel eager calls of this shape settled on
                return kernel(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)
        codes = self._codes() if x.dtype is torch.float32 else None
        if codes is not None and current_mode() == "auto" and x.numel() and not (
                x.requires_grad and torch.is_grad_enabled()):
            x2 = x.reshape(-1, self.in_features)
            choice = self.__dict__.get("_kernel_choice")
            if choice is None or choice.kind[1:] != codes.kind:
                lean = self._lean_kernels(codes)
                choice = self.__dict__["_kernel_choice"] = KernelChoice(
                    ("TiedLMHead", *codes.kind), {"dense": self._dense, **{n: getattr(self, f"_{n}") for n in lean}},
                    lean=lean, decoded=("dense",), release=self._release)
            return choice.run(x2, lambda: self._reference(x2)).reshape(*x.shape[:-1], self.out_features)
        return self._dense(x)

    def _codes(self) -> _Codes | None:
        """The embedding's codes when a kernel can multiply by them (a QuantEmbedding on the CPU:
        MatMulNBits or torch's int4pack / int8pack, `_lean_kernels`)."""
        emb = self.embedding()
        zero, scale, codes = (getattr(emb, "zero", None), getattr(emb, "scale", None),
                              getattr(emb, "qweight", None))
        bits = getattr(emb, "bits", None)
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8 or not isinstance(bits, int) \
                or codes.device.type != "cpu" or tuple(codes.shape) != (self.out_features, self.in_features) \
                or not isinstance(scale, torch.Tensor) or scale.dim() != 2 or scale.shape[0] != self.out_features \
                or self.in_features % scale.shape[1]:
            return None
        codes = _Codes(codes, scale, zero, bits)
        return codes if self.out_features * self.in_features >= nbits.MIN_WEIGHTS and self._lean_kernels(codes) \
            else None

    def _lean_kernels(self, codes: _Codes) -> tuple[str, ...]:
        group = self.in_features // codes.scale.shape[1]
        found = []
        if torch_pack.supports_int4(self.out_features, self.in_features, codes.bits, group) or \
                torch_pack.supports_int8(codes.bits, codes.zero is None, codes.scale.shape[1] == 1):
            found.append("pack")
        if nbits.supports(self.out_features, self.in_features, codes.bits, group):
            found.append("nbits")
        return tuple(found)

    def _nbits(self, x2: torch.Tensor) -> torch.Tensor:
        return self._kernel("_nbits_cache", lambda c: nbits.NBitsMatMul(c.codes, c.scale, c.zero, c.bits))(x2)

    def _pack(self, x2: torch.Tensor) -> torch.Tensor:
        """torch's int4pack (1-4-bit codes) or int8pack (symmetric 5-8-bit rows) kernel, bf16 activations."""
        def build(c: _Codes):
            if c.bits <= 4:
                return torch_pack.Int4PackMatMul(c.codes, c.scale, c.zero, c.bits)
            return torch_pack.Int8PackMatMul(torch_pack.centered_int8(c.codes, c.bits), c.scale)
        return self._kernel("_pack_cache", build)(x2)

    def _kernel(self, slot: str, build):
        """The kernel in `slot`, rebuilt from the embedding's codes when they changed."""
        codes = self._codes()
        cache = self.__dict__.setdefault(slot, {"key": None, "kernel": None})
        key = tuple((id(t), version_of(t)) for t in (codes.codes, codes.scale, codes.zero) if t is not None)
        if cache["key"] != key or cache["kernel"] is None:
            cache["kernel"] = None
            cache["kernel"], cache["key"] = build(codes), key
        return cache["kernel"]

    def _reference(self, x2: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The exact logits (decoded table, fp32 activations) and the error a kernel may have: twice
        that of int8 activations per token."""
        with torch.no_grad():
            table = self.table()
            ref = F.linear(x2, table)
            amax = x2.abs().amax(1, keepdim=True).clamp_min(1e-12) / 127.0
            emulated = F.linear(torch.round(x2 / amax).mul_(amax), table)
            return ref, 2.0 * rel_err(emulated, ref) + 1e-5

    def _release(self, in_use: set[str]) -> None:
        """Drop the decoded table when only the codes are read, and the packed codes when unused."""
        if "dense" not in in_use:
            cache = getattr(self.embedding(), "_cache", None)
            if cache is not None and hasattr(cache, "value"):
                cache.value = None
        for name in ("nbits", "pack"):
            if name not in in_use and f"_{name}_cache" in self.__dict__:
                self.__dict__[f"_{name}_cache"]["kernel"] = None

    def runtime_state(self) -> dict:
        """What the head runs per shape bucket, and the bytes of its packed codes (a decoded table is
        the embedding's and counted there)."""
        choice = self.__dict__.get("_kernel_choice")
        kernels = [self.__dict__.get(slot, {}).get("kernel") for slot in ("_nbits_cache", "_pack_cache")]
        return {"choices": choice.describe() if choice else {"all": "dense"},
                "cache_bytes": sum(k.nbytes for k in kernels if k is not None)}

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.table()
        if x.dtype != weight.dtype:   # bf16 / fp16 activations: the table cast once, kept while unchanged
            version = 0 if weight.is_inference() else weight._version   # inference tensors never change
            key = (id(weight), version, x.dtype, torch.is_inference_mode_enabled())
            cached_key, low = self.__dict__["_low"]
            if cached_key != key:
                low = weight.detach().to(x.dtype)
                self.__dict__["_low"] = (key, low)
            weight = low
        if torch.onnx.is_in_onnx_export():   # E @ x^T: no transposed copy of the table folded into the graph
            return torch.matmul(weight, x.transpose(-1, -2)).transpose(-1, -2)
        return F.linear(x, weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, tied to {self.source}"

    def slim_spec(self) -> dict:
        return {"in": self.in_features, "out": self.out_features, "source": self.source}

    @classmethod
    def from_slim_spec(cls, spec: dict) -> TiedLMHead:
        sizes = [spec["in"], spec["out"]]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in sizes):
            raise ValueError("in and out must be positive integers")
        if not isinstance(spec["source"], str):
            raise ValueError("source must be a module name")
        return cls(spec["in"], spec["out"], spec["source"])


@register_after_load
def bind_tied_heads(model: nn.Module) -> nn.Module:
    """Bind every `TiedLMHead` in `model` to `model` (after building or loading it); returns it."""
    for module in model.modules():
        if isinstance(module, TiedLMHead):
            module.bind(model)
    return model


def tied_head_for(model: nn.Module, head: str, source: str) -> TiedLMHead | None:
    """A `TiedLMHead` bound to `model` to stand for the Linear at `head`, whose weight is the weight of the
    embedding at `source`; None when they are not tied or the head has a bias (it stays as it is)."""
    linear, emb = model.get_submodule(head), model.get_submodule(source)
    weight = getattr(linear, "weight", None)
    if type(linear) is not nn.Linear or linear.bias is not None or weight is None \
            or weight is not getattr(emb, "weight", None):
        return None
    tied = TiedLMHead(linear.in_features, linear.out_features, source).bind(model)
    tied.train(linear.training)
    return tied
