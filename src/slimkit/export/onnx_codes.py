"""Small ONNX files for weight-only codecs: store codes, decode them in the graph from constants.

A float initializer is replaced by a few nodes that compute exactly the same tensor from small
integer initializers; ONNX Runtime folds them at session creation, so the model runs at fp32
speed while the file holds only the codes:

- `QuantLinear` and `QuantConv2d` (1-8-bit, per tensor / channel / group, symmetric or not; a
  conv's codes are its weight flattened to (out, in*kh*kw), reshaped to 4-D by the graph, with
  BatchNorm kept as its own op by the export so it is not folded into them): codes (packed 2, 4 or 8
  per byte at 4 bits or fewer, `onnx_pack`), float scales and uint8 zero points;
  `(code - zero) * scale`, as slimkit decodes them.
- any other weight with few distinct values (k-means shared): an index into a codebook of the
  distinct values (packed when <= 16 values, uint8 <= 256, uint16), `Gather(codebook, index)`.
- any other weight that is at least half zeros (pruned): the gaps between nonzero positions
  (uint8/16/32, `CumSum`) and the nonzero values (themselves a codebook lookup when few, as after
  Deep Compression), `ScatterElements` into zeros.

Whichever is smallest is used, if it is under 60% of the fp32 bytes; all are bit-exact.

>>> coded = compact_weights(proto, sk.load("lenet-kmeans.slim"))
>>> sorted(set(coded.values()))
['codebook']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.export.onnx_pack import pack_last_axis, packed_bytes, unpack_last_axis
from slimkit.export.onnx_qdq import FLOAT, GraphBuilder, WeightPlan, find_weights
from slimkit.nn.quant_conv import QuantConv2d
from slimkit.nn.quant_linear import QuantLinear
from slimkit.nn.quant_math import group_view, zero_point

INT32, INT64 = 6, 7  # onnx.TensorProto data types
MIN_ELEMENTS = 256  # smaller tensors are not worth coding
MAX_CODED = 0.6  # a coded tensor must be under 60% of its fp32 size


def code_plans(model: nn.Module) -> list[WeightPlan]:
    """The weight-only quantized linears and convs of `model`, with their decoded float weights
    (a conv's as the 4-D weight the graph's Conv node holds)."""

    with torch.no_grad():
        return [WeightPlan(name, m, m.dequantized_weight().detach().float().cpu().numpy())
                for name, m in model.named_modules() if isinstance(m, QuantLinear | QuantConv2d)]


def compact_weights(proto: Any, model: nn.Module) -> dict[str, str]:
    """Replace float initializers of `proto` in place by codes decoded in the graph.

    Returns {initializer name: "codes" (a `QuantLinear`'s or `QuantConv2d`'s), "codebook" or "sparse"}.

    >>> compact_weights(proto, model)
    {'inner.fc1.weight': 'codebook', 'inner.fc2.weight': 'codebook', ...}
    """
    from onnx import numpy_helper

    graph = proto.graph
    graph_inputs = {i.name for i in graph.input}
    found = find_weights(graph, code_plans(model))
    b = GraphBuilder(prefix="slimkit_c")
    done: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in graph_inputs or init.data_type != FLOAT:
            continue
        if init.name in found:
            plan, transposed = found[init.name]
            _decode_codes(plan, transposed, init.name, b)
            done[init.name] = "codes"
        elif _numel(init) >= MIN_ELEMENTS:
            kind = _encode_float(numpy_helper.to_array(init), init.name, b)
            if kind:
                done[init.name] = kind
    if not done:
        return done
    keep = [i for i in graph.initializer if i.name not in done]
    del graph.initializer[:]
    graph.initializer.extend(keep + list(b.inits.values()))
    nodes = list(b.nodes) + list(graph.node)  # decoders first: they only read constants
    del graph.node[:]
    graph.node.extend(nodes)
    return done


def _numel(init: Any) -> int:
    return int(np.prod(init.dims)) if len(init.dims) else 1


def _decode_codes(plan: WeightPlan, transposed: bool, out: str, b: GraphBuilder) -> None:
    """`out` = ((codes - zero) * scale) of a `QuantLinear`, reshaped (and transposed) as the graph holds it."""

    m = plan.module
    p = plan.name or "model"
    codes = group_view(m.qweight.detach().cpu(), m.granularity, m.group_size).numpy()
    packed = b.const(f"{p}.codes", pack_last_axis(codes, m.bits))
    x = b.op("Cast", [unpack_last_axis(b, packed, m.bits, codes.shape[-1])], to=FLOAT)
    zero = zero_point(m.zero, m.bits)
    if isinstance(zero, float):
        z = b.const(f"slimkit.zero_{m.bits}bit", np.array(zero, np.float32))
    else:
        z = b.op("Cast", [b.const(f"{p}.zero", m.zero.detach().cpu().numpy()[..., None])], to=FLOAT)
    scale = b.const(f"{p}.scale", m.scale.detach().float().cpu().numpy()[..., None])
    w = b.op("Mul", [b.op("Sub", [x, z]), scale])
    shape = b.const(f"{p}.shape", np.array(getattr(m, "weight_shape", m.qweight.shape), np.int64))  # conv: 4-D
    if transposed:
        b.op("Transpose", [b.op("Reshape", [w, shape])], out, perm=[1, 0])
    else:
        b.op("Reshape", [w, shape], out)


def _index_dtype(count: int) -> type | None:
    """The smallest unsigned dtype that indexes `count` items (None above 65,536)."""
    return np.uint8 if count <= 256 else np.uint16 if count <= 65536 else None


def _encode_float(arr: np.ndarray, out: str, b: GraphBuilder) -> str | None:
    """Emit `out` as a codebook lookup or a sparse scatter when that is much smaller than fp32;
    return which ("codebook" / "sparse"), or None (the tensor stays as it is)."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32).ravel()  # exact: -0.0 stays -0.0
    options = {}
    sample = len(np.unique(bits[:4096]))
    if sample <= 256 or sample <= min(len(bits), 4096) // 2:
        values, index = np.unique(bits, return_inverse=True)
        dtype = _index_dtype(len(values))
        if dtype is not None:
            options["codebook"] = (_index_bytes(arr.shape, len(values)) + 4 * len(values), values, index, dtype)
    nonzero = np.flatnonzero(bits)
    if len(nonzero) <= len(bits) // 2:
        gaps = np.diff(nonzero, prepend=0)
        gap_dtype = np.uint8 if len(gaps) == 0 or gaps.max() < 256 else np.uint16 if gaps.max() < 65536 else np.uint32
        values, index = np.unique(bits[nonzero], return_inverse=True)
        dtype = _index_dtype(len(values))
        value_bytes = 4 * len(nonzero)
        if dtype is not None and _index_bytes((len(nonzero),), len(values)) + 4 * len(values) < value_bytes:
            value_bytes = _index_bytes((len(nonzero),), len(values)) + 4 * len(values)
        else:
            dtype = None  # a codebook would not be smaller than the raw values
        size = len(nonzero) * np.dtype(gap_dtype).itemsize + value_bytes
        options["sparse"] = (size, gaps.astype(gap_dtype), values, index, dtype)
    if not options:
        return None
    kind = min(options, key=lambda k: options[k][0])
    if options[kind][0] > MAX_CODED * len(bits) * 4:
        return None
    if kind == "codebook":
        _, values, index, dtype = options[kind]
        _lookup(values, index.astype(dtype).reshape(arr.shape), out, b)
        return kind
    _, gaps, values, index, dtype = options[kind]
    if dtype is None:
        nz = b.const(f"{out}.values", values.view(np.float32)[index])
    else:
        nz = _lookup(values, index.astype(dtype), None, b, out)
    positions = b.op("CumSum", [b.op("Cast", [b.const(f"{out}.gaps", gaps)], to=INT64),
                                b.const("slimkit.axis0", np.array(0, np.int64))])
    zeros = b.op("ConstantOfShape", [b.const(f"{out}.numel", np.array([len(bits)], np.int64))])
    flat = b.op("ScatterElements", [zeros, positions, nz], axis=0)
    b.op("Reshape", [flat, b.const(f"{out}.shape", np.array(arr.shape, np.int64))], out)
    return kind


def _code_bits(count: int) -> int:
    """Bits of an index into `count` values."""
    return max(1, int(count - 1).bit_length())


def _index_bytes(shape: tuple, count: int) -> int:
    """Bytes of an index tensor of `shape` into `count` values (packed below 5 bits, else uint8/uint16)."""
    if count > 256:
        return int(np.prod(shape)) * 2
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    return rows * packed_bytes(shape[-1], _code_bits(count))


def _lookup(values: np.ndarray, index: np.ndarray, out: str | None, b: GraphBuilder, name: str = "") -> str:
    """Gather(codebook of float32 bit patterns `values`, `index`) into `out`; an index into 16 or
    fewer values is stored packed (`onnx_pack`)."""
    name = name or out or ""
    codebook = b.const(f"{name}.codebook", values.view(np.float32))
    if index.dtype == np.uint8:
        bits = _code_bits(len(values))
        idx = unpack_last_axis(b, b.const(f"{name}.index", pack_last_axis(index, bits)), bits, index.shape[-1])
    else:
        idx = b.op("Cast", [b.const(f"{name}.index", index)], to=INT32)
    return b.op("Gather", [codebook, idx], out)
