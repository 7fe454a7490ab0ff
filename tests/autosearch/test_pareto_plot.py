"""The Pareto plot is readable: the budget line inside the plot, tick labels that never overlap."""

from __future__ import annotations

import pytest

from slimkit.autosearch.plots import pareto_figure

BASE = {"bytes": 202888, "val_score": 0.9888, "latency_ms": {"batch1": 0.0472}}


def _points(sizes: list[float], scores: list[float]) -> list[dict]:
    return [{"trial": i, "bytes": b, "val_score": s, "latency_ms": 0.0465 + 0.00037 * i}
            for i, (b, s) in enumerate(zip(sizes, scores, strict=True))]


def _shown(labels, lo: float, hi: float, axis: int) -> list:
    lo, hi = min(lo, hi), max(lo, hi)
    return [t for t in labels if t.get_visible() and t.get_text() and lo <= t.get_position()[axis] <= hi]


@pytest.mark.parametrize("sizes, scores, max_drop", [
    ([3100, 3300, 3600, 3650], [0.95, 0.97, 0.985, 0.99], 0.5),           # a narrow range of sizes
    ([900, 5e4, 3e6, 9e7], [0.90, 0.95, 0.97, 0.99], 0.5),                # six decades
    ([3192, 3597], [0.8771, 0.8994], 40.0),                                # the budget far below the front
    ([4000], [0.20], 0.5),                                                 # one candidate far outside it
])
def test_budget_line_inside_and_tick_labels_apart(sizes, scores, max_drop):
    import matplotlib.pyplot as plt

    fig = pareto_figure(_points(sizes, scores), BASE, max_drop, best=0, score_name="accuracy")
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        floor = (BASE["val_score"] - max_drop / 100) * 100
        for ax in fig.axes:
            low, high = ax.get_ylim()
            assert low < floor < high and low < BASE["val_score"] * 100 < high
            for labels, limits, axis in ((ax.xaxis.get_ticklabels(which="both"), ax.get_xlim(), 0),
                                         (ax.yaxis.get_ticklabels(which="both"), ax.get_ylim(), 1)):
                shown = _shown(labels, *limits, axis)
                assert len(shown) >= 2
                boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: (b.x0, b.y0))
                for a, b in zip(boxes, boxes[1:], strict=False):
                    assert not a.overlaps(b), [t.get_text() for t in shown]
    finally:
        plt.close(fig)
