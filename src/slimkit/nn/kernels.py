"""Per-layer kernel choice: a compressed layer runs each batch shape the fastest correct way it has.

A layer with several ways to compute the same function (an `Int8Linear`: integer `_int_mm`,
fbgemm's packed int8 kernel, or a matmul on its weight decoded once to fp32) hands them to a
`KernelChoice`. On the first call in a shape bucket (rows of the input: 1, 2-8, 9-64, 65-512,
more) it times every usable candidate on that very input, keeps the fastest whose output agrees
with the layer's reference, and caches the choice (shared by every layer of the same kind and
size, so a model measures each shape once). Later calls in the bucket only look the choice up.

Modes (`SLIMKIT_KERNELS`, `set_kernel_mode`, or `kernel_mode(...)` for a block):
- "auto" (default): measure and pick, as above. Candidates a CPU cannot run well are not tried:
  `_int_mm` and fbgemm need VNNI or AMX (`fast_int_mm`, `has_fbgemm`).
- "compact": never keep a decoded copy; integer kernels only (the least memory).
- "dense": always the decoded weight (fp32 speed, exact up to the stored codes).

Decoded copies cost memory; `runtime_report(model)` lists each layer's choices and the bytes its
caches hold.

>>> with kernel_mode("dense"):
...     y = model(x)
>>> runtime_report(model)["cache_bytes"]
1179648
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Iterator

import torch
from torch import nn

KERNEL_ENV = "SLIMKIT_KERNELS"
MODES = ("auto", "compact", "dense")
BUCKETS = (1, 8, 64, 512)
_FORCED: list[str] = []
_SHARED: dict[tuple, str] = {}
_PROCESS = {"mode": os.environ.get(KERNEL_ENV, "auto")}  # read once: os.environ costs ~2 us a call


def check_mode(mode: object) -> str:
    """`mode` if it is one of MODES, else ValueError naming it."""
    if mode not in MODES:
        raise ValueError(f"kernel mode must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def current_mode() -> str:
    """The kernel mode in force: a `kernel_mode` block, else `set_kernel_mode`'s, else
    SLIMKIT_KERNELS as the process started, else "auto"."""
    if _FORCED:
        return _FORCED[-1]
    mode = _PROCESS["mode"]
    return mode if mode in MODES else "auto"


@contextlib.contextmanager
def kernel_mode(mode: str) -> Iterator[None]:
    """Run every compressed layer in `mode` inside the block (see the module docstring)."""
    _FORCED.append(check_mode(mode))
    try:
        yield
    finally:
        _FORCED.pop()


def set_kernel_mode(mode: str) -> None:
    """Set the process-wide kernel mode (as SLIMKIT_KERNELS=mode at start does)."""
    _PROCESS["mode"] = check_mode(mode)


def forget_choices() -> None:
    """Drop every cached choice (e.g. after changing the thread count); the next calls re-measure."""
    _SHARED.clear()


def bucket(rows: int) -> int:
    """The shape bucket of an input with `rows` rows: the smallest of BUCKETS that holds it, else 0."""
    for b in BUCKETS:
        if rows <= b:
            return b
    return 0


@functools.lru_cache(maxsize=1)
def fast_int_mm() -> bool:
    """Whether `torch._int_mm` has fast CPU kernels here (VNNI or AMX); without them it runs a
    reference loop 20-40x slower than an fp32 matmul (measured on AVX2), so auto never tries it."""
    for probe in ("_is_vnni_supported", "_is_amx_tile_supported"):
        try:
            if getattr(torch.cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


@functools.lru_cache(maxsize=1)
def has_fbgemm() -> bool:
    """Whether fbgemm's int8 kernels are exact here: torch's x86 quantized engine is built in and
    the CPU has VNNI or AMX. Without them fbgemm multiplies uint8 by int8 with a 16-bit saturating
    instruction (vpmaddubsw): 13% relative error on a random layer, 0.9927 cosine on MiniLM
    (measured on AVX2), unless activations drop to 7 bits."""
    return fast_int_mm() and any(e in torch.backends.quantized.supported_engines for e in ("fbgemm", "x86"))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))


def _best_time(fn: Callable[[], torch.Tensor], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class KernelChoice:
    """The cached choice of one layer: which candidate runs each shape bucket.

    `candidates` maps names to callables of the input; `reference()` returns the layer's exact
    output on that input and the relative error a candidate may have against it (checked on the
    first input of each bucket; called only when there is something to measure)."""

    def __init__(self, kind: tuple, candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]]):
        self.kind = kind
        self.candidates = candidates
        self.chosen: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.names: dict[int, str] = {}
        self.timings: dict[int, dict[str, float]] = {}

    def run(self, x2: torch.Tensor, reference: Callable[[], tuple[torch.Tensor, float]]) -> torch.Tensor:
        """The chosen kernel's output on `x2` (rows x features), choosing first if its bucket is new."""
        rows = x2.shape[0]
        b = 1 if rows == 1 else bucket(rows)
        fn = self.chosen.get(b)
        if fn is None:
            fn = self.candidates[self.pick(b, x2, reference)]
        return fn(x2)

    def pick(self, b: int, x2: torch.Tensor, reference: Callable[[], tuple[torch.Tensor, float]]) -> str:
        key = (*self.kind, b, x2.dtype, torch.get_num_threads())
        name = _SHARED.get(key)
        if name not in self.candidates:
            name = _SHARED[key] = self._measure(b, x2, self.candidates, reference)
        self.names[b], self.chosen[b] = name, self.candidates[name]
        return name

    def _measure(self, b: int, x2: torch.Tensor, candidates: dict,
                 reference: Callable[[], tuple[torch.Tensor, float]]) -> str:
        if len(candidates) == 1:
            return next(iter(candidates))
        times: dict[str, float] = {}
        with torch.no_grad():
            reference, tolerance = reference()
            for name, fn in candidates.items():
                y = fn(x2)  # warm-up (packs weights, decodes caches)
                if rel_err(y, reference) > tolerance:
                    continue
                reps = 2 if x2.shape[0] > 256 else 5
                times[name] = _best_time(lambda fn=fn: fn(x2), reps)
        self.timings[b] = times
        if not times:
            return next(iter(candidates))
        return min(times, key=times.get)

    def describe(self) -> dict[str, str]:
        return {("rows>512" if b == 0 else f"rows<={b}"): n for b, n in sorted(self.names.items())}


def cache_bytes(module: nn.Module) -> int:
    """Bytes held by `module`'s runtime caches (decoded weights, packed kernels), as it reports them."""
    report = getattr(module, "runtime_state", None)
    return int(report()["cache_bytes"]) if callable(report) else 0


def runtime_report(model: nn.Module) -> dict:
    """What each compressed layer of `model` runs and the memory its caches hold.

    Returns {"mode", "cache_bytes", "layers": {name: {"choices": {bucket: kernel}, "cache_bytes"}}};
    layers list only modules that report (`runtime_state()`)."""
    layers = {}
    for name, module in model.named_modules():
        state = getattr(module, "runtime_state", None)
        if callable(state):
            layers[name] = state()
    total = sum(entry["cache_bytes"] for entry in layers.values())
    return {"mode": current_mode(), "cache_bytes": total, "layers": layers}
