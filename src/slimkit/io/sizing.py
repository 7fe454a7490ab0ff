"""Pre-flight size estimates: how many bytes a model's tensors would take once stored, from
shapes and a method's config alone (plus cheap weight statistics where the size depends on the
values: sparse positions, entropy-coded symbols), computed with the real codecs and file layout.

A `Plan` is the model being estimated (a proxy that only structural stages edit) and one
`Stored` record per state-dict tensor; `Plan.total()` adds the file's header. This module knows
no method: each method's package registers its estimator with `estimates`, and an estimator
rewrites the records of the tensors its method would touch. Nothing here trains, calibrates or
reads data.

>>> @estimates("int8")                                  # in slimkit.quantization.estimate
... def _int8(plan: Plan, cfg, task) -> Note: ...
>>> plan = Plan.of(model)
>>> plan.tensors["fc1.weight"].nbytes
76800
>>> note = estimate_stage(plan, Int8Config(), task=None)
>>> note["touched"]["fc1"], plan.total()
('int8 per-channel weights, fp32 scales', 53793)
>>> sparse_index_bytes(model.fc1.weight.abs() > 0.1)    # positions, coded by the real codec
2060.0
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from slimkit.core.errors import SlimError
from slimkit.core.methods import MethodConfig
from slimkit.io.artifact import SIDE_SEP, encode_model
from slimkit.io.codecs import encode_chain
from slimkit.io.layout import PACK_LIMIT, file_chunks

SAMPLE = 1 << 16          # values sampled from a large tensor for a value-dependent estimate
PACKED_ENTRY = 28         # bytes one more stored array adds to a packed (small) file's header, measured
NAMED_ENTRY = 160         # the same for a named (large) file: a safetensors entry plus its manifest entry


@dataclass(frozen=True)
class Stored:
    """How one tensor would be stored: `values` numbers of `bits` each, plus `extra` bytes
    (scales, zero points, codebooks, sparse positions, stream headers)."""

    numel: int
    values: int
    bits: float
    extra: float = 0.0
    how: str = "raw float32"
    exact: bool = True
    arrays: int = 1       # stored arrays (each costs a header entry)
    kind: str = "raw"     # raw, cast, sparse, encoded (already in a .slim file), or a method's own kind

    @property
    def nbytes(self) -> int:
        return math.ceil(self.values * self.bits / 8 + self.extra)

    @property
    def density(self) -> float:
        return self.values / max(1, self.numel)


def raw(t: torch.Tensor) -> Stored:
    """A tensor stored as it is."""
    dtype = str(t.dtype).removeprefix("torch.")
    return Stored(t.numel(), t.numel(), 8 * t.element_size(), how=f"raw {dtype}")


@dataclass
class Plan:
    """The estimated model: a proxy module (edited by structural stages only) and its tensors."""

    model: nn.Module
    tensors: dict[str, Stored]
    header: int                              # header bytes of the model as it is
    touched: set[str] = field(default_factory=set)   # keys re-encoded so far
    notes: list[str] = field(default_factory=list)
    _owned: bool = False

    @classmethod
    def of(cls, model: nn.Module) -> Plan:
        """The model as it would be saved today (compressed tensors at their real size)."""
        arrays, manifest = encode_model(model)
        header = _chunks_size(file_chunks(arrays, manifest)) - sum(a.nbytes for a in arrays.values())
        stored: dict[str, int] = {}
        counts: dict[str, int] = {}
        for key, arr in arrays.items():
            name = key.split(SIDE_SEP)[0]
            stored[name] = stored.get(name, 0) + arr.nbytes
            counts[name] = counts.get(name, 0) + 1
        state = model.state_dict()
        tensors = {}
        for key, entry in manifest.tensors.items():
            t = state[key]
            if entry.chain:
                chain = "+".join(s["codec"] for s in entry.chain)
                tensors[key] = Stored(t.numel(), stored[key], 8, how=chain, arrays=counts[key], kind="encoded")
            else:
                tensors[key] = raw(t)
        plan = cls(model, tensors, header)
        _ = plan.header_packed, plan.arrays0     # fix the layout the header was measured in
        return plan

    def editable(self) -> nn.Module:
        """The proxy model, copied on the first structural edit (the user's model is never touched)."""
        if not self._owned:
            self.model = copy.deepcopy(self.model)
            self._owned = True
        return self.model

    def replace_model(self, model: nn.Module) -> None:
        """A new model altogether (e.g. a student): every tensor is raw again."""
        self.model, self._owned, self.tensors = model, True, {}
        self.refresh()

    def refresh(self) -> None:
        """After a structural edit: tensors that changed shape or appeared are raw again."""
        state = self.model.state_dict()
        fresh = {}
        for key, t in state.items():
            old = self.tensors.get(key)
            fresh[key] = old if old is not None and old.numel == t.numel() else raw(t)
        self.tensors = fresh

    def set(self, key: str, stored: Stored) -> None:
        self.tensors[key] = stored
        self.touched.add(key)

    def payload(self) -> int:
        return sum(s.nbytes for s in self.tensors.values())

    def total(self) -> int:
        """Estimated file size: payload plus header (grown by the arrays the methods add)."""
        payload = self.payload()
        arrays = sum(s.arrays for s in self.tensors.values())
        packed = payload <= PACK_LIMIT
        per = PACKED_ENTRY if packed else NAMED_ENTRY
        if packed == self.header_packed:    # same layout as measured: grow the real header
            return payload + self.header + per * (arrays - self.arrays0)
        return payload + 64 + per * arrays

    def exact(self) -> bool:
        return all(s.exact for s in self.tensors.values())

    @property
    def header_packed(self) -> bool:
        return self.__dict__.setdefault("_packed0", self.payload() <= PACK_LIMIT)

    @property
    def arrays0(self) -> int:
        return self.__dict__.setdefault("_arrays0", sum(s.arrays for s in self.tensors.values()))


def _chunks_size(chunks) -> int:
    return sum(c.nbytes if isinstance(c, memoryview) else len(c) for c in chunks)


def file_size(model: nn.Module) -> int:
    """The exact size `slimkit.save(model, ...)` would write, computed in memory.

    >>> file_size(sk.zoo.load("lenet-300-100"))
    202669
    """
    return _chunks_size(file_chunks(*encode_model(model)))


def sparse_index_bytes(mask: torch.Tensor, limit: int = 1 << 18) -> float:
    """Bytes of the `sparse` codec's positions (bitmask or gap code, as the codec picks) for the
    nonzeros of `mask`, coded by the real codec; a large tensor is coded on its first `limit`
    elements and scaled up."""
    flat = mask.detach().reshape(-1)
    part = flat[:limit].to(torch.float32).numpy()
    stored, _ = encode_chain(part, [{"codec": "sparse"}])
    side = sum(a.nbytes for k, a in stored.items() if k != "data")
    return side * flat.numel() / max(1, part.size)


def sparse_record(mask: torch.Tensor, value_bits: int, how: str) -> Stored:
    """A tensor stored through `sparse` with nonzeros where `mask` is set: values plus positions."""
    nnz = int(mask.sum())
    return Stored(mask.numel(), nnz, value_bits, sparse_index_bytes(mask), how, exact=False, arrays=2,
                  kind="sparse")


def coded_bytes(labels: np.ndarray, k: int, chain: list[dict], total: int) -> tuple[float, int]:
    """(bytes, arrays) of `total` symbols distributed like `labels` (values 0..k-1), coded by `chain`
    through the real codecs; the sample's size is scaled to `total`."""
    sym = np.asarray(labels, dtype=np.uint8)
    stored, _ = encode_chain(sym, chain)
    return sum(a.nbytes for a in stored.values()) * total / max(1, sym.size), len(stored)


def sample(values: torch.Tensor, limit: int = SAMPLE) -> np.ndarray:
    """At most `limit` values, evenly strided (deterministic), as float64."""
    flat = values.detach().reshape(-1).double()
    if flat.numel() > limit:
        flat = flat[:: math.ceil(flat.numel() / limit)]
    return flat.numpy()


# -- the estimator registry -------------------------------------------------------------------

Note = dict  # {"touched": {layer: how}, "skipped": {layer: why}, "basis": str}
Estimator = Callable[[Plan, MethodConfig, object], Note]
ESTIMATORS: dict[str, Estimator] = {}


def estimates(*methods: str):
    """Decorator: register an estimator for configs whose `method` is one of `methods`.

    An estimator asks the method's own selection code which modules its config would touch,
    updates `plan` as the stored model would change, and returns a `note` of what it touched,
    what it skipped and why, and its `basis` ("exact: ..." when sizes follow from shapes alone).
    """
    def wrap(fn: Estimator) -> Estimator:
        for m in methods:
            ESTIMATORS[m] = fn
        return fn
    return wrap


def estimate_stage(plan: Plan, config: MethodConfig, task=None) -> Note:
    """Update `plan` as `config` would change the stored model; return what it touched and why not."""
    fn = ESTIMATORS.get(config.method)
    if fn is None:
        raise SlimError(f"no size estimate for method {config.method!r}")
    return fn(plan, config, task)


def note(touched: dict, skipped: dict, basis: str) -> Note:
    """An estimator's answer: {layer: how stored}, {layer: why not}, and what the numbers rest on."""
    return {"touched": touched, "skipped": skipped, "basis": basis}


def tensor_key(module: str, attr: str) -> str:
    """The state-dict key of `module`'s `attr` ("fc1", "weight" -> "fc1.weight"; the root: "weight")."""
    return f"{module}.{attr}" if module else attr
