"""Wall-clock latency: median of repeated runs after warm-up, at a fixed thread count."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from slimkit.core.torch_utils import default_threads, num_threads


def time_call(fn: Callable[[], object], repeats: int = 20, warmup: int = 3,
              min_seconds: float = 0.0) -> list[float]:
    """Run `fn` `warmup` times, then time at least `repeats` runs (and `min_seconds` in all).

    Returns the individual times in milliseconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3,
              threads: int | None = None) -> float:
    """Median latency of `fn` in ms under `threads` torch threads (default: `default_threads()`)."""
    with num_threads(threads or default_threads()), torch.inference_mode():
        return statistics.median(time_call(fn, repeats, warmup))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5, repeats: int = 5,
                warmup: int = 2, threads: int | None = None, settle_s: float = 0.0) -> dict[str, float]:
    """Median ms per candidate, measured in interleaved rounds so drift hits all alike.

    `settle_s` > 0 pauses that long before each candidate's block of calls in a round, then makes one
    untimed call: worker threads that the previous candidate left busy-waiting (ONNX Runtime spins
    by default after each run) go to sleep instead of taking the cores from the one being timed."""
    samples: dict[str, list[float]] = {k: [] for k in fns}
    with num_threads(threads or default_threads()), torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(rounds):
            for key, fn in fns.items():
                if settle_s > 0:
                    time.sleep(settle_s)
                samples[key].extend(time_call(fn, repeats, warmup=1 if settle_s > 0 else 0))
    return {k: statistics.median(v) for k, v in samples.items()}


def paired_medians(runs: dict[str, Callable[[], object]], reps: int) -> tuple[dict[str, float], dict[str, object]]:
    """Median seconds of each runner over `reps` interleaved rounds, and its last output. Each timed call
    follows an untimed one of the same runner: torch's and ONNX Runtime's worker threads sleep while
    the other runs, and waking them is not what a program calling one of them in a loop pays. The
    median, not the best: one lucky call says little about the next thousand."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    outs: dict[str, object] = {}
    for _ in range(reps):
        for name, run in runs.items():
            run()
            start = time.perf_counter()
            outs[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, outs
