"""The sweeps of a bench report: per swept setting (:data:`~hardneg.bench.arms.SWEEPS`), a
table of method × value and a plot of retrieval against the value.

A bench sweeps a setting when it lists arms such as ``grit@fn0`` and ``grit@fn5``. Every
method with at least one such arm is a line of the sweep; its points are the values of its
arms, plus its plain arm (``grit``) at the value the bench's config gives it. The re-ranked
figures (``i2t_R@1_rerank`` …) are shown where the runs report them.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from hardneg.bench.arms import SWEEPS, parse_arm
from hardneg.bench.figures import figure, save
from hardneg.bench.tables import Column, _format
from hardneg.bench.tree import TRAIN_SPLIT, BenchTree, finite

__all__ = ["SWEEP_COLUMNS", "SweepPoint", "plot_sweep", "sweep_points", "sweep_section"]

_PANELS = [("i2t_R@1", "I→T R@1"), ("t2i_R@1", "T→I R@1"),
           ("i2t_mAP", "I→T mAP"), ("t2i_mAP", "T→I mAP")]  # fmt: skip
SWEEP_COLUMNS = [
    Column("Batch FN %", TRAIN_SPLIT, "batch_fn_rate", higher_is_better=False, decimals=2),
    *[Column(header, "test", metric) for metric, header in _PANELS],
    *[Column(f"{header} re-ranked", "test", f"{metric}_rerank") for metric, header in _PANELS],
]
"""Columns of a sweep table (test split); a column no point has a value for is left out."""


class SweepPoint(NamedTuple):
    """One arm of a sweep: its method, the swept setting's value and the arm's name."""

    method: str
    value: float
    arm: str


def _configured(tree: BenchTree, arm: str, key: str) -> float | None:
    """The swept setting's value in the config of ``arm``'s runs (None when none says)."""
    setting = SWEEPS[key]
    for run in tree.runs_of(arm):
        value = finite(run.config.get(setting.section, {}).get(setting.field))
        if value is not None:
            return value
    return None


def sweep_points(tree: BenchTree, key: str) -> list[SweepPoint]:
    """The points of the sweep ``key`` (a key of :data:`SWEEPS`), by method in bench order,
    then by value; [] when no arm of the bench sweeps it."""
    arms = {}
    for name in tree.methods:
        try:
            arms[name] = parse_arm(name)
        except ValueError:  # a directory that is no arm (made by hand): in no sweep
            continue
    swept = list(dict.fromkeys(a.method for a in arms.values() if a.sweep == key))
    points = []
    for name, arm in arms.items():
        if arm.method in swept and arm.sweep in (None, key):
            value = arm.value if arm.sweep is not None else _configured(tree, name, key)
            if value is not None:
                points.append(SweepPoint(arm.method, value, name))
    return sorted(points, key=lambda p: (swept.index(p.method), p.value))


def _stats(aggregate: dict, point: SweepPoint, column: Column):
    return aggregate.get(point.arm, {}).get(column.split, {}).get(column.metric)


def sweep_section(tree: BenchTree, aggregate: dict, key: str) -> list[str]:
    """The report's markdown for the sweep ``key``: heading, note and one row per point
    (method, value, arm, then :data:`SWEEP_COLUMNS`); [] when the bench does not sweep it."""
    points = sweep_points(tree, key)
    if not points:
        return []
    columns = [c for c in SWEEP_COLUMNS if any(_stats(aggregate, p, c) is not None for p in points)]
    setting = SWEEPS[key]
    lines = [
        f"## Sweep of `{setting.key}`",
        "",
        f"{setting.note} Cells are mean ± sample std over seeds, in %; plot: "
        f"`plots/{key}_sweep.png`.",
        "",
        f"| Method | {setting.label} | Arm | " + " | ".join(c.header for c in columns) + " |",
        "|---|---:|---|" + "---:|" * len(columns),
    ]
    for p in points:
        seeds = len(tree.runs_of(p.arm))
        cells = [_format(_stats(aggregate, p, c), c.decimals, seeds)[0] for c in columns]
        lines.append(f"| {p.method} | {p.value:g} | {p.arm} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _series(aggregate: dict, points: list[SweepPoint], metric: str) -> tuple[np.ndarray, ...]:
    """(values, means, stds) of the points with a mean for ``metric`` (test split)."""
    column = Column("", "test", metric)
    rows = [(p.value, _stats(aggregate, p, column)) for p in points]
    rows = [(v, s) for v, s in rows if s is not None and s.mean is not None]
    return (
        np.array([v for v, _ in rows]),
        np.array([s.mean for _, s in rows]),
        np.array([0.0 if s.std is None else s.std for _, s in rows]),
    )


def plot_sweep(tree: BenchTree, aggregate: dict, key: str, path: Path) -> Path | None:
    """R@1 and mAP (I→T, T→I; test) against the swept value, one line per method (solid:
    as trained; dashed: re-ranked, where reported), error bars = std over seeds; None when
    the bench does not sweep ``key``."""
    from matplotlib import colormaps

    points = sweep_points(tree, key)
    if not points:
        return None
    methods = list(dict.fromkeys(p.method for p in points))
    cmap = colormaps["tab10"]
    setting = SWEEPS[key]
    fig, axes = figure(11.0, 8.0, nrows=2, ncols=2)
    for ax, (metric, title) in zip(axes.flat, _PANELS):
        for i, method in enumerate(methods):
            own = [p for p in points if p.method == method]
            for suffix, style, label in (("", "o-", method),
                                         ("_rerank", "s--", f"{method} re-ranked")):  # fmt: skip
                values, means, stds = _series(aggregate, own, metric + suffix)
                if len(values):
                    ax.errorbar(values, means, yerr=stds, fmt=style, capsize=3,
                                color=cmap(i % cmap.N), label=label)  # fmt: skip
        ax.set_xlabel(f"{setting.label} ({setting.key})")
        ax.set_ylabel(f"{title} (%)")
        ax.set_title(f"{title} on test (mean ± std over seeds)")
        ax.legend(fontsize=7)
    return save(fig, path)
