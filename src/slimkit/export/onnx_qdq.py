"""Integer ONNX for slimkit's int8 layers: rewrite a float ONNX graph to slimkit's own integer math.

`export` first writes a float graph (every runtime module decoded); `quantize_graph` then finds
each decoded weight among the graph's initializers (by value: exact, whatever name the exporter
gave it) and replaces the node that uses it with the integer pattern of the slimkit module:

- `Int8Linear`, dynamic: per-token symmetric int8 activations built from standard ops
  (Abs, ReduceMax, Div, Mul; QuantizeLinear with scale 1 and zero point 128 rounds and shifts to
  uint8, which ONNX Runtime multiplies much faster than int8), `MatMulInteger` on the int8 weight
  (an int8 initializer), then the int32 result rescaled by the token scale and the per-channel
  weight scale (the same fp32 operations, in the same order, as `Int8Linear.forward`).
- `Int8Linear`, static: a fixed activation scale (Mul, Clip to +-127, QuantizeLinear) and the same
  `MatMulInteger` path.
- `QuantEmbedding` (1-8 bits): a uint8 code table (2-8 codes per byte at 4 bits or fewer), `Gather`
  of codes and scales, `(code - zero) * scale`.

Standard opsets have no per-token QuantizeLinear (and ORT's `MatMulIntegerToFloat` has no
per-row activation scale), hence the explicit ops; the graph uses standard ops only (opset 17).
The per-token activation quantization is not fused, so the graph is somewhat slower than ORT's own
`quantize_dynamic` graph, whose per-tensor activations are less exact (docs/notes/runtime-choices.md).

>>> model_proto = onnx.load("float.onnx")
>>> replaced = quantize_graph(model_proto, sk.load("minilm-int8.slim"))
>>> sorted(set(replaced.values()))
['Int8Linear', 'QuantEmbedding']
"""

from __future__ import annotations

import functools
import hashlib
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.core.torch_utils import cpu_supports
from slimkit.export.onnx_pack import pack_last_axis, unpack_last_axis
from slimkit.nn.quant_embedding import QuantEmbedding
from slimkit.nn.quant_linear import Int8Linear

UINT8, FLOAT = 2, 1  # onnx.TensorProto data types


@dataclass
class WeightPlan:
    """One slimkit module to write as integer ops: its name, kind and float weight (as exported)."""

    name: str
    module: nn.Module
    weight: np.ndarray  # float32, exactly what the float export holds (rows, cols)


@dataclass
class GraphBuilder:
    """New nodes and initializers for one graph, with unique names."""

    prefix: str = "slimkit_q"
    nodes: list = field(default_factory=list)
    inits: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)
    count: int = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}{self.count}"

    def const(self, name: str, value: np.ndarray) -> str:
        """An initializer named `name` (shared constants, "slimkit.*", are named after the builder)."""
        from onnx import numpy_helper

        if name.startswith("slimkit."):
            name = f"{self.prefix}.{name.removeprefix('slimkit.')}"
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(value), name)
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = output or self.name(op_type)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))  # unnamed: names cost bytes
        return out


def integer_plans(model: nn.Module) -> list[WeightPlan]:
    """The modules of `model` that have an integer ONNX pattern, with their decoded float weights."""

    plans = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, Int8Linear):
                weight = module.dequantized_weight()
            elif isinstance(module, QuantEmbedding):
                weight = module.weight
            else:
                continue
            plans.append(WeightPlan(name, module, weight.detach().float().cpu().numpy()))
    return plans


def _digest(a: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


def find_weights(graph: Any, plans: list[WeightPlan]) -> dict[str, tuple[WeightPlan, bool]]:
    """{initializer name: (plan, transposed)} for the float initializers of `graph` that hold a
    plan's weight exactly, or its transpose (as a folded MatMul weight does)."""
    from onnx import numpy_helper

    index: dict[tuple, tuple[WeightPlan, bool]] = {}
    for plan in plans:
        w = plan.weight
        index.setdefault((w.shape, _digest(w)), (plan, False))
        if w.ndim == 2:
            index.setdefault((w.T.shape, _digest(w.T)), (plan, True))
    shapes = {shape for shape, _ in index}
    found = {}
    for init in graph.initializer:
        if init.data_type == FLOAT and tuple(init.dims) in shapes:
            arr = numpy_helper.to_array(init)
            hit = index.get((arr.shape, _digest(arr)))
            if hit is not None:
                found[init.name] = hit
    return found


def quantize_graph(proto: Any, model: nn.Module) -> dict[str, str]:
    """Rewrite `proto` (an `onnx.ModelProto` of `model`'s float export) in place so that slimkit's
    int8 linears and quantized embeddings run as integer ops. Returns {module name: module type}
    of what was rewritten; a node whose weight is not found stays float.

    >>> quantize_graph(proto, model)
    {'fc1': 'Int8Linear', 'fc2': 'Int8Linear', 'fc3': 'Int8Linear'}
    """
    plans = integer_plans(model)
    if not plans:
        return {}
    graph = proto.graph
    found = find_weights(graph, plans)
    b = GraphBuilder()
    replaced: dict[str, str] = {}
    new_nodes = []
    for node in graph.node:
        emitted = _rewrite(node, found, b) if len(node.input) > 1 else None
        if emitted is None:
            new_nodes.append(node)
            continue
        new_nodes.extend(b.nodes)
        b.nodes = []
        replaced[emitted.name] = type(emitted.module).__name__
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name not in found or i.name in used]  # drop replaced weights
    del graph.initializer[:]
    graph.initializer.extend(keep + list(b.inits.values()))
    return replaced


def _rewrite(node: Any, found: dict, b: GraphBuilder) -> WeightPlan | None:
    """Emit into `b` the integer form of `node` when it uses a found weight; return its plan."""

    attrs = {a.name: (a.f if a.type == 1 else a.i) for a in node.attribute}
    if node.op_type == "Gather" and node.input[0] in found:
        plan, transposed = found[node.input[0]]
        if isinstance(plan.module, QuantEmbedding) and not transposed and attrs.get("axis", 0) == 0:
            _embedding(plan, node.input[1], node.output[0], b)
            return plan
        return None
    if node.op_type not in ("MatMul", "Gemm") or node.input[1] not in found:
        return None
    plan, transposed = found[node.input[1]]
    if not isinstance(plan.module, Int8Linear):
        return None
    if node.op_type == "MatMul":
        if not transposed:  # MatMul(x, W^T) is a Linear; MatMul(x, W) is something else
            return None
        _linear(plan, node.input[0], None, node.output[0], b)
        return plan
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    if bool(attrs.get("transB", 0)) == transposed:  # Gemm must compute x @ W^T
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    _linear(plan, node.input[0], bias, node.output[0], b)
    return plan


@functools.lru_cache(maxsize=1)
def signed_weights_exact() -> bool:
    """Whether ONNX Runtime multiplies uint8 activations by int8 weights exactly on this CPU.

    On x86 without VNNI, ORT's uint8 x int8 kernel adds pairs of products in int16 (VPMADDUBSW), which
    saturates (255 * 127 * 2 > 32767); its uint8 x uint8 kernel does not. With VNNI (and off x86) the
    int8 weights are exact and fastest.
    """
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return cpu_supports("_is_vnni_supported")


def _linear(plan: WeightPlan, x: str, bias: str | None, out: str, b: GraphBuilder) -> None:
    """x (..., K) -> MatMulInteger(q8(x), Wq^T) * s_x * s_w (+ bias), as `Int8Linear.forward`."""
    m = plan.module
    p = plan.name or "model"
    codes = m.qweight.detach().cpu().numpy().T
    zp = b.const("slimkit.zero_point_128", np.array(128, np.uint8))
    if signed_weights_exact():
        wq, inputs = b.const(f"{p}.qweight_t", codes), []
    else:  # uint8 weights (codes + 128, zero point 128): the same products, without int16 saturation
        wq, inputs = b.const(f"{p}.qweight_t", (codes.astype(np.int16) + 128).astype(np.uint8)), [zp]
    if m.input_scale is not None:
        inv = (1.0 / m.input_scale.detach().float()).cpu().numpy().astype(np.float32)
        xq, _ = _quantize_static(x, inv, b)
        acc = b.op("MatMulInteger", [xq, wq, zp, *inputs])
        rescale = (m.scale.detach().float() * m.input_scale.detach().float()).cpu().numpy()
        y = b.op("Mul", [b.op("Cast", [acc], to=FLOAT), b.const(f"{p}.out_scale", rescale)],
                 None if bias else out)
    else:
        xq, xs = _quantize_per_token(x, b)
        acc = b.op("MatMulInteger", [xq, wq, zp, *inputs])
        y = b.op("Mul", [b.op("Cast", [acc], to=FLOAT), xs])
        y = b.op("Mul", [y, b.const(f"{p}.weight_scale", m.scale.detach().float().cpu().numpy())],
                 None if bias else out)
    if bias:
        b.op("Add", [y, bias], out)


def _quantize_per_token(x: str, b: GraphBuilder) -> tuple[str, str]:
    """(uint8 codes + 128, token scale) of x, as `quantize_per_token`; once per tensor (q, k, v share it)."""
    key = (x, "token")
    if key not in b.memo:
        amax = b.op("ReduceMax", [b.op("Abs", [x])], axes=[-1], keepdims=1)
        amax = b.op("Max", [amax, b.const("slimkit.tiny", np.array(1e-12, np.float32))])
        c127 = b.const("slimkit.127", np.array(127.0, np.float32))
        inv = b.op("Div", [c127, amax])
        b.memo[key] = (_to_uint8(b.op("Mul", [x, inv]), b), b.op("Div", [amax, c127]))
    return b.memo[key]


def _quantize_static(x: str, inv: np.ndarray, b: GraphBuilder) -> tuple[str, None]:
    """uint8 codes + 128 of x with a fixed scale (1 / `inv`), as `quantize_static`; once per tensor and scale."""
    key = (x, inv.tobytes())
    if key not in b.memo:
        v = b.op("Mul", [x, b.const(f"slimkit.inv_scale_{len(b.memo)}", inv)])
        lo = b.const("slimkit.minus127", np.array(-127.0, np.float32))
        hi = b.const("slimkit.plus127", np.array(127.0, np.float32))
        b.memo[key] = (_to_uint8(b.op("Clip", [v, lo, hi]), b), None)
    return b.memo[key]


def _to_uint8(v: str, b: GraphBuilder) -> str:
    """round(v) + 128 as uint8 for v in [-127, 127] (QuantizeLinear with scale 1 rounds half to even,
    as slimkit does): with zero point 128, `MatMulInteger` gives exactly the int8 products, and ONNX
    Runtime's u8 x s8 kernel is much faster than its s8 x s8 (docs/notes/runtime-choices.md)."""
    one = b.const("slimkit.one", np.array(1.0, np.float32))
    return b.op("QuantizeLinear", [v, one, b.const("slimkit.zero_point_128", np.array(128, np.uint8))])


def _embedding(plan: WeightPlan, ids: str, out: str, b: GraphBuilder) -> None:
    """Gather(codes) -> float -> minus zero -> times scale, as `QuantEmbedding.forward` (codes of 4
    bits or fewer stay packed in the table; only the looked-up rows are unpacked)."""

    m = plan.module
    p = plan.name or "model"
    groups = m.scale.shape[1]
    table = b.const(f"{p}.codes", pack_last_axis(m.qweight.detach().cpu().numpy(), m.bits))
    codes = b.op("Cast", [unpack_last_axis(b, b.op("Gather", [table, ids]), m.bits, m.embedding_dim)], to=FLOAT)
    expand = None
    if groups > 1:  # per-group params: repeat each group's value over its columns
        expand = b.const(f"{p}.group_of_column",
                         np.repeat(np.arange(groups, dtype=np.int64), m.embedding_dim // groups))
    if m.zero is None:
        zero = b.const(f"{p}.zero", np.array(float(2 ** (m.bits - 1)), np.float32))
    else:
        zero = b.op("Cast", [b.op("Gather", [b.const(f"{p}.zero", m.zero.detach().cpu().numpy()), ids])],
                    to=FLOAT)
        if expand:
            zero = b.op("Gather", [zero, expand], axis=-1)
    scale = b.op("Gather", [b.const(f"{p}.scale", m.scale.detach().float().cpu().numpy()), ids])
    if expand:
        scale = b.op("Gather", [scale, expand], axis=-1)
    b.op("Mul", [b.op("Sub", [codes, zero]), scale], out)
