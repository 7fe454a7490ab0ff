"""ONNX export of slimkit models, and ONNX Runtime sessions behind an `nn.Module` face.

Structurally pruned and low-rank layers are plain modules and export as smaller ops. Unless
`integer=False`: int8 linears and quantized embeddings export as integer ops on int8 / uint8
initializers (`onnx_qdq.quantize_graph`), and weight-only codes (QuantLinear), weights with few
distinct values (k-means) and mostly-zero weights (pruned) are stored as small integer codes that
the graph decodes from constants (`onnx_codes.compact_weights`; ONNX Runtime folds them at load,
so they run at fp32 speed). Anything else is exported as decoded float weights. `export` checks
ONNX Runtime's outputs against slimkit's own on the task's inputs and reports the max abs diff
and cosine.

>>> report = export(sk.load("lenet.slim"), "lenet.onnx")
>>> report["cosine"] >= 0.999
True
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.optional import require
from slimkit.core.provenance import task_for
from slimkit.export.onnx_codes import compact_weights
from slimkit.export.onnx_lm import no_cache, token_examples
from slimkit.export.onnx_qdq import quantize_graph
from slimkit.io.runtimes import strip_runtime, torch_only
from slimkit.io.safetensors_file import atomic_write
from slimkit.nn.kernels import kernel_mode
from slimkit.nn.tied_head import TiedLMHead, bind_tied_heads
from slimkit.surgery.specs import MODULE_TYPES

HF_OUTPUT = "last_hidden_state"


def first_tensor(out: Any) -> torch.Tensor:
    """The main output of a model: the tensor itself, `.last_hidden_state`, or element 0."""
    if isinstance(out, torch.Tensor):
        return out
    hidden = getattr(out, HF_OUTPUT, None)
    if isinstance(hidden, torch.Tensor):
        return hidden
    return out[0]


def flatten_output(out: Any) -> tuple[list[torch.Tensor], Any]:
    """The tensors of a model's output in order, and a spec that `rebuild_output` turns back into the
    same structure: a tensor, tuples / lists / named tuples, dicts and Hugging Face outputs (which
    list only their non-None fields), nested. TypeError for anything else (a cache object, a number).

    >>> tensors, spec = flatten_output(BaseModelOutputWithPooling(last_hidden_state=h, pooler_output=p))
    >>> rebuild_output(spec, tensors).pooler_output is p
    True
    """
    tensors: list[torch.Tensor] = []
    return tensors, _flatten(out, tensors)


def _flatten(out: Any, tensors: list[torch.Tensor]) -> Any:
    if isinstance(out, torch.Tensor):
        tensors.append(out)
        return ("tensor", out.dtype)
    if out is None:
        return ("none",)
    if isinstance(out, dict):
        keys = list(out.keys())
        if not all(isinstance(k, str) for k in keys):
            raise TypeError("a model output is a dict with keys that are not strings")
        return ("dict", type(out), keys, [_flatten(out[k], tensors) for k in keys])
    if isinstance(out, tuple | list):
        return ("seq", type(out), [_flatten(v, tensors) for v in out])
    raise TypeError(f"a model output holds a {type(out).__name__}, not a tensor")


def rebuild_output(spec: Any, tensors: list[torch.Tensor]) -> Any:
    """`flatten_output`'s inverse: `tensors` (in order, cast to the recorded dtypes) in the recorded structure."""
    it = iter(tensors)

    def build(node: Any) -> Any:
        kind = node[0]
        if kind == "tensor":
            t = next(it)
            return t if t.dtype == node[1] else t.to(node[1])
        if kind == "none":
            return None
        if kind == "dict":
            return node[1](**{k: build(child) for k, child in zip(node[2], node[3], strict=True)})
        values = [build(child) for child in node[2]]
        return getattr(node[1], "_make", node[1])(values)  # a named tuple's _make, else tuple / list

    return build(spec)


def rewrap(like: Any, tensor: torch.Tensor) -> Any:
    """`tensor` in the same kind of output as `like` (a Hugging Face output keeps its type)."""
    if isinstance(like, torch.Tensor):
        return tensor
    from transformers.modeling_outputs import BaseModelOutput

    return BaseModelOutput(last_hidden_state=tensor)


class OrtModule(nn.Module):
    """An ONNX Runtime session behind an `nn.Module` face: same keyword inputs as the torch model,
    returns a tensor (classifiers), an output with `.last_hidden_state` (encoders) or with `.logits`
    (causal LMs).

    `path` is an .onnx file or the serialized graph itself (bytes); `run_all(named)` returns every
    output of the graph as tensors, in order. `spin=False` makes ONNX Runtime's worker threads sleep
    as soon as a run ends instead of busy-waiting for the next one, which would take the cores from
    torch's own threads when both run in one process (they still spin between the ops of a run)."""

    def __init__(self, path: str | Path | bytes, keys: list[str], hf_output: bool, threads: int,
                 spin: bool = True):
        super().__init__()
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: not its notes on unused initializers
        if not spin:  # spin between the ops of a run (waking a thread per op cost MiniLM 30% at batch 1)
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        source = path if isinstance(path, bytes) else str(path)
        self.session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        self.keys = keys
        self.feeds = {i.name for i in self.session.get_inputs()}
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._run = self.session._sess.run
        self.hf_output = hf_output
        self.path = "<in memory>" if isinstance(path, bytes) else str(path)

    def run_all(self, named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Every output of the graph for the inputs `named` (those the graph does not read are ignored).
        Calls the session's C++ binding directly: the Python wrapper's input checks cost ~10 us a
        call, as much as a small model's whole graph (the graph itself validates its inputs)."""
        feed = {}
        for k, v in named.items():
            if k in self.feeds:
                try:
                    feed[k] = v.numpy()
                except RuntimeError:  # requires grad, or not on the CPU
                    feed[k] = v.detach().cpu().numpy()
        return [torch.from_numpy(a) for a in self._run(self._outputs, feed, None)]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        named = dict(zip(self.keys, args, strict=False))
        named.update(kwargs)
        feed = {k: v.detach().cpu().numpy() for k, v in named.items() if k in self.feeds}
        out = torch.from_numpy(self.session.run(None, feed)[0])
        if self.hf_output and self._outputs[0] == "logits":   # a causal LM's graph
            from transformers.modeling_outputs import CausalLMOutput

            return CausalLMOutput(logits=out)
        if self.hf_output:
            from transformers.modeling_outputs import BaseModelOutput

            return BaseModelOutput(last_hidden_state=out)
        return out

    def extra_repr(self) -> str:
        return f"onnx={Path(self.path).name}"


class _Export(nn.Module):
    """Positional-argument face of a keyword-driven model, returning only its main tensor (or,
    with `all_outputs`, every tensor of its output as a flat tuple: `flatten_output`)."""

    def __init__(self, inner: nn.Module, keys: list[str], all_outputs: bool = False, fixed: dict | None = None):
        super().__init__()
        self.inner = inner
        self.keys = keys
        self.all_outputs = all_outputs
        self.fixed = fixed or {}

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.inner(**dict(zip(self.keys, args, strict=False)), **self.fixed)
        return tuple(flatten_output(out)[0]) if self.all_outputs else first_tensor(out)


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: str | os.PathLike | BinaryIO,
                keep_norms: bool = False, all_outputs: bool = False) -> tuple[list[str], bool]:
    """Export with the TorchScript exporter (dynamo=False, opset 17), dynamic batch (and sequence
    for integer token inputs). Returns (input names, whether the output is a hidden state).
    `keep_norms` keeps BatchNorm as its own op instead of folding it into the conv before it, so
    that a quantized conv's weight stays the decoded codes (ONNX Runtime folds it at load).
    `all_outputs` makes every tensor of the output a graph output, in `flatten_output`'s order
    (their first axis is the batch when its size is the example's batch, and so on for the sequence).
    `path` may be a binary file object (an `io.BytesIO`: no file on disk at all)."""
    keys = list(example)
    fixed = no_cache(model) if not all_outputs else {}
    with torch.inference_mode():
        out = model(**example, **fixed)
    hf_output = not isinstance(out, torch.Tensor)
    logits = hf_output and isinstance(getattr(out, "logits", None), torch.Tensor)   # a causal LM: its logits
    axes: dict[str, dict[int, str]] = {}
    for key, t in example.items():
        axes[key] = {0: "batch"}
        if not t.is_floating_point() and t.dim() >= 2:
            axes[key][1] = "sequence"
    if all_outputs:
        names = _output_axes(flatten_output(out)[0], example, axes)
    else:
        names = [HF_OUTPUT if hf_output and not logits else "logits"]
        axes[names[0]] = {0: "batch", 1: "sequence"} if hf_output else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = path if hasattr(path, "write") else str(path)
        torch.onnx.export(_Export(model, keys, all_outputs, fixed).eval(), tuple(example.values()), target,
                          dynamo=False, opset_version=17, input_names=keys, output_names=names,
                          dynamic_axes=axes, do_constant_folding=True, external_data=False,
                          training=torch.onnx.TrainingMode.PRESERVE if keep_norms else torch.onnx.TrainingMode.EVAL)
    return keys, hf_output


def _output_axes(outputs: list[torch.Tensor], example: dict[str, torch.Tensor],
                 axes: dict[str, dict[int, str]]) -> list[str]:
    """Names for `outputs` (output_0, ...), their dynamic axes added to `axes`."""
    batch = next(iter(example.values())).shape[0]
    seq = next((t.shape[1] for t in example.values() if not t.is_floating_point() and t.dim() >= 2), None)
    names = []
    for i, t in enumerate(outputs):
        name = f"output_{i}"
        names.append(name)
        dims = {}
        if t.dim() >= 1 and t.shape[0] == batch:
            dims[0] = "batch"
        if seq is not None and t.dim() >= 2 and t.shape[1] == seq:
            dims[1] = "sequence"
        axes[name] = dims
    return names


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose slimkit runtime modules are replaced by plain float equivalents."""

    out = strip_runtime(copy.deepcopy(model)).eval()
    for name, module in list(out.named_modules()):
        if not name or getattr(type(module), "slim_type", None) not in MODULE_TYPES or isinstance(module, TiedLMHead):
            continue   # a tied head reads the (now plain) embedding: one weight in the graph
        plain = _plain(module)
        parent_name, _, child = name.rpartition(".")
        setattr(out.get_submodule(parent_name) if parent_name else out, child, plain)
    return bind_tied_heads(out)


@torch.no_grad()
def _plain(module: nn.Module) -> nn.Module:
    if callable(getattr(module, "float_module", None)):  # a module that knows its float form (QuantConv2d)
        return module.float_module()
    weight = None
    for attr in ("dequantized_weight", "virtual_weight"):
        if callable(getattr(module, attr, None)):
            weight = getattr(module, attr)().float()
            break
    if weight is None and isinstance(getattr(type(module), "weight", None), property):
        weight = module.weight.float()
    if weight is None:
        raise SlimError(f"cannot export {type(module).__name__} to ONNX: it has no float equivalent")
    if hasattr(module, "embedding_dim"):
        emb = nn.Embedding(*weight.shape, padding_idx=getattr(module, "padding_idx", None))
        emb.weight.copy_(weight)
        return emb
    bias = getattr(module, "bias", None)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    lin.weight.copy_(weight)
    if bias is not None:
        lin.bias.copy_(bias.float())
    return lin


def export(model: nn.Module, path: str | os.PathLike, task: Any = None, integer: bool = True,
           overwrite: bool = True) -> dict:
    """Export `model` to ONNX at `path` (atomically) and check ONNX Runtime against slimkit.

    With `integer` (the default) int8 layers and quantized embeddings stay integer in the graph and
    coded weights stay coded; `integer=False` writes every layer as decoded fp32. Returns {"path",
    "bytes", "max_abs_diff", "cosine", "integer_layers", "coded_weights"} measured on the task's
    example inputs against slimkit's outputs in fp32 (the graph's activations are fp32, even for a
    model set to compute in bf16), with the kernels the graph mirrors: slimkit's integer kernels
    for a graph with integer layers, decoded weights otherwise (`slimkit.nn.kernels.kernel_mode`).
    The graph is built in memory and written atomically (`overwrite=False`: never replaces a file).

    >>> export(sk.load("minilm-int8.slim"), "minilm-int8.onnx")["integer_layers"]
    37
    """

    require("onnx", "onnx", "ONNX export")
    require("onnxruntime", "onnx", "ONNX export")
    task = task or task_for(model) or token_examples(model)
    if task is None:
        raise SlimError("ONNX export needs example inputs: use a builtin or Hugging Face model, or pass data= "
                        "(--data file.py:NAME) for a model of your own")
    path = Path(path)
    plain = float_copy(model)
    try:   # exported in memory: no temporary file that a symlink could redirect or a crash leave behind
        coded_convs = integer and any(getattr(m, "slim_type", None) == "QuantConv2d" for m in model.modules())
        graph = io.BytesIO()
        keys, hf_output = export_onnx(plain, task.example_inputs(2), graph, keep_norms=coded_convs)
        data, replaced, coded = _integer_bytes(graph.getvalue(), model) if integer else (graph.getvalue(), {}, {})
        del graph
    except SlimError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types; report one line
        raise SlimError(f"ONNX export failed: {str(exc).strip().splitlines()[0][:200]}") from None
    atomic_write(path, [data], overwrite)
    inputs = task.example_inputs(32)
    session = OrtModule(path, keys, hf_output, threads=1)
    reference = _fp32_reference(model)
    kernels = "compact" if replaced else "dense"  # what the graph computes: integer kernels or decoded weights
    with torch.inference_mode(), torch_only(), kernel_mode(kernels):
        ours = first_tensor(reference(**inputs)).float().flatten()
        theirs = first_tensor(session(**inputs)).float().flatten()
    cosine = float(torch.nn.functional.cosine_similarity(ours, theirs, dim=0))
    return {"path": str(path), "bytes": path.stat().st_size,
            "max_abs_diff": float((ours - theirs).abs().max()), "cosine": cosine,
            "integer_layers": len(replaced), "coded_weights": len(coded)}


def _fp32_reference(model: nn.Module) -> nn.Module:
    """`model` computing in fp32, as the exported graph does: the model itself, or a `.float()` copy
    when it holds low-precision floats or is set to compute in another dtype."""
    low = any(t.is_floating_point() and t.dtype != torch.float32
              for t in (*model.parameters(), *(b for b in model.buffers() if b is not None)))
    low = low or any(getattr(m, "compute_dtype", "float32") != "float32" for m in model.modules())
    return copy.deepcopy(model).float().eval() if low else model


def _integer_bytes(float_onnx: bytes, model: nn.Module) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The float export (its serialized bytes) rewritten with integer ops and coded weights for
    `model`, and what was rewritten."""
    import onnx

    proto = onnx.load_from_string(float_onnx)
    replaced = quantize_graph(proto, model)
    coded = compact_weights(proto, model)
    if not replaced and not coded:
        return float_onnx, replaced, coded
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), replaced, coded
