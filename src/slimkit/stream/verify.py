"""Reload-and-verify for the streaming paths: the finished temporary file is read back from disk, in
bounded memory, before it takes the output's name.

The in-memory `compress` reloads the whole model and compares its outputs (`slimkit.pipeline.verify`).
A streamed model is never whole in memory, so neither is its check. It reads the written file back the
way `slimkit.load` does, one piece at a time, against what the writer wrote:

1. the file opens through the loader (`LazyStateDict`: header, manifest and array layout validated)
   and its manifest is the one written;
2. every stored array's bytes, re-read from disk in blocks, have the CRC-32 the writer computed while
   writing them (`SlimWriter.digests`): nothing lost, truncated or changed on the way to the disk;
3. every tensor decodes through the loader's own path (`decode_tensor`), one at a time, to its shape
   and dtype, and a lossy codec's output is finite. A tensor that decodes to more than `decode_limit`
   bytes is not decoded, so that a tensor-by-tensor int8 run keeps its promise of a few blocks of
   memory (the caller sets the limit: none for a run that already held whole tensors); instead its
   stored float arrays (scales, zero points, codebooks) must be finite, block by block during step 2,
   and with them every value its codec decodes (a code times a scale, a codebook entry);
4. the architecture the manifest names is built on the meta device (no memory), its recorded edits
   replayed, and its state dict must be the file's tensors, shape for shape, as `load` requires.

Memory: one block of `chunk` bytes, plus one decoded tensor of at most `decode_limit` bytes.
If any step fails, `StreamCheck.__call__` raises a one-line SlimError and the file never takes the
output's name (`AtomicFile.commit` removes it).

>>> check = StreamCheck(manifest, writer.digests, "model.slim", decode_limit=64 << 20)
>>> writer.finish(manifest, verify=check)
>>> check.summary
{'arrays': 12, 'decoded': 10, 'not_decoded': 2}
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path

import numpy as np
import torch

from slimkit.core.errors import SlimError
from slimkit.core.text import clean
from slimkit.io.bases import build_base
from slimkit.io.decode import _DTYPES, SIDE_SEP, base_budget, decoded_budget
from slimkit.io.lazy import LazyStateDict
from slimkit.io.manifest import Manifest
from slimkit.io.safetensors_file import SafetensorsReader
from slimkit.surgery.edits import replay_edits

CHUNK = 4 << 20   # bytes re-read at a time for the CRC check


def _bf16_finite(block: bytes) -> bool:
    bits = np.frombuffer(block, np.uint16)
    return not bool(((bits & 0x7F80) == 0x7F80).any())   # exponent all ones: Inf or NaN


_FINITE = {name: (lambda block, t=t: bool(np.isfinite(np.frombuffer(block, t)).all()))
           for name, t in (("float16", np.float16), ("float32", np.float32), ("float64", np.float64))}
_FINITE["bfloat16"] = _bf16_finite


class StreamCheck:
    """`verify(path)` for `SlimWriter.finish`: see the module doc. `summary` says what was checked."""

    def __init__(self, manifest: Manifest, digests: dict[str, int], where: str | Path,
                 decode_limit: int | None = None, chunk: int = CHUNK):
        self.manifest, self.digests, self.where = manifest, digests, str(where)
        self.decode_limit, self.chunk = decode_limit, chunk
        self.summary: dict[str, int] = {}

    def fail(self, why: str) -> SlimError:
        return SlimError(f"{self.where}: the written file, read back, {why}; it was not kept")

    def __call__(self, path: Path) -> dict[str, int]:
        try:
            tensors = LazyStateDict(path)
        except SlimError as exc:
            raise self.fail(f"does not load ({exc})") from None
        with tensors:
            if tensors.manifest.to_json() != self.manifest.to_json():
                raise self.fail("holds another manifest than the one written")
            self._check_bytes(path)
            decoded = self._check_decodes(tensors)
        self._check_architecture(path)
        self.summary = {"arrays": len(self.digests), "decoded": decoded,
                        "not_decoded": len(self.manifest.tensors) - decoded}
        return self.summary

    def _not_decoded(self) -> set[str]:
        """The coded tensors too large to decode here (step 3)."""
        if self.decode_limit is None:
            return set()
        return {name for name, e in self.manifest.tensors.items()
                if e.chain and math.prod(e.shape) * _DTYPES.get(e.dtype, 8) > self.decode_limit}

    def _check_bytes(self, path: Path) -> None:
        large = self._not_decoded()
        chunk = self.chunk - self.chunk % 8   # whole elements in every block
        with SafetensorsReader(path) as reader:
            if set(reader.keys()) != set(self.digests):
                extra = sorted(set(reader.keys()) ^ set(self.digests))
                raise self.fail(f"holds other arrays than were written ({clean(extra[0], 80)!r})")
            for key, want in self.digests.items():
                size, crc = reader.nbytes(key), 0
                finite = _FINITE.get(reader.dtype(key)) if key.partition(SIDE_SEP)[0] in large else None
                for begin in range(0, size, chunk):
                    try:
                        block = reader.read(key, begin, min(size, begin + chunk))
                    except SlimError as exc:
                        raise self.fail(f"cannot be read ({exc})") from None
                    crc = zlib.crc32(block, crc)
                    if finite is not None and not finite(block):
                        raise self.fail(f"holds NaN/Inf values in array {clean(key, 80)!r} of a coded tensor")
                if crc != want:
                    raise self.fail(f"has other bytes in array {clean(key, 80)!r} than were written")

    def _check_decodes(self, tensors: LazyStateDict) -> int:
        decoded = 0
        for name, entry in self.manifest.tensors.items():
            nbytes = math.prod(entry.shape) * _DTYPES.get(entry.dtype, 8)
            if self.decode_limit is not None and nbytes > self.decode_limit:
                continue
            try:
                value = tensors[name]
            except SlimError as exc:
                raise self.fail(f"does not decode ({exc})") from None
            if entry.chain and value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self.fail(f"decodes tensor {clean(name, 80)!r} to NaN/Inf values")
            decoded += 1
            del value
        return decoded

    def _check_architecture(self, path: Path) -> None:
        manifest = self.manifest
        try:
            with torch.device("meta"), base_budget(decoded_budget(path.stat().st_size)):
                net = build_base(manifest.base, None, manifest)
                replay_edits(net, manifest.edits)
        except SlimError as exc:
            raise self.fail(f"names an architecture that cannot be built ({exc})") from None
        want = {k: list(t.shape) for k, t in net.state_dict(keep_vars=True).items()}
        have = {k: list(e.shape) for k, e in manifest.tensors.items()}
        have.update({k: have[t] for k, t in manifest.aliases.items() if t in have})
        if want != have:
            odd = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
            raise self.fail(f"does not fit the architecture it names ({len(odd)} tensor(s) differ, e.g. "
                            f"{clean(odd[0], 80)!r})")
