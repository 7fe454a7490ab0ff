"""Batch-1 kernels for SmolLM2-135M's linear shapes (issue #21 part 4): which low-bit matmul beats fp32 here.

Each candidate runs a chain of distinct layers of one shape (enough copies that the fp32 chain is
several times the last-level cache, at most 96), so weights come from RAM as they do when a model
decodes a token; the time per layer is the best of 5 passes over the chain, divided by its length.
`err` is the relative error against the fp32 product on the exactly decoded weights.

    python -m bench.decode_kernels [--threads 2] [--only 576x576]

Candidates: fp32 / bf16 `F.linear`; `torch._weight_int8pack_mm` and `_weight_int4pack_mm_for_cpu`
with fp32 and with bf16 activations; fbgemm `quantized.linear_dynamic` (saturates without VNNI); ONNX Runtime
`MatMulNBits` 4-bit g64 and 8-bit, accuracy_level 4 (int8 activations per block) as slimkit runs it
(`slimkit.nn.nbits`), and accuracy_level 0 (fp32 activations).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from slimkit.nn import nbits
from slimkit.nn.kernels import rel_err
from slimkit.nn.quant_math import quantize_int8_rows, rtn_quantize

SHAPES = [(576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576)]   # (out, in): q/o, k/v, gate/up, down, head
CHAIN_BYTES = 96 << 20


def _time_chain(fns, x, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for fn in fns:
            fn(x)
        best = min(best, (time.perf_counter() - start) / len(fns))
    return best * 1e6


def _candidates(w: torch.Tensor):
    """name -> (builder of one layer's callable, its exact float weight)."""
    out_f, in_f = w.shape
    q8, s8 = quantize_int8_rows(w)
    w8 = q8.float() * s8[:, None]
    q4 = rtn_quantize(w, 4, False, "group", 64)
    grouped = q4.codes.float().reshape(out_f, -1, 64) - q4.zero.float()[..., None]
    w4 = (grouped * q4.scale.float()[..., None]).reshape(out_f, in_f)

    def fp32():
        wc = w.clone()
        return lambda x: F.linear(x, wc)

    def bf16():
        wb = w.bfloat16()
        return lambda x: F.linear(x.bfloat16(), wb).float()

    def int8pack(dtype: torch.dtype = torch.float32):
        qc, sc = q8.clone(), s8.to(dtype)
        return lambda x: torch._weight_int8pack_mm(x.to(dtype), qc, sc).float()

    def int4pack(dtype: torch.dtype = torch.bfloat16):
        codes = q4.codes.to(torch.int32)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        scale = q4.scale.float().t().contiguous()                # (groups, out)
        zero = (-(q4.zero.float() - 8) * q4.scale.float()).t().contiguous()   # torch: w = (q - 8) * s + z
        sz = torch.stack([scale, zero], -1).to(dtype)
        return lambda x: torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), packed, 64, sz).float()

    def fbgemm():
        qt = torch._make_per_channel_quantized_tensor(q8, s8.double(), torch.zeros(out_f, dtype=torch.long), 0)
        packed = torch.ops.quantized.linear_prepack(qt, None)
        return lambda x: torch.ops.quantized.linear_dynamic(x, packed, False)

    def ort(bits: int, accuracy: int):
        return lambda: _ort_kernel(q8, s8, q4, bits, accuracy)

    cands = {"fp32": (fp32, w), "bf16": (bf16, w), "int8pack_mm (fp32 in)": (int8pack, w8),
             "int8pack_mm (bf16 in)": (lambda: int8pack(torch.bfloat16), w8),
             "int4pack_mm (fp32 in)": (lambda: int4pack(torch.float32), w4),
             "int4pack_mm (bf16 in)": (int4pack, w4), "fbgemm dynamic": (fbgemm, w8)}
    if nbits.available():
        cands |= {"ORT 8-bit a4": (ort(8, 4), w8), "ORT 4-bit g64 a4": (ort(4, 4), w4),
                  "ORT 8-bit a0": (ort(8, 0), w8), "ORT 4-bit g64 a0": (ort(4, 0), w4)}
    return cands


def _ort_kernel(q8, s8, q4, bits: int, accuracy: int) -> nbits.NBitsMatMul:
    """MatMulNBits on the 8-bit or 4-bit codes, at `accuracy` (4: int8 activations, 0: fp32)."""
    old = nbits.ACCURACY_INT8
    nbits.ACCURACY_INT8 = accuracy
    try:
        if bits == 8:
            return nbits.NBitsMatMul((q8.to(torch.int16) + 128).to(torch.uint8), s8[:, None], None, 8)
        return nbits.NBitsMatMul(q4.codes, q4.scale, q4.zero, 4)
    finally:
        nbits.ACCURACY_INT8 = old


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="one shape, OUTxIN")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = [s for s in SHAPES if args.only in (None, f"{s[0]}x{s[1]}")]
    print(f"threads {args.threads}; microseconds per layer call at batch 1 (weights from RAM); err vs fp32")
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f) * 0.05
        copies = max(1, min(96, CHAIN_BYTES // (out_f * in_f * 4)))
        x = torch.randn(1, in_f)
        row = []
        with torch.no_grad():
            for name, (build, exact) in _candidates(w).items():
                try:
                    fns = [build() for _ in range(copies)]
                    err = rel_err(fns[0](x), F.linear(x, exact))
                    row.append(f"{name} {_time_chain(fns, x):.0f} us (err {err:.1e})")
                except Exception as exc:  # noqa: BLE001 - a kernel this torch/CPU lacks: say so
                    row.append(f"{name} n/a ({type(exc).__name__})")
                del fns
        print(f"{out_f}x{in_f} (chain of {copies}): " + "; ".join(row), flush=True)


if __name__ == "__main__":
    main()
