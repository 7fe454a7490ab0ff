"""Low-bit matmuls that read the codes directly: ONNX Runtime's `MatMulNBits` (com.microsoft), one
small session per layer.

At batch 1 a language model's decoding is bound by the bytes of weights read per token, so a kernel
that reads 4- or 8-bit codes beats an fp32 matmul on the decoded weight even without VNNI. torch's
own low-bit CPU kernels (`slimkit.nn.torch_pack`) are the other candidate: fast on bf16 activations
only, and fbgemm saturates without VNNI (measured in bench/decode_kernels.py); a layer's kernel choice
times both where they run. `MatMulNBits`
has AVX2 / AVX-512 / VNNI kernels for 4-bit and 8-bit block-wise codes; with `accuracy_level=4` it
quantizes the activations to int8 per block of `block_size` inputs (finer than per token) and
multiplies in integers. A layer therefore computes W4A8 / W8A8: its kernel choice
(`slimkit.nn.kernels`) accepts it only where its error against the layer's exact output stays within
twice that of per-token int8 activations.

Every slimkit code layout maps exactly: codes of 1-4 bits are valid 4-bit codes, 5-8 bits 8-bit ones,
with their own zero points (`2**(bits-1)` when symmetric); per-channel and per-tensor scales repeat
over blocks. Each session has its own threads (torch's count when it is made), which sleep
between calls; ONNX Runtime's process-wide pool would break every other session of the process.

>>> mm = NBitsMatMul(codes, scale, zero, bits=4)      # codes (N, K) uint8, scale (N, groups)  # doctest: +SKIP
>>> y = mm(x)                                          # (rows, K) float32 -> (rows, N)         # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import weakref

import numpy as np
import torch

BLOCKS = (128, 64, 32, 16)
ACCURACY_INT8 = 4
MIN_WEIGHTS = 1 << 16   # below ~256 KB of fp32 weight the dense copy stays in cache and a session call costs more


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """Whether ONNX Runtime (the `onnx` extra) is installed with its CPU `MatMulNBits` kernel."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return False
    try:
        NBitsMatMul(torch.zeros(16, 16, dtype=torch.uint8), torch.ones(16, 1), None, 4)(torch.zeros(1, 16))
    except Exception:  # noqa: BLE001 - an onnxruntime without the contrib op or a CPU it refuses
        return False
    return True


def block_size(cols: int, group: int) -> int | None:
    """The MatMulNBits block for `cols` inputs quantized in groups of `group` (`group == cols`: one
    scale per row): the group itself when it is a power of two in 16..128, else the largest such power
    dividing it (its scale repeated); None when no block fits."""
    for b in BLOCKS:
        if group % b == 0 and cols % b == 0:
            return b
    return None


def supports(rows: int, cols: int, bits: int, group: int) -> bool:
    """Whether a (rows, cols) weight of `bits`-bit codes in groups of `group` is big enough to gain and
    maps onto MatMulNBits (and ONNX Runtime is here)."""
    return (rows * cols >= MIN_WEIGHTS and 1 <= bits <= 8 and block_size(cols, group) is not None
            and available())


def _session_options():
    """Per-session threads (torch's count), not spinning between calls. Never ONNX Runtime's global
    thread pool: once set, every other session of the process (the ONNX runtime of `sk.load`, the
    export check) that asks for its own threads fails to build."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _pack(codes: np.ndarray, kernel_bits: int, block: int) -> np.ndarray:
    """(N, K) codes as MatMulNBits' B: (N, K/block, block*bits/8), 4-bit pairs low nibble first."""
    rows, cols = codes.shape
    if kernel_bits == 4:
        codes = codes[:, 0::2] | (codes[:, 1::2] << 4)
    return np.ascontiguousarray(codes.reshape(rows, cols // block, block * kernel_bits // 8))


class NBitsMatMul:
    """`y = x @ W^T (+ bias)` for `W = scale * (codes - zero)` (slimkit's affine layout), run by
    MatMulNBits. `codes`: (N, K) uint8 in [0, 2**bits); `scale`: (N or 1, groups) float; `zero`:
    like `scale`, uint8, or None for symmetric codes (zero `2**(bits-1)`)."""

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, bits: int,
                 bias: torch.Tensor | None = None):
        rows, cols = codes.shape
        groups = scale.shape[-1]
        block = block_size(cols, cols // groups)
        if block is None or cols % groups:
            raise ValueError(f"no MatMulNBits block fits {cols} inputs in {groups} groups")
        kernel_bits = 4 if bits <= 4 else 8
        blocks = cols // block
        repeat = blocks // groups
        scale = scale.detach().float().expand(rows, groups).repeat_interleave(repeat, 1)
        if zero is None:
            zero = torch.full((rows, blocks), 2 ** (bits - 1), dtype=torch.uint8)
        else:
            zero = zero.detach().expand(rows, groups).repeat_interleave(repeat, 1).to(torch.uint8)
        z = zero.numpy()
        if kernel_bits == 4:
            if blocks % 2:
                z = np.concatenate([z, np.zeros((rows, 1), np.uint8)], 1)
            z = z[:, 0::2] | (z[:, 1::2] << 4)
        self.shape, self.bits, self.block = (rows, cols), kernel_bits, block
        b = _pack(codes.detach().cpu().numpy(), kernel_bits, block)
        tensors = {"B": b, "scales": np.ascontiguousarray(scale.numpy()), "zero_points": np.ascontiguousarray(z)}
        self.nbytes = sum(int(t.nbytes) for t in tensors.values())
        self.bias = None if bias is None else bias.detach().float().clone()
        self._run = self._session(tensors)
        self.handle = next(_HANDLES)
        _LIVE[self.handle] = self

    def _session(self, tensors: dict[str, np.ndarray]):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rows, cols = self.shape
        node = helper.make_node("MatMulNBits", ["A", "B", "scales", "zero_points"], ["Y"], domain="com.microsoft",
                                K=cols, N=rows, bits=self.bits, block_size=self.block,
                                accuracy_level=ACCURACY_INT8)
        graph = helper.make_graph(
            [node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["M", cols])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", rows])],
            [numpy_helper.from_array(v, k) for k, v in tensors.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = min(model.ir_version, onnx.IR_VERSION)
        session = ort.InferenceSession(model.SerializeToString(), _session_options(),
                                       providers=["CPUExecutionProvider"])
        self.session = session
        inner = getattr(session, "_sess", None)   # the bound C++ call: a few us less than .run per call
        return functools.partial(inner.run if hasattr(inner, "run") else session.run, ["Y"])

    def __call__(self, x2: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():   # an opaque op to dynamo: ONNX Runtime cannot be traced
            return _nbits_op(x2, self.handle, self.shape[0])
        return self._eager(x2)

    def _eager(self, x2: torch.Tensor) -> torch.Tensor:
        a = x2.detach()
        if a.dtype is not torch.float32 or not a.is_contiguous():
            a = a.float().contiguous()
        y = torch.from_numpy(self._run({"A": a.numpy()}, None)[0])
        return y if self.bias is None else y.add_(self.bias)


_LIVE: weakref.WeakValueDictionary[int, NBitsMatMul] = weakref.WeakValueDictionary()   # handle -> kernel
_HANDLES = itertools.count(1)


@torch.library.custom_op("slimkit::nbits_matmul", mutates_args=())
def _nbits_op(x2: torch.Tensor, handle: int, rows: int) -> torch.Tensor:
    """A compiled graph's call of the live kernel `handle` (`NBitsMatMul.handle`, never reused)."""
    return _LIVE[handle]._eager(x2)


@_nbits_op.register_fake
def _(x2: torch.Tensor, handle: int, rows: int) -> torch.Tensor:
    return x2.new_empty(x2.shape[0], rows)
