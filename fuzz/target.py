"""The fuzz target: bytes -> a file -> the three public loaders. Only `SlimFormatError` may come out.

`check(data)` writes `data` to a scratch file and calls `read_manifest`, `load_state_dict` and `load`
on it. A file the loader refuses must be refused with `SlimFormatError` (one line); a file it accepts
must decode to tensors whose total size is bounded by the file's size (`decoded_budget`), and rebuild
into a model. Anything else (another exception, an unbounded allocation) is a finding and propagates.

>>> from fuzz.target import check
>>> check(open("fuzz/corpus/seeds/lenet-300-100-int8", "rb").read())     # doctest: +SKIP
'loaded'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from slimkit.core.errors import SlimFormatError
from slimkit.io.artifact import load, load_state_dict, read_manifest

MAX_LEN = 1 << 20               # inputs longer than this are cut (libFuzzer's -max_len says the same)
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


def decoded_budget(file_size: int) -> int:
    """The most bytes all decoded tensors of a file of `file_size` bytes may take together
    (the loader's own promise, `slimkit.io.artifact.decoded_budget`: 256x the file, plus 64 MiB)."""
    return 256 * file_size + (1 << 26)


def user_architecture() -> nn.Module:
    """The architecture handed to `load` when a (mutated) manifest claims a user model."""
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))


class Scratch:
    """One reusable scratch file (in /dev/shm when available); `write` replaces its content."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="slimfuzz-", suffix=".slim", dir=SCRATCH)
        os.close(fd)
        self.path = Path(name)

    def write(self, data: bytes) -> Path:
        self.path.write_bytes(data)
        return self.path

    def close(self) -> None:
        self.path.unlink(missing_ok=True)


_SCRATCH: Scratch | None = None


def check(data: bytes, scratch: Scratch | None = None) -> str:
    """Load `data` as a .slim file; return "rejected" (SlimFormatError) or "loaded". Findings raise."""
    global _SCRATCH
    if scratch is None:
        _SCRATCH = _SCRATCH or Scratch()
        scratch = _SCRATCH
    path = scratch.write(bytes(data[:MAX_LEN]))
    size = path.stat().st_size
    try:
        manifest = read_manifest(path)
        state = load_state_dict(path)
        total = sum(t.numel() * t.element_size() for t in {id(t): t for t in state.values()}.values())
        if total > decoded_budget(size):
            raise AssertionError(f"decoded {total} bytes from a file of {size} bytes")
        arch = user_architecture() if manifest.base.get("kind") == "user" else None
        model = load(path, model=arch)
        if not isinstance(model, nn.Module) or any(t.is_meta for t in model.state_dict().values()):
            raise AssertionError("load returned a model with uninitialised tensors")
    except SlimFormatError as exc:
        if "\n" in str(exc) or not str(exc):
            raise AssertionError(f"SlimFormatError message is not one line: {str(exc)[:200]!r}") from exc
        return "rejected"
    return "loaded"


def setup() -> None:
    """Quiet, single-threaded torch; warnings from loaders are not findings."""
    import warnings

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
