"""PNG plots of weight histograms (`slimkit inspect --plot`); a method's own plots live in its package
(per-layer APoZ: `slimkit.pruning.report.plot_apoz`).

matplotlib is imported only here, when a plot is asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

from slimkit.core.optional import png_bytes, pyplot
from slimkit.io.safetensors_file import atomic_write


def _pyplot():
    return pyplot()


def plot_histograms(hists: dict[str, dict], out_dir: str | Path) -> list[Path]:
    """One PNG per weight tensor (`weight_histograms` output); returns the paths written."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, h in hists.items():
        fig, ax = plt.subplots(figsize=(5, 3))
        edges = h["edges"]
        widths = [b - a for a, b in zip(edges, edges[1:], strict=False)]
        ax.bar(edges[:-1], h["counts"], width=widths, align="edge", color="#4477aa")
        ax.set_title(f"{name}  (exact zeros: {h['sparsity']:.1%})", fontsize=9)
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        fig.tight_layout()
        path = out / f"hist-{re.sub(r'[^A-Za-z0-9_-]', '_', name)[:100]}.png"   # a name from a file: no '/', '..'
        atomic_write(path, [png_bytes(fig, 100)])
        plt.close(fig)
        paths.append(path)
    return paths
