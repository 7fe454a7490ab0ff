"""PNG plots of the seed's observations: weight histograms and per-layer APoZ.

matplotlib is imported only here, when a plot is asked for.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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
        path = out / f"hist-{name.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_apoz(rows: list[dict], out_dir: str | Path) -> Path | None:
    """One PNG with every layer's per-neuron APoZ, sorted, and the trimming threshold."""
    if not rows:
        return None
    plt = _pyplot()
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
