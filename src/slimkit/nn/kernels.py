"""Per-layer kernel choice: a compressed layer runs each batch shape the fastest correct way it has.

A layer with several ways to compute the same function (an `Int8Linear`: integer `_int_mm`,
fbgemm's packed int8 kernel, or a matmul on its weight decoded once to fp32) hands them to a
`KernelChoice`. On the first call in a shape bucket (rows of the input: 1, 2-8, 9-64, 65-512,
more) it times every usable candidate on that very input, keeps the fastest whose output agrees
with the layer's reference, and caches the choice (shared by every layer of the same kind and
size, so a model measures each shape once). Later calls in the bucket only look the choice up.
Single rows are timed with the caches flushed: a model decoding one token at a time reads every
weight from RAM, where a kernel reading 4- or 8-bit codes (`slimkit.nn.torch_pack`: torch's
`_weight_int4pack_mm_for_cpu` / `_weight_int8pack_mm` on bf16 activations, "pack"; `slimkit.nn.nbits`:
ONNX Runtime's MatMulNBits, "nbits"; for `Int8Linear`, `QuantLinear` and a head tied to a quantized
embedding) beats an fp32 matmul that a warm cache would favour. A layer that runs such a lean kernel in one bucket
keeps no decoded copy for another (`KernelChoice`'s `lean` / `decoded`).

Modes (`SLIMKIT_KERNELS`, `set_kernel_mode`, or `kernel_mode(...)` for a block):
- "auto" (default): measure and pick, as above. Candidates a CPU cannot run well are not tried:
  `_int_mm` and fbgemm need VNNI or AMX (`fast_int_mm`, `has_fbgemm`).
- "compact": never keep a decoded copy or packed kernel; integer kernels (or decoding per call)
  only (the least memory).
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

from slimkit.core.torch_utils import cpu_supports

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
    _TRIALS.clear()


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
    return cpu_supports("_is_vnni_supported", "_is_amx_tile_supported")


@functools.lru_cache(maxsize=1)
def has_fbgemm() -> bool:
    """Whether fbgemm's int8 kernels are exact here: torch's x86 quantized engine is built in and
    the CPU has VNNI or AMX. Without them fbgemm multiplies uint8 by int8 with a 16-bit saturating
    instruction (vpmaddubsw): 13% relative error on a random layer, 0.9927 cosine on MiniLM
    (measured on AVX2), unless activations drop to 7 bits."""
    return fast_int_mm() and any(e in torch.backends.quantized.supported_engines for e in ("fbgemm", "x86"))


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.detach().float(), ref.detach().float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-12))


TRIAL_SAMPLES = 3   # timed single-row calls per candidate, over the layers of a kind, before choosing
_TRIALS: dict[tuple, dict[str, list[float]]] = {}


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
    first input of each bucket; called only when there is something to measure).

    Memory stays honest: once a `lean` candidate (one that reads the stored codes, holding no
    decoded weight) runs a bucket, the `decoded` candidates are off for every bucket of the layer
    (a bucket that chose one measures again at its next call), and after each choice `release`
    gets the names the layer still runs, to drop the caches of the others. `per_call` candidates
    (a matmul on the weight decoded for the call and dropped: exact, and held only during the call)
    take the decoded ones' place in buckets of more than one row once they are off: a layer whose
    batch-1 decoding reads its codes still multiplies large batches at fp32 speed."""

    def __init__(self, kind: tuple, candidates: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                 lean: tuple[str, ...] = (), decoded: tuple[str, ...] = (),
                 release: Callable[[set[str]], None] | None = None, per_call: tuple[str, ...] = ()):
        self.kind = kind
        self.candidates = candidates
        self.lean = tuple(n for n in lean if n in candidates)
        self.decoded, self.release = decoded, release
        self.per_call = tuple(n for n in per_call if n in candidates)
        self.chosen: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.names: dict[int, str] = {}
        self.timings: dict[int, dict[str, float]] = {}
        self.warm: set[str] = set()   # candidates this layer has run once (their caches are built)

    def run(self, x2: torch.Tensor, reference: Callable[[], tuple[torch.Tensor, float]]) -> torch.Tensor:
        """The chosen kernel's output on `x2` (rows x features), choosing first if its bucket is new."""
        rows = x2.shape[0]
        b = 1 if rows == 1 else bucket(rows)
        fn = self.chosen.get(b)
        if fn is None:
            if b == 1 and self.lean:
                return self._trial(x2, reference)
            fn = self.candidates[self.pick(b, x2, reference)]
        return fn(x2)

    def _key(self, b: int, x2: torch.Tensor) -> tuple:
        return (*self.kind, b, x2.dtype, torch.get_num_threads())

    def _allowed(self, b: int) -> dict:
        skip = set(self.per_call)   # where a cached decoded copy may run, it is as exact and faster
        if b != 1 and any(n in self.lean for other, n in self.names.items() if other != b):
            skip = set(self.decoded)
        if not skip:
            return self.candidates
        return {k: v for k, v in self.candidates.items() if k not in skip} or self.candidates

    def pick(self, b: int, x2: torch.Tensor, reference: Callable[[], tuple[torch.Tensor, float]]) -> str:
        key, allowed = self._key(b, x2), self._allowed(b)
        name = _SHARED.get(key)
        if name not in allowed:
            name = self._measure(b, x2, allowed, reference)
            if name is None and allowed is not self.candidates:   # no lean kernel is exact enough
                name = self._measure(b, x2, self.candidates, reference)
            name = _SHARED[key] = name or next(iter(self.candidates))
        return self._settle(b, name)

    def _trial(self, x2: torch.Tensor, reference: Callable[[], tuple[torch.Tensor, float]]) -> torch.Tensor:
        """One row where a lean kernel competes: timed where it runs, inside the model, rather than
        in a loop on one layer whose weights a warm cache would hold (a model decoding a token reads
        every weight from RAM). The first call of a kind checks every candidate against the reference;
        later calls of its layers each time one candidate (after an untimed first call per layer, which
        builds its cache) until each has TRIAL_SAMPLES; the lowest median wins for the whole kind."""
        key, allowed = self._key(1, x2), self._allowed(1)
        name = _SHARED.get(key)
        if name in allowed:
            return self.candidates[self._settle(1, name)](x2)
        samples = _TRIALS.get(key)
        if samples is None or not set(samples) <= set(allowed):
            samples = _TRIALS[key] = self._passing(x2, allowed, reference)
        if len(samples) <= 1:
            name = _SHARED[key] = next(iter(samples), next(iter(self.candidates)))
            _TRIALS.pop(key, None)
            return self.candidates[self._settle(1, name)](x2)
        name = min(samples, key=lambda n: len(samples[n]))
        if name not in self.warm:
            self.warm.add(name)
            return self.candidates[name](x2)
        start = time.perf_counter()
        y = self.candidates[name](x2)
        samples[name].append(time.perf_counter() - start)
        if all(len(v) >= TRIAL_SAMPLES for v in samples.values()):
            self.timings[1] = {n: sorted(v)[len(v) // 2] for n, v in samples.items()}
            best = _SHARED[key] = min(self.timings[1], key=self.timings[1].get)
            _TRIALS.pop(key, None)
            self._settle(1, best)
        return y

    def _passing(self, x2: torch.Tensor, allowed: dict,
                 reference: Callable[[], tuple[torch.Tensor, float]]) -> dict[str, list[float]]:
        """{name: []} for the candidates whose output on `x2` agrees with the reference (all of them
        when no lean one does in a restricted set)."""
        with torch.no_grad():
            ref, tolerance = reference()
            passing = {n: [] for n, fn in allowed.items() if rel_err(fn(x2), ref) <= tolerance}
            if not passing and allowed is not self.candidates:
                passing = {n: [] for n, fn in self.candidates.items() if rel_err(fn(x2), ref) <= tolerance}
        self.warm.update(passing)
        return passing

    def _settle(self, b: int, name: str) -> str:
        self.names[b], self.chosen[b] = name, self.candidates[name]
        if name in self.lean:
            for other in [o for o, n in self.names.items() if n in self.decoded]:
                del self.names[other], self.chosen[other]
        if self.release is not None:
            self.release(set(self.names.values()))
        return name

    def _measure(self, b: int, x2: torch.Tensor, candidates: dict,
                 reference: Callable[[], tuple[torch.Tensor, float]]) -> str | None:
        """The fastest of `candidates` on `x2` whose output agrees with the reference; None if none does."""
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
        return min(times, key=times.get) if times else None

    def describe(self) -> dict[str, str]:
        return {("rows>512" if b == 0 else f"rows<={b}"): n for b, n in sorted(self.names.items())}


def settled_kernel(module: nn.Module, rows: int):
    """The kernel object reading the codes ("pack" or "nbits") that `module` settled on for inputs of
    `rows` rows and has built, else None. A compiled decode step (`torch.compile`) calls it directly:
    no timing, no cache-version checks, nothing dynamo cannot trace."""
    choice = module.__dict__.get("_kernel_choice")
    if choice is None:
        return None
    name = choice.names.get(1 if rows == 1 else bucket(rows))
    if name not in ("pack", "nbits"):
        return None
    cache = module.__dict__.get(f"_{name}_cache")
    return cache.get("kernel") if isinstance(cache, dict) else getattr(cache, "value", None)


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
