"""Drawing helpers of the bench plots: every plot is drawn on a bare
:class:`matplotlib.figure.Figure` rendered by the Agg canvas (no pyplot state, no display
needed) at 100 dpi and at least 8 inches wide, one colour per method throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hardneg.bench.tree import BenchTree

__all__ = ["DPI", "figure", "grouped_bars", "method_colour", "save"]

DPI = 100


def method_colour(tree: BenchTree, method: str):
    """One colour per method, the same in every plot."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(tree.methods) <= 10 else "tab20"]
    return cmap(tree.methods.index(method) % cmap.N)


def figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    """A figure (at least 8 inches wide) on the Agg canvas and its (nrows, ncols) axes."""
    fig = Figure(figsize=(max(8.0, width), height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (its folder created); returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def grouped_bars(
    ax, tree: BenchTree, aggregate: dict, methods: list[str], split: str, series: list
) -> None:
    """Two bars per method (``series`` = [(metric, label, hatch)]), error bars = std over seeds.

    A missing value leaves its bar out; the lower error bar stops at 0 (rates are ≥ 0).
    """
    x = np.arange(len(methods))
    for shift, (metric, label, hatch) in zip((-0.2, 0.2), series):
        stats = [aggregate[m].get(split, {}).get(metric) for m in methods]
        means = np.array([np.nan if s is None or s.mean is None else s.mean for s in stats])
        stds = np.array([0.0 if s is None or s.std is None else s.std for s in stats])
        low = np.minimum(stds, np.nan_to_num(np.maximum(means, 0.0)))
        colours = [method_colour(tree, m) for m in methods]
        ax.bar(x + shift, means, 0.4, yerr=np.stack([low, stds]), capsize=3, label=label,
               hatch=hatch, color=colours, edgecolor="black")  # fmt: skip
    ax.set_xticks(x, methods, rotation=45, ha="right")
    ax.legend()
