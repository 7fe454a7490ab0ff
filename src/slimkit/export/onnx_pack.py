"""Sub-byte codes in ONNX: several 1/2/4-bit codes per uint8 initializer byte, unpacked by the graph.

ONNX (opset 17) has no 4-bit tensor type, so codes of 4 bits or fewer are packed along the last
axis, `8 // slot` codes per byte (3-bit codes use 4-bit slots), and unpacked with integer
`Div` / `Mod` by powers of two. The unpacking works on constants (ONNX Runtime folds it at load) and
on rows gathered at run time (an embedding lookup unpacks only the looked-up rows).

>>> packed = pack_last_axis(np.array([[1, 2, 3]], np.uint8), bits=4)   # [[0x21, 0x03]]
>>> codes = unpack_last_axis(builder, builder.const("t", packed), bits=4, length=3)   # int32 (1, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

INT32 = 6  # onnx.TensorProto.INT32


def slot_bits(bits: int) -> int:
    """The slot a `bits`-bit code takes in a packed byte: 1, 2, 4 or 8 (no packing)."""
    return next(s for s in (1, 2, 4, 8) if bits <= s)


def pack_last_axis(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes holding `8 // slot_bits(bits)` codes each along the last axis (zero-padded),
    lowest code in the lowest bits; codes of more than 4 bits come back unchanged as uint8."""
    slot = slot_bits(bits)
    codes = np.asarray(codes).astype(np.uint8)
    if slot == 8:
        return codes
    per = 8 // slot
    pad = (-codes.shape[-1]) % per
    if pad:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], pad), np.uint8)], axis=-1)
    digits = codes.reshape(*codes.shape[:-1], -1, per).astype(np.uint32)
    weights = (1 << (slot * np.arange(per))).astype(np.uint32)
    return (digits * weights).sum(-1).astype(np.uint8)


def unpack_last_axis(b: Any, packed: str, bits: int, length: int) -> str:
    """int32 codes (..., length) from the uint8 tensor `packed` made by `pack_last_axis`
    (`b` is an `onnx_qdq.GraphBuilder`); any leading shape, known only at run time or not."""
    p = b.op("Cast", [packed], to=INT32)
    slot = slot_bits(bits)
    if slot == 8:
        return p
    per = 8 // slot
    weights = b.const(f"slimkit.pack{slot}.weights", (1 << (slot * np.arange(per))).astype(np.int32))
    base = b.const(f"slimkit.pack{slot}.base", np.array(1 << slot, np.int32))
    digits = b.op("Mod", [b.op("Div", [b.op("Unsqueeze", [p, b.const("slimkit.axis_last", np.array([-1]))]),
                                       weights]), base])
    padded = -(-length // per) * per
    shape = b.op("Concat", [b.op("Shape", [p], end=-1), b.const(f"slimkit.len{padded}", np.array([padded]))],
                 axis=0)
    flat = b.op("Reshape", [digits, shape])
    if padded == length:
        return flat
    return b.op("Slice", [flat, b.const("slimkit.zero_1d", np.array([0])), b.const(f"slimkit.len{length}",
                          np.array([length])), b.const("slimkit.axis_last", np.array([-1]))])


def packed_bytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take once packed (one row)."""
    per = 8 // slot_bits(bits)
    return -(-count // per)
