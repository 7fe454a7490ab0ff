"""Small ONNX files for weight-only codecs: store codes, decode them in the graph from constants.

A float initializer is replaced by a few nodes that compute exactly the same tensor from small
integer initializers; ONNX Runtime folds them at session creation, so the model runs at fp32
speed while the file holds only the codes:

- `QuantLinear` (1-8-bit, per tensor / channel / group, symmetric or not): uint8 codes, float
  scales and uint8 zero points; `(code - zero) * scale`, as slimkit decodes them.
- any other weight with few distinct values (k-means shared, hashed): a uint8 (<= 256 values) or
  uint16 index into a codebook of the distinct values (bit-exact), `Gather(codebook, index)`.

>>> coded = compact_weights(proto, sk.load("lenet-kmeans.slim"))
>>> sorted(set(coded.values()))
['codebook']
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.io.onnx_qdq import FLOAT, GraphBuilder, WeightPlan, find_weights

INT32 = 6  # onnx.TensorProto.INT32
MIN_ELEMENTS = 1024  # smaller tensors are not worth a codebook
UINT16_SAVING = 0.6  # a uint16 index must bring the tensor under 60% of its fp32 size


def code_plans(model: nn.Module) -> list[WeightPlan]:
    """The weight-only quantized linears of `model`, with their decoded float weights."""
    from slimkit.nn.quant_linear import QuantLinear

    with torch.no_grad():
        return [WeightPlan(name, m, m.dequantized_weight().detach().float().cpu().numpy())
                for name, m in model.named_modules() if isinstance(m, QuantLinear)]


def compact_weights(proto: Any, model: nn.Module) -> dict[str, str]:
    """Replace float initializers of `proto` in place by codes decoded in the graph.

    Returns {initializer name: "codes" (a `QuantLinear`'s) or "codebook"}.

    >>> compact_weights(proto, model)
    {'inner.fc1.weight': 'codebook', 'inner.fc2.weight': 'codebook', ...}
    """
    from onnx import numpy_helper

    graph = proto.graph
    graph_inputs = {i.name for i in graph.input}
    found = find_weights(graph, code_plans(model))
    b = GraphBuilder(prefix="slimkit_codes")
    done: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in graph_inputs or init.data_type != FLOAT:
            continue
        if init.name in found:
            plan, transposed = found[init.name]
            _decode_codes(plan, transposed, init.name, b)
            done[init.name] = "codes"
        elif _numel(init) >= MIN_ELEMENTS and _codebook(numpy_helper.to_array(init), init.name, b):
            done[init.name] = "codebook"
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
    from slimkit.quant.math import group_view, zero_point

    m = plan.module
    p = plan.name or "model"
    codes = group_view(m.qweight.detach().cpu(), m.granularity, m.group_size).numpy()
    x = b.op("Cast", [b.const(f"{p}.codes", codes)], to=FLOAT)
    zero = zero_point(m.zero, m.bits)
    if isinstance(zero, float):
        z = b.const(f"slimkit.zero_{m.bits}bit", np.array(zero, np.float32))
    else:
        z = b.op("Cast", [b.const(f"{p}.zero", m.zero.detach().cpu().numpy()[..., None])], to=FLOAT)
    scale = b.const(f"{p}.scale", m.scale.detach().float().cpu().numpy()[..., None])
    w = b.op("Mul", [b.op("Sub", [x, z]), scale])
    shape = b.const(f"{p}.shape", np.array(m.qweight.shape, np.int64))
    if transposed:
        b.op("Transpose", [b.op("Reshape", [w, shape])], out, perm=[1, 0])
    else:
        b.op("Reshape", [w, shape], out)


def _codebook(arr: np.ndarray, out: str, b: GraphBuilder) -> bool:
    """Emit `out` = Gather(codebook, index) when `arr` has few distinct values; False otherwise."""
    bits = np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32)  # exact: -0.0 and 0.0 stay apart
    if len(np.unique(bits.ravel()[:4096])) > 65535:
        return False
    values, index = np.unique(bits, return_inverse=True)
    if len(values) <= 256:
        index = index.astype(np.uint8)
    elif len(values) <= 65535 and len(values) * 4 + arr.size * 2 <= UINT16_SAVING * arr.size * 4:
        index = index.astype(np.uint16)
    else:
        return False
    codebook = b.const(f"{out}.codebook", values.view(np.float32))
    idx = b.op("Cast", [b.const(f"{out}.index", index.reshape(arr.shape))], to=INT32)
    b.op("Gather", [codebook, idx], out)
    return True
