"""The seed's two observations as data, for `slimkit inspect --apoz --plot`: per-layer APoZ
(activation sparsity) and weight histograms (weights pile up near zero).

>>> rows = apoz_report(model, task)          # [{"layer": "fc1", "apoz_mean": 0.21, ...}, ...]
>>> hists = weight_histograms(model)         # {"fc1.weight": {"edges": [...], "counts": [...]}}
>>> plot_apoz(rows, "plots/")                # plots/apoz.png (matplotlib is imported only then)
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from slimkit.core.optional import png_bytes, pyplot
from slimkit.core.task import Task
from slimkit.io.safetensors_file import atomic_write
from slimkit.pruning.importance import above_mean_std, apoz
from slimkit.surgery.trace import trace_groups


def apoz_report(model: nn.Module, task: Task, samples: int = 512, std: float = 1.0) -> list[dict]:
    """One row per ReLU layer the tracer finds: APoZ mean / std, how many neurons Network
    Trimming would remove (above mean + `std` std), how many never fire, and every value."""
    groups, _ = trace_groups(model, task.example_inputs(2))
    sites = {g.producer: g.activation for g in groups if g.activation}
    values = apoz(model, task.calibration(samples), sites, task.forward) if sites else {}
    rows = []
    for name, v in values.items():
        rows.append({"layer": name, "channels": v.numel(), "apoz_mean": round(float(v.mean()), 4),
                     "apoz_std": round(float(v.std(unbiased=False)), 4),
                     "above_mean_std": int(above_mean_std(v, std).sum()), "dead": int((v >= 1).sum()),
                     "apoz": [round(float(x), 4) for x in v]})
    return rows


@torch.no_grad()
def weight_histograms(model: nn.Module, bins: int = 41) -> dict[str, dict]:
    """Histogram of every Linear / Conv weight (symmetric range), with its exact-zero fraction."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
            w = module.weight.detach().float().reshape(-1)
            top = float(w.abs().max()) or 1.0
            counts = torch.histc(w, bins=bins, min=-top, max=top)
            zeros = 1 - int(torch.count_nonzero(w)) / max(1, w.numel())
            out[f"{name}.weight"] = {"edges": torch.linspace(-top, top, bins + 1).tolist(),
                                     "counts": [int(c) for c in counts], "sparsity": round(zeros, 6)}
    return out


def plot_apoz(rows: list[dict], out_dir: str | Path) -> Path | None:
    """One PNG with every layer's per-neuron APoZ, sorted, and the trimming threshold."""
    if not rows:
        return None
    plt = pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(rows), 1, figsize=(6, 2.2 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        values = sorted(row["apoz"], reverse=True)
        ax.bar(range(len(values)), values, width=1.0, color="#cc6677")
        ax.axhline(row["apoz_mean"] + row["apoz_std"], color="black", lw=0.8, ls="--")
        ax.set_ylim(0, 1)
        ax.set_title(f"{row['layer']}: APoZ mean {row['apoz_mean']:.2f}, "
                     f"{row['above_mean_std']} above mean+std, {row['dead']} never fire", fontsize=9)
    fig.tight_layout()
    path = out / "apoz.png"
    atomic_write(path, [png_bytes(fig, 100)])
    plt.close(fig)
    return path
