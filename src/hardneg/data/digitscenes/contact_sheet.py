"""A PNG contact sheet of DigitScenes: images, first caption, a few hard negatives with boxes.

For eyeballing a generated split (``hardneg data generate`` / ``inspect``): each panel shows a
scene (nearest-neighbour upscaled), its first positive caption and ``n_negatives`` hard
negatives with their kind; each negative's annotated box is drawn in its own colour and the
annotated word span is bracketed in the caption.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hardneg.data.digitscenes import SceneSplit

__all__ = ["write_contact_sheet"]

_BOX_COLOURS = ("white", "orange", "deepskyblue", "lime", "violet")


def _bracket_span(caption: str, span: tuple[int, int]) -> str:
    words = caption.split()
    words[span[0]] = "[" + words[span[0]]
    words[span[1] - 1] = words[span[1] - 1] + "]"
    return " ".join(words)


def write_contact_sheet(
    split: SceneSplit,
    path: str | os.PathLike,
    n: int = 16,
    n_negatives: int = 2,
    columns: int = 4,
) -> Path:
    """Write a PNG of ``n`` evenly spaced scenes of ``split`` with captions and hard negatives.

    Args:
        split: the scenes.
        path: output PNG path (parent folders are created).
        n: number of scenes (at most ``len(split)``).
        n_negatives: hard negatives listed (and boxed) per scene.
        columns: panels per row.

    Returns:
        the written path.

    Example:
        >>> import tempfile
        >>> from hardneg.data.digitscenes import DigitScenesConfig, generate_split
        >>> cfg = DigitScenesConfig(n_train=4, n_val=1, n_test=1, n_test_novel=1)
        >>> p = write_contact_sheet(generate_split(cfg, "train"), tempfile.mkdtemp() + "/s.png")
        >>> p.stat().st_size > 0
        True
    """
    if not isinstance(split, SceneSplit) or len(split) == 0:
        raise ValueError("split must be a non-empty SceneSplit (from load_digitscenes)")
    for name, value in (("n", n), ("columns", columns), ("n_negatives", n_negatives + 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    n = min(n, len(split))
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    picks = np.linspace(0, len(split) - 1, n).round().astype(int)
    fig = Figure(figsize=(3.6 * columns, 5.0 * rows))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(
        2 * rows,
        columns,
        height_ratios=[3, 2] * rows,
        left=0.02,
        right=0.98,
        top=1 - 0.7 / (5.0 * rows),
        bottom=0.01,
        hspace=0.05,
        wspace=0.12,
    )
    for panel, i in enumerate(picks):
        row, col = divmod(panel, columns)
        ax = fig.add_subplot(grid[2 * row, col])
        ax.imshow(split.images[i], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        lines = [
            f"#{i} id {split.semantic_ids[i]} ({split.relations[i]})",
            "+ " + split.captions[i][0],
        ]
        for k, neg in enumerate(split.hard_negatives[i][:n_negatives]):
            colour = _BOX_COLOURS[k % len(_BOX_COLOURS)]
            x0, y0, x1, y1 = neg.box
            ax.add_patch(
                Rectangle(
                    (x0 - 0.5, y0 - 0.5),
                    x1 - x0,
                    y1 - y0,
                    fill=False,
                    edgecolor=colour,
                    linewidth=1.2,
                    linestyle="--",
                )
            )
            lines.append(f"- {neg.kind} ({colour} box): {_bracket_span(neg.caption, neg.span)}")
        text_ax = fig.add_subplot(grid[2 * row + 1, col])
        text_ax.axis("off")
        text = "\n".join(textwrap.fill(line, 50, subsequent_indent="   ") for line in lines)
        text_ax.text(
            0.0,
            1.0,
            text,
            transform=text_ax.transAxes,
            va="top",
            ha="left",
            fontsize=6.5,
            family="monospace",
        )
    fig.suptitle(
        f"DigitScenes {split.name}: {len(split)} scenes "
        "(+ positive, - hard negative, [mismatch span])",
        fontsize=10,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path
