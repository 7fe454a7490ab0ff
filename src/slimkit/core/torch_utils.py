"""Small torch helpers shared across the package."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch


def default_threads() -> int:
    """The thread count used for measurement: $SLIMKIT_THREADS, else min(2, cores)."""
    env = os.environ.get("SLIMKIT_THREADS")
    if env:
        return max(1, int(env))
    return max(1, min(2, os.cpu_count() or 1))


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Run a block with `torch.set_num_threads(n)`, restoring the previous value."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG and return a generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def first_nonfinite(tensors: Iterator[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """(name, NaN/Inf count, numel) of the first floating tensor with a non-finite value, or None.

    >>> first_nonfinite(iter([("fc1.weight", torch.tensor([1.0, float("nan")]))]))
    ('fc1.weight', 1, 2)
    """
    for name, t in tensors:
        if t.is_floating_point() or t.is_complex():
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad, t.numel()
    return None


def cpu_supports(*probes: str) -> bool:
    """Whether any of torch's CPU feature probes (`torch.cpu._is_vnni_supported`, ...) says yes; a
    probe this torch lacks, or one that fails, counts as no."""
    for probe in probes:
        try:
            if getattr(torch.cpu, probe)():
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def version_of(tensor: torch.Tensor) -> int:
    """`tensor._version` (bumped by every in-place change), or -1 for an inference tensor (made under
    `torch.inference_mode`, e.g. a model loaded inside it), which keeps no version counter and can be
    changed in place only inside inference mode. Caches keyed on it rebuild when a tensor changes."""
    try:
        return tensor._version
    except RuntimeError:
        return -1
