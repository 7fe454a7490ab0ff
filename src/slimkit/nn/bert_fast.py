"""A leaner bf16 inference forward for BERT-style encoder layers whose linears are `Int8Linear`.

When an int8 model computes in bf16 (`compute_dtype` "auto" on CPUs with AMX / AVX-512 BF16,
or "bfloat16"), each `Int8Linear` is a bf16 matmul on its dequantized weight (W8A16) and the
rest of a BERT layer is Hugging Face's eager code: three separate query / key / value matmuls,
permute copies, the attention softmax in bf16, bias, GELU and residual adds as separate passes.
`install_fast_layers` gives every recognised layer a forward that computes the same function
with fewer, larger kernels, exact up to bf16 rounding:

- query, key and value in one matmul on the three weights concatenated (384 -> 1152 in MiniLM);
- attention as one `baddbmm` (scores + padding mask, kept to one row per sequence instead of
  HF's (length x length) per head), softmax in fp32 (closer to fp32 than HF's bf16 softmax), one
  `bmm` (faster than `scaled_dot_product_attention` at short lengths: docs/notes/runtime-choices.md);
- every matmul through oneDNN (`torch.ops.mkldnn._linear_pointwise`) on weights packed once,
  with GELU fused into the intermediate matmul and the residual add into the two output matmuls
  (plain `F.linear` where oneDNN is missing).

Nothing else changes: the module tree, the state dict and the .slim file are the same, and every
call the fast path does not cover runs Hugging Face's own forward - fp32 activations (the
integer `_int_mm` path), gradients, training mode, caches, cross-attention, hooks on the
sub-modules (e.g. `output_attentions` recording), fp16. `SLIMKIT_FAST_LAYERS=0` turns it off.

Opt-in, not exact at padded positions: `skip_padding(model)` (or SLIMKIT_SKIP_PADDING=1) runs the
per-token work on real tokens only; padded positions' outputs are then zeros.

>>> install_fast_layers(model)       # number of layers that got the fast forward
6
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from slimkit.io.bases import register_after_load
from slimkit.nn.quant_linear import Int8Linear, _DecodeCache

log = logging.getLogger("slimkit")

FAST_ENV = "SLIMKIT_FAST_LAYERS"
UNPAD_ENV = "SLIMKIT_SKIP_PADDING"
_MARK = "_slimkit_fast_layer"
_CACHE = "_slimkit_fast_cache"
_UNPAD = "_slimkit_skip_padding"
_PATHS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
          "intermediate.dense", "output.dense")


def _sub(module: nn.Module, path: str) -> object:
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _exact_gelu(act: object) -> bool:
    if isinstance(act, nn.GELU):
        return act.approximate == "none"
    return type(act).__name__ == "GELUActivation" and getattr(act, "act", None) is F.gelu


def recognised(layer: nn.Module) -> bool:
    """Whether `layer` is a BERT-style encoder layer (self-attention, LayerNorm after the residual,
    exact-GELU FFN) whose six linears are all `Int8Linear`.

    >>> recognised(model.encoder.layer[0])      # an int8 MiniLM
    True
    """
    if not all(isinstance(_sub(layer, p), Int8Linear) for p in _PATHS):
        return False
    attn = layer.attention.self
    heads, size = getattr(attn, "num_attention_heads", None), getattr(attn, "attention_head_size", None)
    plain = (not getattr(layer, "is_decoder", True) and not getattr(layer, "add_cross_attention", True)
             and getattr(layer, "chunk_size_feed_forward", 1) == 0
             and not getattr(layer.attention, "is_cross_attention", True)
             and getattr(attn, "position_embedding_type", "absolute") == "absolute"
             and not getattr(attn, "is_causal", False))
    shapes = (isinstance(heads, int) and isinstance(size, int) and heads * size == attn.query.out_features
              and attn.key.out_features == attn.value.out_features == attn.query.out_features)
    norms = all(type(_sub(layer, p)) is nn.LayerNorm for p in ("attention.output.LayerNorm", "output.LayerNorm"))
    return plain and shapes and norms and _exact_gelu(getattr(layer.intermediate, "intermediate_act_fn", None))


@register_after_load
def install_fast_layers(model: nn.Module) -> int:
    """Give every `recognised` layer of `model` the fast bf16 forward (idempotent); returns how
    many layers have it. Does nothing when SLIMKIT_FAST_LAYERS=0.

    >>> install_fast_layers(sk.load("minilm-int8.slim"))
    6
    """
    if os.environ.get(FAST_ENV, "1") == "0":
        return 0
    count = 0
    for layer in model.modules():
        if _MARK not in layer.__dict__:
            if not recognised(layer):
                continue
            layer.forward = _FastForward(layer)
            layer.__dict__[_MARK] = True
            layer.__dict__[_CACHE] = _Packed()
            layer.__dict__[_UNPAD] = os.environ.get(UNPAD_ENV) == "1"
        count += layer.__dict__[_MARK] is True
    return count


class _FastForward:
    """A fast layer's `forward` (an object rather than a bound method, so the layer still pickles
    and deep-copies: both rebind it to the copy)."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    def __call__(self, *args: object, **kwargs: object) -> torch.Tensor:
        return _fast_forward(self.layer, *args, **kwargs)


def _bypassed(layer: nn.Module) -> list[nn.Module]:
    subs = [layer.attention, layer.attention.self, layer.attention.output, layer.attention.output.LayerNorm,
            layer.intermediate, layer.output, layer.output.LayerNorm]
    return subs + [_sub(layer, p) for p in _PATHS]


def _usable(layer: nn.Module, x: torch.Tensor, mask: object, extra: tuple, kwargs: dict) -> bool:
    if x.dtype is not torch.bfloat16 or x.device.type != "cpu" or x.dim() != 3 or layer.training:
        return False
    if any(e is not None for e in extra) or kwargs.get("past_key_values") is not None:
        return False
    if torch.is_grad_enabled() and any(p.requires_grad for p in layer.parameters()):
        return False
    if mask is not None and not (isinstance(mask, torch.Tensor) and mask.dim() == 4):
        return False
    if _collector() is not None and any(k != "hidden_states" for k in _collector().get() or ()):
        return False  # HF is recording sub-module outputs (output_attentions=True)
    return not any(_foreign(h) for m in _bypassed(layer) for h in (*m._forward_hooks.values(),
                                                                    *m._forward_pre_hooks.values()))


def _foreign(hook: object) -> bool:
    """Any hook but HF's output-capturing ones (installed for good, idle unless recording)."""
    return not getattr(hook, "__qualname__", "").endswith("output_capturing_hook")


@functools.lru_cache(maxsize=1)
def _collector() -> object:
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:
        return None
    return _active_collector


def _fast_forward(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  encoder_hidden_states: torch.Tensor | None = None,
                  encoder_attention_mask: torch.Tensor | None = None, cache: object = None,
                  **kwargs: object) -> torch.Tensor:
    """The layer's forward: the fast path where `_usable`, else the class's own forward."""
    extra = (encoder_hidden_states, encoder_attention_mask, cache)
    if self.__dict__.get(_MARK) is True and _usable(self, hidden_states, attention_mask, extra, kwargs):
        try:
            return _fast(self, hidden_states, attention_mask)
        except Exception as exc:  # noqa: BLE001 - a kernel this build lacks: HF's forward from now on
            self.__dict__[_MARK] = "off"
            log.warning("fast BERT layer off, using the Hugging Face forward: %s: %s", type(exc).__name__,
                        (str(exc).strip().splitlines() or [""])[0][:160])
    return type(self).forward(self, hidden_states, attention_mask, encoder_hidden_states,
                              encoder_attention_mask=encoder_attention_mask, cache=cache, **kwargs)


def _fast(self: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    w = self.__dict__[_CACHE].get(self, hidden_states.dtype)
    attn = self.attention.self
    batch, length, width = hidden_states.shape
    heads, size = attn.num_attention_heads, attn.attention_head_size
    attention_mask = _per_key(attention_mask)
    rows = _real_rows(attention_mask) if self.__dict__.get(_UNPAD) else None
    x = hidden_states.reshape(batch * length, width)
    x = x if rows is None else x.index_select(0, rows)
    qkv = _scatter(_linear(x, w["qkv"]), rows, batch * length)
    qkv = qkv.view(batch, length, 3, heads, size).permute(2, 0, 3, 1, 4)
    ctx = _attention(qkv, attention_mask, attn.scaling).reshape(batch * length, heads * size)
    ctx = ctx if rows is None else ctx.index_select(0, rows)
    h1 = self.attention.output.LayerNorm(_linear(ctx, w["out"], residual=x))
    inner = _linear(h1, w["up"], gelu=True)
    out = self.output.LayerNorm(_linear(inner, w["down"], residual=h1))
    return _scatter(out, rows, batch * length).view(batch, length, width)


def skip_padding(model: nn.Module, enable: bool = True) -> int:
    """Opt in (or out) to running the per-token work of fast layers on real tokens only
    ("remove padding", as in Effective Transformer): the matmuls, LayerNorms and GELU skip padded
    positions; attention still sees every key. Real tokens' outputs are unchanged (up to bf16
    rounding); padded positions' outputs become zeros instead of Hugging Face's values (which
    mean pooling with the attention mask and the [CLS] token never read). Returns how many
    layers it applies to.

    >>> skip_padding(model)            # e.g. 32 sentences x 40 tokens, 1/3 padding: ~1/4 less work
    6
    """
    count = install_fast_layers(model)
    for layer in model.modules():
        if _MARK in layer.__dict__:
            layer.__dict__[_UNPAD] = bool(enable)
    return count


def _per_key(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A 4D mask as (batch, 1, 1, length) when it is the same for every query (a padding mask, as
    HF builds for encoders), else unchanged."""
    if mask is None or mask.shape[1] != 1 or mask.shape[2] == 1:
        return mask
    if mask.stride(2) == 0 or bool((mask == mask[:, :, :1]).all()):
        return mask[:, :, :1]
    return mask


def _real_rows(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Flat indices of the real tokens of a padding mask (batch, 1, 1, length), or None when every
    token is real or the mask varies over queries (not a padding mask)."""
    if mask is None or mask.shape[1] != 1 or mask.shape[2] != 1:
        return None
    keep = mask[:, 0, 0, :] if mask.dtype is torch.bool else mask[:, 0, 0, :] == 0
    if bool(keep.all()):
        return None
    return keep.reshape(-1).nonzero().squeeze(1)


def _scatter(rows_out: torch.Tensor, rows: torch.Tensor | None, total: int) -> torch.Tensor:
    """`rows_out` placed at `rows` of a (total, width) zero tensor (itself when rows is None)."""
    if rows is None:
        return rows_out
    full = rows_out.new_zeros(total, rows_out.shape[1])
    return full.index_copy_(0, rows, rows_out)


def _attention(qkv: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v for `qkv` of shape (3, batch, heads, length, head size);
    returns (batch, length, heads, head size). Scores in bf16 as in HF's eager attention, the
    softmax in fp32; a bool mask keeps the True positions, a float mask is added."""
    _, batch, heads, length, size = qkv.shape
    q, k, v = qkv.reshape(3, batch * heads, length, size).unbind(0)
    if mask is None:
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(scale)
    else:
        if mask.dtype is torch.bool:
            mask = torch.zeros(mask.shape, dtype=qkv.dtype).masked_fill_(~mask, torch.finfo(qkv.dtype).min)
        rows = 1 if mask.shape[2] == 1 or mask.stride(2) == 0 else length
        mask = mask[:, :, :rows].to(qkv.dtype).expand(batch, heads, rows, length).reshape(batch * heads, rows, length)
        scores = torch.baddbmm(mask, q, k.transpose(1, 2), alpha=scale)
    probs = torch.softmax(scores, -1, dtype=torch.float32).to(qkv.dtype)
    return torch.bmm(probs, v).view(batch, heads, length, size).transpose(1, 2)


class _Packed(_DecodeCache):
    """The layer's weights in the compute dtype, packed once for oneDNN (rebuilt when a source
    buffer changes, as `_DecodeCache`). Dropped, not copied, by `copy.deepcopy` and pickling:
    oneDNN-packed tensors do not pickle, so the copy packs its own on first use."""

    def __deepcopy__(self, memo: dict) -> _Packed:
        return _Packed()

    def __getstate__(self) -> dict:
        return {"key": None, "value": None}

    def get(self, layer: nn.Module, dtype: torch.dtype) -> dict:
        linears = [_sub(layer, p) for p in _PATHS]
        sources = [t for m in linears for t in (m.qweight, m.scale, m.bias)]
        return self.get_tensors(sources, lambda: _pack(linears, dtype), dtype)


def _pack(linears: list[Int8Linear], dtype: torch.dtype) -> dict:
    with torch.no_grad():
        parts = [m._low_weights(dtype) for m in linears]
        zeros = [torch.zeros(m.out_features, dtype=dtype) for m in linears]
        biases = [b if b is not None else z for (_, b), z in zip(parts, zeros, strict=True)]
        qkv = (torch.cat([p[0] for p in parts[:3]]).contiguous(), torch.cat(biases[:3]))
        pairs = {"qkv": qkv, "out": (parts[3][0], biases[3]), "up": (parts[4][0], biases[4]),
                 "down": (parts[5][0], biases[5])}
        return {k: _Weight(wt, b) for k, (wt, b) in pairs.items()}


class _Weight:
    """A bf16 weight and bias, with the oneDNN-packed weight when oneDNN takes it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight, self.bias = weight, bias
        self.packed = _reorder(weight) if _onednn() else None


@functools.lru_cache(maxsize=1)
def _onednn() -> bool:
    """Whether oneDNN's fused linear runs here and matches `F.linear` (probed once on a tiny case)."""
    try:
        x = torch.randn(3, 8, dtype=torch.bfloat16)
        w, b = torch.randn(4, 8, dtype=torch.bfloat16), torch.randn(4, dtype=torch.bfloat16)
        y = torch.ops.mkldnn._linear_pointwise(x, _reorder(w), b, "none", [], "")
        ok = torch.allclose(y.float(), F.linear(x, w, b).float(), atol=0.1, rtol=0.05)
    except Exception as exc:  # noqa: BLE001 - no oneDNN fused linear in this build: plain F.linear
        log.info("fast BERT layers: oneDNN fused linear unavailable (%s); using F.linear", type(exc).__name__)
        return False
    return ok


def _reorder(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, 1024)


def _linear(x: torch.Tensor, w: _Weight, residual: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """x @ W^T + b, then GELU or + residual, fused by oneDNN when packed."""
    if w.packed is not None:
        if residual is not None:
            return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w.packed, w.bias, "add")
        return torch.ops.mkldnn._linear_pointwise(x, w.packed, w.bias, "gelu" if gelu else "none", [],
                                                  "none" if gelu else "")
    y = F.linear(x, w.weight, w.bias)
    if residual is not None:
        return y.add_(residual)
    return F.gelu(y) if gelu else y
