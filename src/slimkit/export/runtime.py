"""The "onnxruntime" and "auto" runtimes of `sk.load(path, runtime=...)`: a model's calls run in
ONNX Runtime where that is correct and (for "auto") faster, and in torch everywhere else.

The model stays the user's module (its submodules, state-dict keys, `.train()`, hooks): `install`
sets a dispatcher as the instance attribute `model.forward`, which `nn.Module.__call__` calls. Per
input signature (the tensor arguments' names, dtypes, ranks and fixed sizes; the batch, and the
sequence of integer token inputs, may vary) the first eligible call exports the model to ONNX in
memory (`export_onnx` on `float_copy`, every tensor of the output a graph output) and builds
ONNX Runtime sessions with torch's thread count: "ort-float" (every layer decoded to fp32) and, when
the model has integer layers, "ort-int" (`quantize_graph`: int8 matmuls, quantized embeddings).
"auto" only takes runners that compute what torch computes here: no graph for a model that computes
in bf16/fp16 on this machine, and "ort-int" only where torch's own int8 layers may run integer
kernels (VNNI or AMX, `fast_int_mm`); elsewhere its outputs equal torch's within fp32 rounding.
Each is checked on the first and last sample of the call against torch computing what the graph
computes (fp32, decoded weights for ort-float, the integer kernels for ort-int) and rejected
beyond its tolerance (`slimkit.export.runtime_graph`); then "auto" times torch and the accepted
sessions on the call itself (the median of interleaved rounds) and keeps the fastest, if it beats
torch by MARGIN, for that signature and batch bucket (1, 2-8, 9-64, 65-512, more). "onnxruntime"
takes ort-int if accepted, else ort-float, without timing.

A call runs torch when it cannot be answered by the graph: training mode; grad enabled while a
parameter or input requires grad; a non-tensor argument (other than None where the default is
None) or one the forward does not name (`use_cache`, `past_key_values`, `output_attentions`...);
inputs off the CPU, in bfloat16 or disagreeing on the batch size; forward hooks on a submodule; inside
`torch_only()`, tracing or compiling. Tensors changed in place or replaced after the export drop
the graphs (re-exported at the next eligible call, at most MAX_REBUILDS times). An export or session
that fails leaves the model on torch for good, with the reason in the report, never an error.

>>> model = sk.load("lenet-int8.slim", runtime="auto")
>>> with torch.no_grad():
...     y = model(x)                       # first call at this shape: export, check, time
>>> sk.runtime_report(model)["runtime"]["choices"]
{'x:float32[*,64] threads=2 batch=9-64': 'ort-float/1t'}
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import threading
import time
from typing import Any

import torch
from torch import nn

from slimkit.core.latency import paired_medians
from slimkit.export.onnx import flatten_output, rebuild_output
from slimkit.export.runtime_graph import Graph, hot_runner, one_line
from slimkit.export.runtime_guard import Signature, Watch, batch_label, call_key, gather
from slimkit.io.runtimes import RUNTIME_KEY, is_torch_only, register_runtime, strip_runtime
from slimkit.nn.compute_dtype import computes_below_fp32
from slimkit.nn.kernels import fast_int_mm
from slimkit.nn.kernels import runtime_report as kernel_report

MODES = ("auto", "onnxruntime")
MAX_GRAPHS = 4
MAX_PLANS = 256
MEASURE_S = 0.05
MARGIN = 0.1  # ONNX Runtime must be this much faster than torch to be chosen
MAX_REBUILDS = 3


class RuntimeDispatch:
    """`model.forward` of a model given the "onnxruntime" or "auto" runtime (see the module docstring).

    Also `model.__dict__["slimkit_runtime"]`: `state()` says what runs where. Copies (deepcopy,
    pickle) get a fresh dispatcher on the copy, which measures again at its first call."""

    def __init__(self, model: nn.Module, mode: str, previous_forward: Any = None):
        if mode not in MODES:
            raise ValueError(f"runtime mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.model = model
        self.mode = mode
        self.previous_forward = previous_forward
        self._reset()

    def _reset(self) -> None:
        self.graphs: dict[tuple, Graph] = {}
        self.choices: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}
        self.failure: str | None = None
        self.why_torch: str | None = None
        self.rebuilds = 0
        self._signature: Signature | None = None
        self._plans: dict[tuple, tuple | str] = {}
        self._watch: Watch | None = None
        self._lock = threading.Lock()
        self._busy = False
        self._hot: dict[tuple, tuple] = {}  # call_key -> (threads, runner or None for torch, needs grad)

    # --------------------------------------------------------------------- copies

    def __deepcopy__(self, memo: dict) -> RuntimeDispatch:
        return RuntimeDispatch(copy.deepcopy(self.model, memo), self.mode,
                               copy.deepcopy(self.previous_forward, memo))

    def __getstate__(self) -> dict:
        return {"model": self.model, "mode": self.mode, "previous_forward": self.previous_forward}

    def __setstate__(self, state: dict) -> None:
        self.model, self.mode, self.previous_forward = state["model"], state["mode"], state["previous_forward"]
        self._reset()

    @property
    def __signature__(self) -> inspect.Signature:
        """The model's own forward signature (Hugging Face inspects `model.forward`)."""
        return inspect.signature(self.torch_forward)

    # --------------------------------------------------------------------- calls

    @property
    def torch_forward(self) -> Any:
        """The forward this dispatcher stands in front of, bound (for its signature; calls go
        through `_torch`)."""
        if self.previous_forward is not None:
            return self.previous_forward
        return type(self.model).forward.__get__(self.model)

    def _torch(self, *args: Any, **kwargs: Any) -> Any:
        """The model's own forward on these arguments. Called through the class, not a bound method:
        torch.compile resolved `type(model).forward.__get__(model)` as `model.forward`, which is this
        dispatcher, and recursed until Python's limit."""
        if self.previous_forward is not None:
            return self.previous_forward(*args, **kwargs)
        return type(self.model).forward(self.model, *args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():   # a compiled caller traces the model's own forward
            return self._torch(*args, **kwargs)
        ck = call_key(args, kwargs) if self._hot else None
        hot = self._hot.get(ck) if ck is not None else None
        if hot is not None and hot[0] == torch.get_num_threads():
            if hot[1] is None:  # measured: torch is fastest for calls like this one
                return self._torch(*args, **kwargs)
            # the model check may drop the graphs (changed weights), and with them every hot entry
            if self._free() and self._check_model(hot[2]) is None and self._hot.get(ck) is hot:
                return hot[1](args, kwargs)
        return self._call(args, kwargs)

    def _call(self, args: tuple, kwargs: dict) -> Any:
        """A call off the hot path: the first of its kind, or one the graph may not answer now."""
        plan: Any = self._guard() or self._plan(args, kwargs)
        if isinstance(plan, str):
            self.why_torch = plan
            return self._torch(*args, **kwargs)
        sig, bucket, inputs_need_grad, names = plan
        key = ((sig, torch.get_num_threads()), bucket)
        choice = self.choices.get(key)
        if choice == "torch":  # measured slower here: torch, whatever else holds
            self._remember(args, kwargs, key, None, inputs_need_grad)
            return self._torch(*args, **kwargs)
        why = self._check_model(inputs_need_grad)
        if why is not None:
            self.why_torch = why
            return self._torch(*args, **kwargs)
        named = gather(names, args, kwargs)
        choice = self.choices.get(key)  # the check may have dropped the graphs
        if choice is None:
            out = self._first_call(key, named, args, kwargs)
            choice, graph = self.choices.get(key), self.graphs.get(key[0])
            if choice == "torch" or (choice is not None and graph is not None and choice in graph.sessions):
                runner = None if choice == "torch" else hot_runner(graph.sessions[choice], names, graph.spec)
                self._remember(args, kwargs, key, runner, inputs_need_grad)
            return out
        graph = self.graphs[key[0]]
        try:
            out = rebuild_output(graph.spec, graph.sessions[choice].run_all(named))
        except Exception as exc:  # noqa: BLE001 - a shape the graph cannot take: torch for this signature
            self._hot.clear()
            self.choices[key] = "torch"
            self.why_torch = f"{choice} failed on {batch_label(key)}: {one_line(exc)}"
            return self._torch(*args, **kwargs)
        self._remember(args, kwargs, key, hot_runner(graph.sessions[choice], names, graph.spec), inputs_need_grad)
        return out

    def _remember(self, args: tuple, kwargs: dict, key: tuple, runner: Any, inputs_need_grad: bool) -> None:
        """Put calls like this one (same `call_key`) on the hot path: straight to `runner` (None: torch)
        after the per-call checks. Not for inputs that require grad (their arrays need a detach)."""
        ck = call_key(args, kwargs)
        if ck is None or inputs_need_grad:
            return
        if len(self._hot) >= MAX_PLANS:
            self._hot.clear()
        self._hot[ck] = (key[0][1], runner, inputs_need_grad)

    def _free(self) -> bool:
        """Whether nothing rules the graph out now: `_guard`'s conditions as one cheap test (each
        microsecond counts on the hot path at batch 1 on a small model)."""
        return not (self._busy or self.failure is not None or self.model.training or is_torch_only()
                    or torch.jit.is_tracing() or torch.compiler.is_compiling())

    def _guard(self) -> str | None:
        """Why no call may use the graph now (None: it may)."""
        if self._free():
            return None
        if self._busy or is_torch_only():
            return "inside torch_only() or the runtime's own measurement"
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return "tracing or compiling"
        if self.failure is not None:
            return self.failure
        if self.model.training:
            return "the model is in training mode"
        return None

    def _plan(self, args: tuple, kwargs: dict) -> tuple | str:
        """(signature, batch bucket, whether an input requires grad, parameter names) for a call the
        graph can take, else why not; cached per `call_key`."""
        if self._signature is None:
            try:
                self._signature = Signature(self.torch_forward)
            except (TypeError, ValueError) as exc:
                self.failure = f"the forward's signature cannot be read: {one_line(exc)}"
                return self.failure
        ck = call_key(args, kwargs)
        plan = self._plans.get(ck) if ck is not None else None
        if plan is None:
            names, why = self._signature.bind(args, kwargs)
            if names is None:
                plan = why
            else:
                named = gather(names, args, kwargs)
                plan = (*Signature.key(named), any(t.requires_grad for t in named.values()), names)
            if ck is not None:
                if len(self._plans) >= MAX_PLANS:
                    self._plans.clear()
                self._plans[ck] = plan
        return plan

    def _check_model(self, inputs_need_grad: bool) -> str | None:
        """Why the model, as it is now, cannot use the graph (None: it can)."""
        watch = self._watch
        if watch is None:
            watch = self._watch = Watch(self.model)
        elif watch.changed(self.model):
            if not self._forget("the model's tensors changed after its graph was exported"):
                return self.failure
            watch = self._watch = Watch(self.model)
        if torch.is_grad_enabled() and (inputs_need_grad or watch.needs_grad()):
            return "grad is enabled and a parameter or input requires grad"
        if watch.hooked():
            return "forward hooks are registered on a submodule"
        return None

    def _forget(self, why: str) -> bool:
        """Drop every graph and choice; False (torch for good) after MAX_REBUILDS times."""
        self._hot.clear()
        if not self.graphs and not self.choices:
            return True
        self.graphs.clear()
        self.choices.clear()
        self.timings.clear()
        self.rebuilds += 1
        if self.rebuilds > MAX_REBUILDS:
            self.failure = f"{why} {self.rebuilds} times: running torch from now on"
            return False
        return True

    # --------------------------------------------------------------------- the first call per signature

    def _first_call(self, key: tuple, named: dict[str, torch.Tensor], args: tuple, kwargs: dict) -> Any:
        self._hot.clear()  # a measurement may drop sessions other hot entries run
        with self._lock:
            self._busy = True
            try:
                choice, out = self._measure(key, named, args, kwargs)
            finally:
                self._busy = False
        self.choices[key] = choice
        return out

    def _measure(self, key: tuple, named: dict, args: tuple, kwargs: dict) -> tuple[str, Any]:
        reference = self._torch(*args, **kwargs)  # the user's own result (errors are theirs)
        try:
            return self._pick(key, named, args, kwargs, reference)
        except Exception as exc:  # noqa: BLE001 - the runtime never fails a call torch can answer
            self.failure = f"the runtime's measurement failed: {one_line(exc)}"
            return "torch", reference

    def _pick(self, key: tuple, named: dict, args: tuple, kwargs: dict, reference: Any) -> tuple[str, Any]:
        try:
            tensors, spec = flatten_output(reference)
        except TypeError as exc:
            self.failure = f"ONNX Runtime cannot return this output: {exc}"
            return "torch", reference
        graph = self.graphs.get(key[0])
        if graph is None and self.mode == "auto":
            low = computes_below_fp32(self.model)
            if low is not None:   # the graphs compute fp32: their outputs would not be torch's
                self.why_torch = f"the model computes in {low} here and the ONNX graphs in float32 (exact: torch)"
                return "torch", reference
        if graph is None:
            if len(self.graphs) >= MAX_GRAPHS:
                self.why_torch = f"more than {MAX_GRAPHS} input signatures: torch for the others"
                return "torch", reference
            graph = self._build(named)
            if graph is None:
                return "torch", reference
            self.graphs[key[0]] = graph
        graph.spec = spec
        graph.check(self._torch, named)
        for other in [k for k, v in self.choices.items() if k[0] == key[0] and v in graph.rejected]:
            del self.choices[other]  # a session this sample rejected: that bucket measures again
        runs = {"torch": lambda: self._torch(*args, **kwargs)}
        for name in graph.usable():
            if graph.same_shapes(name, named, tensors):
                runs[name] = lambda s=graph.sessions[name]: rebuild_output(spec, s.run_all(named))
        if self.mode == "onnxruntime":
            choice = next((n for n in ("ort-int", "ort-float") if n in runs), "torch")
            if choice == "torch":
                self.why_torch = "; ".join(graph.rejected.values()) or "no ONNX Runtime candidate"
                return choice, reference
            graph.prune({choice}, done=True)
            return choice, runs[choice]()
        times, outs = paired_medians(runs, self._reps(runs["torch"]))
        self.timings[key] = {n: round(t * 1e3, 4) for n, t in times.items()}
        fastest = min(times, key=times.get)
        choice = fastest if times[fastest] < (1 - MARGIN) * times["torch"] else "torch"
        if choice == "torch":
            self.why_torch = "; ".join([*graph.rejected.values(), f"torch measured fastest on {batch_label(key)}"])
        graph.decided.add(key[1])
        graph.prune({choice, *(v for k, v in self.choices.items() if k[0] == key[0])})
        return choice, outs[choice]

    def _reps(self, run_torch: Any) -> int:
        """Rounds of timing: as many as fit MEASURE_S per runner at torch's speed, 3 to 25 (each
        round calls every runner twice)."""
        start = time.perf_counter()
        run_torch()
        return max(3, min(25, int(MEASURE_S / max(time.perf_counter() - start, 1e-6))))

    def _build(self, named: dict[str, torch.Tensor]) -> Graph | None:
        for module in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(module) is None:
                self.failure = f"the optional package {module!r} is not installed (pip install 'slimkit[onnx]')"
                return None
        try:
            with torch.inference_mode(False), torch.no_grad():
                auto = self.mode == "auto"
                return Graph.export(self.model, named, traced=auto, integer=not auto or fast_int_mm())
        except Exception as exc:  # noqa: BLE001 - torch.onnx raises many types: keep the reason, run torch
            self.failure = f"ONNX export failed: {one_line(exc)}"
            return None

    # --------------------------------------------------------------------- report

    def state(self) -> dict:
        """{"runtime", "choices": {signature: runner}, "timings_ms", "checks" (relative error of each
        session on its check samples, the largest so far), "tolerances" (the smallest), "rejected",
        "onnx_bytes" (serialized graphs behind the open sessions: about what ONNX Runtime holds),
        "why_torch" (why the last torch call was not answered by ONNX Runtime, or why it never is)}."""
        return {"runtime": self.mode,
                "choices": {batch_label(k): v for k, v in self.choices.items()},
                "timings_ms": {batch_label(k): v for k, v in self.timings.items()},
                "checks": {f"{g.label} {n}": e for g in self.graphs.values() for n, e in g.checks.items()},
                "tolerances": {f"{g.label} {n}": t for g in self.graphs.values() for n, t in g.tolerances.items()},
                "rejected": {f"{g.label} {n}": r for g in self.graphs.values() for n, r in g.rejected.items()},
                "onnx_bytes": sum(g.bytes() for g in self.graphs.values()),
                "why_torch": self.failure or self.why_torch}


def install(model: nn.Module, mode: str) -> nn.Module:
    """Put `model`'s calls behind a `RuntimeDispatch` in `mode` ("auto" or "onnxruntime"); returns it."""
    strip_runtime(model)
    dispatch = RuntimeDispatch(model, mode, model.__dict__.get("forward"))
    model.__dict__["forward"] = dispatch
    model.__dict__[RUNTIME_KEY] = dispatch
    return model


def runtime_report(model: nn.Module) -> dict:
    """`slimkit.nn.kernels.runtime_report(model)` plus "runtime": the dispatcher's `state()`
    (or {"runtime": "torch"} for a model without one)."""
    report = kernel_report(model)
    dispatch = model.__dict__.get(RUNTIME_KEY)
    report["runtime"] = dispatch.state() if dispatch is not None else {"runtime": "torch"}
    return report


def _install_auto(model: nn.Module) -> nn.Module:
    return install(model, "auto")


def _install_onnxruntime(model: nn.Module) -> nn.Module:
    return install(model, "onnxruntime")


register_runtime("auto", _install_auto)
register_runtime("onnxruntime", _install_onnxruntime)
