"""Peers measured beside slimkit: PyTorch eager fp32 and bf16, `torch.ao` dynamic int8, and
ONNX Runtime fp32 and `quantize_dynamic` per-channel int8.

Every peer is returned as a `Candidate` whose `model` is an `nn.Module` the case's task can drive
(`task.forward`, `task.score`), so peers and slimkit variants are scored by the same code. Files
are written into the `workdir` given (a temporary folder), and their size on disk is `bytes`.

>>> cands = build_peers(model, task, workdir, threads=2)
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bench.harness import BASELINE, ORT_FP32, ORT_INT8, Candidate
from slimkit.export.onnx import OrtModule, export_onnx, first_tensor, rewrap

# ----------------------------------------------------------------------------- helpers

class CastModule(nn.Module):
    """Runs `inner` in a low-precision dtype: float inputs are cast in, the output cast to fp32."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.inner = inner
        self.dtype = dtype

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        def cast(t: Any) -> Any:
            return t.to(self.dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        out = self.inner(*[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
        return rewrap(out, first_tensor(out).float())

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


def _score(model: nn.Module, task: Any) -> float:
    model.eval()
    with torch.inference_mode():
        return float(task.score(model))


def _count(model: nn.Module) -> tuple[int, int]:
    from slimkit.eval.measure import count_params

    return count_params(model)


def _save_safetensors(model: nn.Module, path: Path) -> int:
    from safetensors.torch import save_model

    save_model(model, str(path))
    return path.stat().st_size


def _peer(name: str, build: Callable[[], Candidate]) -> Candidate:
    """Build a peer; a failure becomes a row saying so, never a crash of the whole bench."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return build()
    except Exception as exc:  # noqa: BLE001 - a peer library failing is a result to report
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return Candidate(name, "peer", status="failed", note=f"{type(exc).__name__}: {first}")


# ----------------------------------------------------------------------------- torch peers

def torch_fp32(model: nn.Module, task: Any, workdir: Path) -> Candidate:
    """The reference: the model as given, eager fp32; its file is fp32 safetensors."""
    path = workdir / "torch-fp32.safetensors"
    size = _save_safetensors(model, path)
    params, nonzeros = _count(model)
    return Candidate(BASELINE, "peer", model=model.eval(), file=str(path), bytes=size,
                     score=_score(model, task), params=params, nonzeros=nonzeros)


def torch_bf16(model: nn.Module, task: Any, workdir: Path) -> Candidate:
    """`model.to(torch.bfloat16)`; float inputs are cast in and the output cast back to fp32."""
    t0 = time.perf_counter()
    low = copy.deepcopy(model).to(torch.bfloat16).eval()
    took = time.perf_counter() - t0
    path = workdir / "torch-bf16.safetensors"
    size = _save_safetensors(low, path)
    wrapped = CastModule(low, torch.bfloat16)
    params, nonzeros = _count(low)
    return Candidate("torch bf16", "peer", model=wrapped, file=str(path), bytes=size,
                     score=_score(wrapped, task), params=params, nonzeros=nonzeros,
                     compress_s=round(took, 2))


def torch_dynamic_int8(model: nn.Module, task: Any, workdir: Path) -> Candidate:
    """`torch.ao.quantization.quantize_dynamic` with its default qconfig (nn.Linear, qint8).

    Its packed weights cannot go into safetensors, so the file is `torch.save(state_dict)`."""
    from torch.ao.quantization import quantize_dynamic

    t0 = time.perf_counter()
    q = quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    took = time.perf_counter() - t0
    path = workdir / "torch-dynamic-int8.pt"
    torch.save(q.state_dict(), path)
    return Candidate("torch dynamic int8", "peer", model=q, file=str(path),
                     bytes=path.stat().st_size, score=_score(q, task), compress_s=round(took, 2),
                     note="torch.save state (packed params need pickle)")


# ----------------------------------------------------------------------------- ONNX Runtime

def ort_peers(model: nn.Module, task: Any, workdir: Path, threads: int) -> list[Candidate]:
    """ONNX Runtime fp32 and ONNX Runtime `quantize_dynamic` per-channel int8 (QInt8 weights)."""
    fp32_path = workdir / "ort-fp32.onnx"
    int8_path = workdir / "ort-int8.onnx"
    state: dict[str, Any] = {}

    def fp32() -> Candidate:
        t0 = time.perf_counter()
        keys, hf_output = export_onnx(model, task.example_inputs(2), fp32_path)
        state.update(keys=keys, hf_output=hf_output, export_s=time.perf_counter() - t0)
        ort_model = OrtModule(fp32_path, keys, hf_output, threads)
        return Candidate(ORT_FP32, "peer", model=ort_model, file=str(fp32_path),
                         bytes=fp32_path.stat().st_size, score=_score(ort_model, task),
                         compress_s=round(state["export_s"], 2), note="compress s = ONNX export")

    def int8() -> Candidate:
        if "keys" not in state:
            raise RuntimeError("the fp32 ONNX export failed")
        import logging

        from onnxruntime.quantization import QuantType, quantize_dynamic

        t0 = time.perf_counter()
        level = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)   # its "consider pre-processing" advice
        try:
            quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True,
                             weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(level)
        took = time.perf_counter() - t0
        ort_model = OrtModule(int8_path, state["keys"], state["hf_output"], threads)
        return Candidate(ORT_INT8, "peer", model=ort_model,
                         file=str(int8_path), bytes=int8_path.stat().st_size,
                         score=_score(ort_model, task), compress_s=round(took, 2),
                         note="quantize_dynamic per_channel=True, QInt8")

    return [_peer(ORT_FP32, fp32), _peer(ORT_INT8, int8)]


TORCH_PEERS = {BASELINE: torch_fp32, "torch bf16": torch_bf16, "torch dynamic int8": torch_dynamic_int8}
SPEED_PEERS = (BASELINE, "onnxruntime")    # the references of the speed columns and targets


def build_peers(model: nn.Module, task: Any, workdir: str | Path, threads: int,
                progress: Callable[[str], None] = lambda msg: None,
                names: tuple[str, ...] | None = None) -> list[Candidate]:
    """The peers of `model` (`names` of TORCH_PEERS and/or "onnxruntime"; default all), torch fp32
    eager first (the reference of every ratio)."""
    workdir = Path(workdir)
    out = []
    for name, fn in TORCH_PEERS.items():
        if names is None or name in names:
            progress(f"peer: {name}")
            out.append(_peer(name, lambda fn=fn: fn(model, task, workdir)))
    if names is None or "onnxruntime" in names:
        progress("peer: onnxruntime (export, quantize_dynamic)")
        out.extend(ort_peers(model, task, workdir, threads))
    return out
