"""Low-bit matmuls on torch's own CPU kernels, for batch-1 decoding: `_weight_int4pack_mm_for_cpu`
(4-bit codes, one scale and offset per group of 32-256 inputs) and `_weight_int8pack_mm` (int8 codes,
one scale per output channel).

Both read the packed codes directly (half a byte or one byte per weight), so at batch 1, where a
language model's decoding is bound by the weight bytes it reads per token, they beat a matmul on the
decoded weight. Their fast CPU paths take bfloat16 activations only (with float32 or float16 ones they
run a reference loop 10-40x slower, measured by bench/decode_kernels.py on AVX2), so a kernel here
rounds its fp32 input to bf16, multiplies, and returns fp32. The codes are used exactly; the error is
that of bf16 activations plus the scales rounded to bf16 (and, for 4-bit asymmetric codes only, the
group offsets of the kernel's `(q - 8) * s + z`; other codes are shifted so that z is 0): about 3e-3
relative on a random layer, under the int8 activations that ONNX Runtime's
MatMulNBits uses (`slimkit.nn.nbits`), and within the bound a layer's kernel choice accepts
(`slimkit.nn.kernels`).

Every slimkit code layout of 1-4 bits maps onto the 4-bit kernel (codes in [0, 16), the zero point
folded into the offset) when the output count is a multiple of 16 and a group of 32, 64, 128 or 256
inputs divides its own; symmetric per-channel codes of 5-8 bits (and `Int8Linear`'s int8 weights) map
onto the int8 kernel.

>>> mm = Int4PackMatMul(codes, scale, zero, bits=4)   # codes (N, K) uint8, scale (N, groups)  # doctest: +SKIP
>>> y = mm(x)                                          # (rows, K) float32 -> (rows, N)        # doctest: +SKIP
"""

from __future__ import annotations

import functools

import torch

GROUPS = (256, 128, 64, 32)
ROWS_MULTIPLE = 16   # the 4-bit packing's tile of output channels
ACT_DTYPE = torch.bfloat16


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether this torch has both CPU kernels (checked once on a tiny layer)."""
    try:
        Int4PackMatMul(torch.zeros(16, 32, dtype=torch.uint8), torch.ones(16, 1), None, 4)(torch.zeros(1, 32))
        Int8PackMatMul(torch.zeros(16, 32, dtype=torch.int8), torch.ones(16))(torch.zeros(1, 32))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def int4_group(cols: int, group: int) -> int | None:
    """The kernel's group for `cols` inputs quantized in groups of `group` (`group == cols`: one scale
    per row): the largest of GROUPS dividing both (the layer's scale repeated over it), else None."""
    for g in GROUPS:
        if group % g == 0 and cols % g == 0:
            return g
    return None


def supports_int4(rows: int, cols: int, bits: int, group: int) -> bool:
    """Whether a (rows, cols) weight of `bits`-bit codes in groups of `group` maps onto the 4-bit kernel."""
    return 1 <= bits <= 4 and rows % ROWS_MULTIPLE == 0 and int4_group(cols, group) is not None and available()


def supports_int8(bits: int, symmetric: bool, per_channel: bool) -> bool:
    """Whether codes of `bits` bits map onto the int8 kernel: symmetric, one scale per output channel."""
    return 5 <= bits <= 8 and symmetric and per_channel and available()


def _bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    return None if bias is None else bias.detach().float().clone()


class Int4PackMatMul:
    """`y = x @ W^T (+ bias)` for `W = scale * (codes - zero)` (slimkit's affine layout, codes of 1-4
    bits) on `_weight_int4pack_mm_for_cpu`. `codes`: (N, K) uint8; `scale`: (N or 1, groups) float;
    `zero`: like `scale`, uint8, or None for symmetric codes (zero `2**(bits-1)`)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                 bias: torch.Tensor | None = None):
        rows, cols = codes.shape
        groups = scale.shape[-1]
        group = int4_group(cols, cols // groups) if cols % groups == 0 else None
        if group is None or rows % ROWS_MULTIPLE or not 1 <= bits <= 4:
            raise ValueError(f"no int4pack layout fits {rows}x{cols} {bits}-bit codes in {groups} groups")
        repeat = cols // group // groups
        s = scale.detach().float().expand(rows, groups).repeat_interleave(repeat, 1)
        z = torch.full_like(s, 2 ** (bits - 1)) if zero is None \
            else zero.detach().float().expand(rows, groups).repeat_interleave(repeat, 1)
        q = codes.detach().cpu().to(torch.int32)
        if zero is None or bits < 4:
            # torch's kernel computes (q - 8) * s + offset and slimkit's weight is s * (q - z): codes
            # moved to q - z + 8 still fit 4 bits here, and the offset is exactly 0
            q = q + (8 - z.to(torch.int32)).repeat_interleave(group, 1)
            z = torch.full_like(s, 8)
        # else (4-bit asymmetric) the offset s * (8 - z) is rounded to bf16 like the scale
        self.scale_offset = torch.stack([s.t(), (s * (8 - z)).t()], -1).to(ACT_DTYPE).contiguous()
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        self.group, self.shape = group, (rows, cols)
        self.bias = _bias(bias)
        self.nbytes = self.packed.numel() * self.packed.element_size() + self.scale_offset.numel() * 2

    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(ACT_DTYPE), self.packed, self.group,
                                                       self.scale_offset).float()
        return y if self.bias is None else y.add_(self.bias)


class Int8PackMatMul:
    """`y = x @ (codes * scale[:, None])^T (+ bias)` on `_weight_int8pack_mm`. `codes`: (N, K) int8;
    `scale`: (N,) or (N, 1) float."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        if codes.dtype is not torch.int8 or scale.numel() != codes.shape[0]:
            raise ValueError("int8pack needs int8 codes and one scale per output channel")
        self.codes = codes.detach().cpu().contiguous()
        self.scale = scale.detach().float().reshape(-1).to(ACT_DTYPE).contiguous()
        self.shape = tuple(codes.shape)
        self.bias = _bias(bias)
        shared = self.codes.data_ptr() == codes.data_ptr()   # a layer's own int8 buffer: no copy held
        self.nbytes = (0 if shared else self.codes.numel()) + self.scale.numel() * 2

    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        y = torch._weight_int8pack_mm(x2.to(ACT_DTYPE), self.codes, self.scale).float()
        return y if self.bias is None else y.add_(self.bias)


def codes_kernel(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                 bias: torch.Tensor | None = None) -> Int4PackMatMul | Int8PackMatMul:
    """The kernel for slimkit codes (uint8, `scale * (codes - zero)`): 4-bit for 1-4 bits, else int8
    (symmetric per-channel codes, see `supports_int8`)."""
    if bits <= 4:
        return Int4PackMatMul(codes, scale, zero, bits, bias)
    return Int8PackMatMul(centered_int8(codes, bits), scale, bias)


def centered_int8(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric slimkit codes of 5-8 bits (uint8, zero `2**(bits-1)`) as signed int8 values."""
    return (codes.to(torch.int16) - 2 ** (bits - 1)).to(torch.int8)
