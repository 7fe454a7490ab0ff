"""What a bench run records about the machine it ran on: the CPU and the ISA features that decide
which int8 / bf16 paths are fast (read by torch's own probes and from /proc/cpuinfo), the compute
dtype slimkit's quantized layers resolve `auto` to (and SLIMKIT_COMPUTE_DTYPE, which overrides
it), library versions and the date.

>>> info = machine_info(threads=2)
>>> info["cpu_flags"]       # {"AVX2": True, "AVX-512": False, "VNNI": False, "BF16": False, "AMX": False}
>>> info["compute_dtype"]   # {"auto": "float32", "env": None, "pass": "auto"}
>>> machine_line(info)      # the "Machine:" line of RESULTS.md
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path

import torch

COMPUTE_ENV = "SLIMKIT_COMPUTE_DTYPE"      # the same name as slimkit.nn.quant_linear.COMPUTE_ENV
FORCED_DTYPES = ("float32", "bfloat16", "float16")
# label -> torch.cpu probe (AVX-512 BF16 and AMX tiles are what make `auto` pick bf16)
TORCH_PROBES = {"AVX2": "_is_avx2_supported", "AVX-512": "_is_avx512_supported", "VNNI": "_is_vnni_supported",
                "BF16": "_is_avx512_bf16_supported", "AMX": "_is_amx_tile_supported"}
CPUINFO_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_model() -> tuple[str, set[str]]:
    """The CPU's model name and its /proc/cpuinfo flags (no flags off Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model or platform.machine(), flags


def cpu_flags() -> dict[str, bool | None]:
    """AVX2, AVX-512, VNNI (AVX-512 VNNI), BF16 (AVX-512 BF16) and AMX as torch sees them
    (None where this torch has no probe)."""
    out: dict[str, bool | None] = {}
    for label, probe in TORCH_PROBES.items():
        try:
            out[label] = bool(getattr(torch.cpu, probe)())
        except (AttributeError, RuntimeError):
            out[label] = None
    return out


def compute_pass() -> str:
    """"auto", or the dtype SLIMKIT_COMPUTE_DTYPE forces for this run."""
    env = os.environ.get(COMPUTE_ENV, "")
    return env if env in FORCED_DTYPES else "auto"


def compute_dtype_info() -> dict:
    """{"auto": dtype `auto` resolves to in this process, "env": SLIMKIT_COMPUTE_DTYPE or None,
    "pass": compute_pass()}."""
    try:
        from slimkit.nn.quant_linear import resolve_compute_dtype

        resolved: str | None = str(resolve_compute_dtype("auto")).removeprefix("torch.")
    except Exception:  # noqa: BLE001 - a record of the run, never a reason to stop it
        resolved = None
    return {"auto": resolved, "env": os.environ.get(COMPUTE_ENV) or None, "pass": compute_pass()}


def machine_info(threads: int) -> dict:
    """CPU model, cores, ISA flags, compute dtype, library versions, date (UTC)."""
    import numpy

    model, flags = cpu_model()
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa": [f for f in CPUINFO_FLAGS if f in flags],
        "cpu_flags": cpu_flags(),
        "compute_dtype": compute_dtype_info(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    for lib in ("onnxruntime", "onnx", "transformers"):
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            info[lib] = None
    return info


def _flags_text(info: dict) -> str:
    flags = info.get("cpu_flags")
    if not flags:   # a record written before the flags were recorded
        return " ".join(info.get("isa") or []) or "no AVX-512"
    shown = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else '?'}" for k, v in flags.items())
    extra = [f for f in info.get("isa") or [] if f in ("avx_vnni",)]
    return shown + (f" ({', '.join(extra)})" if extra else "")


def _dtype_text(info: dict) -> str:
    cd = info.get("compute_dtype")
    if not cd:
        return ""
    env = f"{COMPUTE_ENV}={cd['env']}" if cd.get("env") else f"{COMPUTE_ENV} unset"
    return f"; compute dtype {cd.get('auto') or '?'} ({env})"


def machine_line(info: dict) -> str:
    """One line: CPU, cores, flags, threads, compute dtype, libraries, date, load."""
    libs = ", ".join(f"{k} {info[k]}" for k in ("torch", "onnxruntime", "onnx", "transformers", "python")
                     if info.get(k))
    load = info.get("load_avg")
    busy = f"; load average {load[0]:.1f} at the end" if load else ""
    return (f"{info['cpu']} ({info['cores']} cores; {_flags_text(info)}), {info['threads']} thread(s)"
            f"{_dtype_text(info)}; {libs}; {info['date']}{busy}")
