"""The search's PNG plots: Pareto fronts, weight histograms before / after, bits per layer.

matplotlib is imported only when a plot is drawn.

>>> plot_pareto(points, baseline, max_drop=0.5, best=3, path="out/pareto.png")
>>> plot_bits(bits_per_layer(original), bits_per_layer(best), "out/bits.png")
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from slimkit.autosearch.pareto import front
from slimkit.core.optional import png_bytes, pyplot
from slimkit.io.artifact import SIDE_SEP, encode_model
from slimkit.io.safetensors_file import atomic_write

MAX_LAYERS = 8      # histograms of the largest layers only (a transformer has dozens)


def _pyplot():
    return pyplot()


def plot_pareto(points: list[dict], baseline: dict, max_drop: float, best: int | None,
                path: str | Path, score_name: str = "score", best_label: str = "best.slim") -> Path:
    """Two panels: bytes vs held-out score and latency (batch 1) vs held-out score; every
    candidate in grey, the front in colour, the best as a star, the budget as a dashed line."""
    plt = _pyplot()
    fig = pareto_figure(points, baseline, max_drop, best, score_name, best_label)
    atomic_write(path, [png_bytes(fig, 90)])
    plt.close(fig)
    return Path(path)


def pareto_figure(points: list[dict], baseline: dict, max_drop: float, best: int | None,
                  score_name: str = "score", best_label: str = "best.slim"):
    """The figure of `plot_pareto`. The y axis always shows the budget line, the best and the
    original; tick labels are few and short (bytes as `20 KB`, latency in 3 digits) so they never
    overlap."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = (baseline["val_score"] - max_drop / 100) * 100
    for ax, cost, label in ((axes[0], "bytes", "artifact size (log scale)"),
                            (axes[1], "latency_ms", "latency at batch 1 (ms)")):
        pts = [p for p in points if p.get(cost) is not None]
        ax.scatter([p[cost] for p in pts], [p["val_score"] * 100 for p in pts], s=14, color="#bbbbbb",
                   label="candidates")
        edge = front(pts, cost)
        ax.plot([p[cost] for p in edge], [p["val_score"] * 100 for p in edge], "o-", color="#4477aa", ms=5,
                label="Pareto front")
        base_cost = baseline["bytes"] if cost == "bytes" else baseline.get("latency_ms", {}).get("batch1")
        if base_cost is not None:
            ax.scatter([base_cost], [baseline["val_score"] * 100], marker="s", color="black", label="original")
        for p in pts:
            if p["trial"] == best:
                ax.scatter([p[cost]], [p["val_score"] * 100], marker="*", s=220, color="#ee6677", zorder=5,
                           label=best_label)
        ax.axhline(floor, color="#ee6677", lw=0.8, ls="--", label=f"budget (-{max_drop:g} pt)")
        ax.set_xlabel(label)
        ax.set_ylabel(f"validation {score_name} (%)")
        shown = [floor, baseline["val_score"] * 100] + [p["val_score"] * 100 for p in edge]
        low, high = min(shown), max(shown + [p["val_score"] * 100 for p in pts])
        pad = max(0.3, 0.06 * (high - low))
        ax.set_ylim(low - pad, high + pad)
        _readable_x(ax, [p[cost] for p in pts] + ([base_cost] if base_cost is not None else []), cost == "bytes")
    handles, labels = axes[0].get_legend_handles_labels()      # one legend below both panels: it hides no point
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def _readable_x(ax, values: list[float], log: bool) -> None:
    """Few, short x tick labels: on a log axis of bytes, 1-2-5 steps (decades only over a wide range)
    labelled `20 KB`; on a linear axis at most 5 ticks with 3 significant digits."""
    from matplotlib import ticker

    if log:
        ax.set_xscale("log")
        positive = [v for v in values if v and v > 0]
        wide = len(positive) > 1 and max(positive) / min(positive) > 300
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0,) if wide else (1.0, 2.0, 5.0), numticks=7))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: _short_bytes(v)))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    else:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=5))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))


def _short_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:g} {unit}"
    return f"{n:g} B"


WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def _weighted(module: nn.Module) -> bool:
    """A layer with a weight matrix: a torch one, or a slimkit runtime module (it has `slim_spec`)."""
    return isinstance(module, WEIGHTED) or hasattr(module, "slim_spec")


@torch.no_grad()
def dense_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Each weight layer's weight as a flat float tensor (runtime modules decoded)."""
    out = {}
    for name, m in model.named_modules():
        if not name or not _weighted(m):
            continue
        for getter in ("dequantized_weight", "virtual_weight"):
            if hasattr(m, getter):
                out[name] = getattr(m, getter)().detach().float().reshape(-1)
                break
        else:
            weight = getattr(m, "weight", None)
            if isinstance(weight, torch.Tensor):
                out[name] = weight.detach().float().reshape(-1)
    return out


def plot_histograms(before: nn.Module, after: nn.Module, path: str | Path, bins: int = 61) -> Path | None:
    """One row per layer (the largest `MAX_LAYERS`): its weight histogram in the original model and
    in the best artifact (log counts, so the spike of exact zeros and the tails both show)."""
    from matplotlib import ticker

    a, b = dense_weights(before), dense_weights(after)
    parts = {name: [k for k in b if k.startswith(name + ".")] for name in a if name not in b}
    b.update({name: torch.cat([b[k] for k in keys]) for name, keys in parts.items() if keys})
    names = sorted(a, key=lambda n: -a[n].numel())[:MAX_LAYERS]
    names = [n for n in a if n in names]
    if not names:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 1.9 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        top = max(float(w.abs().max()) for w in (a[name], b.get(name, a[name])) if w.numel()) or 1.0
        for col, (weights, title) in enumerate(((a.get(name), "original"), (b.get(name), "best"))):
            ax = axes[row, col]
            if weights is None:
                ax.text(0.5, 0.5, "not in the best model (removed by a structural stage)", ha="center",
                        va="center", fontsize=8, transform=ax.transAxes)
                ax.set_axis_off()
                continue
            zeros = 1 - int(torch.count_nonzero(weights)) / max(1, weights.numel())
            counts = torch.histc(weights.clamp(-top, top), bins=bins, min=-top, max=top).clamp(min=0.5)
            ax.stairs(counts.numpy(), torch.linspace(-top, top, bins + 1).numpy(), baseline=0.5, fill=True,
                      color="#4477aa" if col == 0 else "#228833")
            ax.set_yscale("log")
            ax.yaxis.set_minor_locator(ticker.NullLocator())   # log minor ticks make drawing slow
            if col == 1 and parts.get(name):
                title = "best, " + " + ".join(k.removeprefix(name) for k in parts[name])
            ax.set_title(f"{name} ({title}): {weights.numel()} weights, {zeros:.1%} zero", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.35 / len(names) / 1.9, bottom=0.25 / len(names) / 1.9 + 0.02,
                        hspace=0.55, wspace=0.15)
    atomic_write(path, [png_bytes(fig, 80)])
    plt.close(fig)
    return Path(path)


def bits_per_layer(model: nn.Module) -> dict[str, float]:
    """Stored bits per parameter of each weight layer (weights and bias), in the .slim encoding."""

    arrays, _ = encode_model(model)
    stored: dict[str, int] = defaultdict(int)
    for key, arr in arrays.items():
        stored[key.split(SIDE_SEP)[0]] += arr.nbytes
    out = {}
    for name, m in model.named_modules():
        if not _weighted(m):
            continue
        own = [(k, t) for k, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
               if t is not None]
        params = sum(t.numel() for k, t in own if t.is_floating_point() or "weight" in k)
        nbytes = sum(stored.get(f"{name}.{k}" if name else k, 0) for k, _ in own)
        if params and nbytes:
            out[name or "(root)"] = round(nbytes * 8 / _logical_params(m, params), 3)
    return out


def _logical_params(module: nn.Module, stored_params: int) -> int:
    """Parameters the layer computes with (a hashed or codes-only layer stores fewer)."""
    for attr in ("in_features", "out_features"):
        if not hasattr(module, attr):
            return stored_params
    n = module.in_features * module.out_features
    return n + (module.out_features if getattr(module, "bias", None) is not None else 0)


def plot_bits(before: dict[str, float], after: dict[str, float], path: str | Path) -> Path | None:
    """Bars of stored bits per parameter, layer by layer, original vs best."""
    names = list(before) + [n for n in after if n not in before]
    if not names:
        return None
    plt = _pyplot()
    shown = names[:40]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(shown) + 3), 3.6))
    x = range(len(shown))
    ax.bar([i - 0.2 for i in x], [before.get(n, 0) for n in shown], width=0.4, color="#bbbbbb", label="original")
    ax.bar([i + 0.2 for i in x], [after.get(n, 0) for n in shown], width=0.4, color="#228833", label="best")
    for i, n in enumerate(shown):
        if n in after:
            ax.text(i + 0.2, after[n], f"{after[n]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(shown, rotation=60 if len(shown) > 6 else 0, ha="right" if len(shown) > 6 else "center",
                       fontsize=7)
    ax.set_ylabel("stored bits per parameter")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, [png_bytes(fig, 90)])
    plt.close(fig)
    return Path(path)


def plot_apoz(before: list[dict], after: list[dict], path: str | Path) -> Path | None:
    """Per ReLU layer: each neuron's APoZ (average percentage of zeros), sorted, in the original
    and in the best model (rows of `slimkit.pruning.report.apoz_report`)."""
    if not before and not after:
        return None
    seen = {r["layer"] for r in before}
    layers = [r["layer"] for r in before] + [r["layer"] for r in after if r["layer"] not in seen]
    plt = _pyplot()
    fig, axes = plt.subplots(len(layers), 1, figsize=(7, 1.9 * len(layers)), squeeze=False)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        for rows, label, color in ((before, "original", "#888888"), (after, "best", "#228833")):
            row = next((r for r in rows if r["layer"] == layer), None)
            if row is not None:
                ax.plot(sorted(row["apoz"], reverse=True), color=color, lw=1.5,
                        label=f"{label}: {row['channels']} neurons, mean {row['apoz_mean']:.2f}, {row['dead']} dead")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("APoZ", fontsize=8)
        ax.set_title(layer, fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("neurons, most often zero first")
    fig.tight_layout()
    atomic_write(path, [png_bytes(fig, 80)])
    plt.close(fig)
    return Path(path)
