"""One input signature of a model given the "auto" or "onnxruntime" runtime, exported: its ONNX
Runtime sessions, their correctness checks, and the output structure they rebuild.

The check runs at the first call of each signature and batch bucket, on the first and the last
sample of the call (batch slices 0:1 and -1:), against torch computing what each graph computes:
fp32 activations (`forced_compute_dtype("float32")`), and
  - "ort-float" (every layer decoded to fp32): torch with `kernel_mode("dense")` (decoded weights).
    Only fp32 summation order differs; accepted within FLOAT_TOL.
  - "torch-graph" (the same decoded model traced by TorchScript and frozen: no Python per module,
    which is most of a small model's time at batch 1): torch with `kernel_mode("dense")`, within
    FLOAT_TOL (freezing folds BatchNorm into convolutions: fp32 rounding only).
  - "ort-int" (int8 matmuls on per-token quantized activations): torch with `kernel_mode("compact")`
    (its integer kernels). A rounding flip of one quantized activation (an fp32 difference in the
    last bit) changes the next layer's input by one step, which flips others downstream: in a deep
    model the two integer paths drift as far apart as either is from the decoded weights. Accepted
    within INT_FACTOR times torch's own integer-vs-decoded difference on the same sample (the
    rule `slimkit.nn.kernels` applies per layer), and never beyond INT_TOL.
Measured on this project's models: docs/runtime.md, "Runtimes".
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from slimkit.export.onnx import (
    OrtModule,
    _Export,
    _integer_bytes,
    export_onnx,
    flatten_output,
    float_copy,
    rebuild_output,
)
from slimkit.export.runtime_guard import Signature, gather, signature_label
from slimkit.nn.kernels import kernel_mode, rel_err
from slimkit.nn.quant_linear import forced_compute_dtype

FLOAT_TOL = 1e-5
INT_FACTOR = 2.0
INT_FLOOR = 1e-4
INT_TOL = 0.2
SMALL_GRAPH = 8 << 20  # float graphs up to this size also get single-thread sessions ("ort-float/1t")


class TracedGraph:
    """A plain (decoded) copy of the model traced by TorchScript and frozen, behind `run_all`."""

    def __init__(self, plain: nn.Module, example: dict[str, torch.Tensor]):
        self.keys = list(example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python values: the check decides
            traced = torch.jit.trace(_Export(plain, self.keys, all_outputs=True).eval(),
                                     tuple(example.values()), check_trace=False)
            self.module = torch.jit.freeze(traced)
        self.bytes = sum(t.numel() * t.element_size() for t in (*plain.parameters(), *plain.buffers()))

    def run_all(self, named: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        out = self.module(*[named[k] for k in self.keys])
        return list(out) if isinstance(out, (tuple, list)) else [out]


class Graph:
    """The runners of one signature: "ort-float", "ort-int" when the model has integer layers, and
    "torch-graph" (for "auto")."""

    def __init__(self, label: str, sessions: dict[str, OrtModule], sizes: dict[str, int]):
        self.label = label
        self.sessions = sessions
        self.sizes = sizes
        self.spec: Any = None
        self.checks: dict[str, float] = {}
        self.tolerances: dict[str, float] = {}
        self.rejected: dict[str, str] = {}
        self.decided: set[int] = set()

    @classmethod
    def export(cls, model: nn.Module, named: dict[str, torch.Tensor], traced: bool = False,
               integer: bool = True) -> Graph:
        """Export `model` for the inputs `named` (their first sample, twice: batch 2 keeps the batch
        axis dynamic) and open a session per graph, with torch's thread count; with `traced`, also
        the TorchScript runner (left out, with no error, where tracing fails); with `integer`, also
        "ort-int" where the model has integer layers."""
        example = {k: torch.cat([v[:1], v[:1]]) for k, v in named.items()}
        has_convs = any(getattr(m, "slim_type", None) == "QuantConv2d" for m in model.modules())
        threads = torch.get_num_threads()
        plain = float_copy(model)
        plain._forward_hooks.clear()  # the model's own hooks run around the session, not inside it
        plain._forward_pre_hooks.clear()
        graph = io.BytesIO()   # in memory: no file on disk
        keys, _ = export_onnx(plain, example, graph, keep_norms=has_convs, all_outputs=True)
        graphs = {"ort-float": graph.getvalue()}
        data, replaced, _ = _integer_bytes(graphs["ort-float"], model) if integer else (b"", {}, {})
        if replaced:  # integer ops; coded weights alone decode to the float graph at load
            graphs["ort-int"] = data
        sessions: dict[str, Any] = {n: OrtModule(data, keys, False, threads, spin=False) for n, data in graphs.items()}
        sizes = {n: len(d) for n, d in graphs.items()}
        if traced and threads > 1 and sizes["ort-float"] <= SMALL_GRAPH:
            for n, data in graphs.items():  # a small graph may not pay for waking a second thread
                sessions[f"{n}/1t"] = OrtModule(data, keys, False, 1, spin=False)
                sizes[f"{n}/1t"] = len(data)
        if traced:
            try:
                sessions["torch-graph"] = TracedGraph(plain, example)
                sizes["torch-graph"] = sessions["torch-graph"].bytes
            except Exception:  # noqa: BLE001 - TorchScript cannot take every model: the others remain
                pass
        label = signature_label((Signature.key(named)[0], threads))
        return cls(label, sessions, sizes)

    def usable(self) -> list[str]:
        return [n for n in self.sessions if n not in self.rejected]

    def check(self, forward: Callable[..., Any], named: dict[str, torch.Tensor]) -> None:
        """Check the sessions not yet rejected against torch (`forward`) on the first and the last
        sample of the call (module docstring). `checks` keeps each session's largest error so far,
        `tolerances` its smallest tolerance; a session is rejected when one sample is outside its own."""
        batch = next(iter(named.values())).shape[0]
        for rows in (slice(0, 1), slice(batch - 1, batch)) if batch > 1 else (slice(0, 1),):
            todo = self.usable()
            if todo:
                self._check_sample(forward, {k: v[rows] for k, v in named.items()}, todo)

    def _check_sample(self, forward: Callable[..., Any], sample: dict[str, torch.Tensor], todo: list[str]) -> None:
        try:
            with torch.no_grad(), forced_compute_dtype("float32"):
                with kernel_mode("dense"):
                    refs = {"ort-float": flatten_output(forward(**sample))[0]}
                if any(base_name(n) == "ort-int" for n in todo):
                    with kernel_mode("compact"):
                        refs["ort-int"] = flatten_output(forward(**sample))[0]
        except Exception as exc:  # noqa: BLE001 - torch's own kernels failed on the sample: no check, no graph
            for name in todo:
                self._reject(name, float("inf"), f"{name}: the torch reference failed: {one_line(exc)}")
            return
        refs["torch-graph"] = refs["ort-float"]
        tolerances = {"ort-float": FLOAT_TOL, "torch-graph": FLOAT_TOL}
        if "ort-int" in refs:
            own = error(refs["ort-int"], refs["ort-float"])
            tolerances["ort-int"] = min(INT_TOL, max(INT_FLOOR, INT_FACTOR * own))
        for name in todo:
            try:
                err = error(self.sessions[name].run_all(sample), refs[base_name(name)])
            except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime cannot run: reject it, say why
                self._reject(name, float("inf"), f"{name} failed on a check sample: {one_line(exc)}")
                continue
            self.checks[name] = max(err, self.checks.get(name, 0.0))
            tolerance = tolerances[base_name(name)]
            self.tolerances[name] = min(tolerance, self.tolerances.get(name, float("inf")))
            if not err <= tolerance:
                self.rejected[name] = f"{name} differs from torch by {err:.2e} (relative) > {tolerance:.1e}"

    def _reject(self, name: str, err: float, why: str) -> None:
        self.checks[name] = max(err, self.checks.get(name, 0.0))
        self.rejected[name] = why

    def same_shapes(self, name: str, named: dict, tensors: list[torch.Tensor]) -> bool:
        """Whether session `name` returns torch's tensor shapes on the whole call (also its warm-up)."""
        try:
            outs = self.sessions[name].run_all(named)
        except Exception as exc:  # noqa: BLE001
            batch = next(iter(named.values())).shape[0]
            self.rejected[name] = f"{name} failed at batch {batch}: {one_line(exc)}"
            return False
        if [tuple(o.shape) for o in outs] != [tuple(t.shape) for t in tensors]:
            self.rejected[name] = f"{name} returns other shapes than torch"
            return False
        return True

    def prune(self, keep: set[str], done: bool = False) -> None:
        """Once two batch buckets are decided (or `done`), close the sessions not in `keep` (a bucket
        measured later chooses among torch and the sessions kept)."""
        if len(self.decided) < 2 and not done:
            return
        for name in [n for n in self.sessions if n not in keep]:
            del self.sessions[name]

    def bytes(self) -> int:
        """Bytes of the serialized graphs behind the open sessions."""
        return sum(self.sizes[n] for n in self.sessions)


def hot_runner(session: Any, names: list[str | None], spec: Any) -> Callable[[tuple, dict], Any]:
    """`runner(args, kwargs)`: `session`'s answer to a call whose arguments bind to `names`
    (`Signature.bind`), in the output structure `spec`. For an ONNX Runtime session it feeds the
    arrays straight to the C++ binding and, for a single-tensor output, skips the rebuilding: at
    batch 1 a small graph runs in ~12 us, so each microsecond around it counts."""
    if not isinstance(session, OrtModule):
        return lambda args, kwargs: rebuild_output(spec, session.run_all(gather(names, args, kwargs)))
    run, outputs, feeds = session._run, session._outputs, session.feeds
    fed = [(i, n) for i, n in enumerate(names) if n is not None and n in feeds]
    if spec[0] == "tensor" and len(outputs) == 1:
        dtype = spec[1]

        def single(args: tuple, kwargs: dict) -> Any:
            values = (*args, *kwargs.values()) if kwargs else args
            out = torch.from_numpy(run(outputs, {n: values[i].numpy() for i, n in fed}, None)[0])
            return out if out.dtype == dtype else out.to(dtype)

        return single

    def structured(args: tuple, kwargs: dict) -> Any:
        values = (*args, *kwargs.values()) if kwargs else args
        arrays = run(outputs, {n: values[i].numpy() for i, n in fed}, None)
        return rebuild_output(spec, [torch.from_numpy(a) for a in arrays])

    return structured


def base_name(name: str) -> str:
    """The graph a runner runs: "ort-float" for "ort-float/1t" (the same graph on one thread)."""
    return name.split("/", 1)[0]


def error(ours: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """The largest relative L2 error over the output tensors (inf when shapes or integers differ)."""
    if len(ours) != len(ref):
        return float("inf")
    worst = 0.0
    for a, b in zip(ours, ref, strict=True):
        if a.shape != b.shape:
            return float("inf")
        if b.is_floating_point():
            worst = max(worst, rel_err(a, b))
        elif not torch.equal(a.to(b.dtype), b):
            return float("inf")
    return worst


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"
